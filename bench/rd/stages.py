"""The stages of the RD protocol: run the train/eval scripts and the classic anchors, each
stage resumable (see bench/rd/__init__.py)."""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from bench.anchors import RESOLUTION_TARGETS_BPP
from bench.rd.points import image_key, per_image
from bench.rd.report import aggregate, load_json, portable_comparison
from models.config import layer_names

# The repository root: the scripts run from there.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def log(msg: str) -> None:
    print(f"[rd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _checkpoint_step(ckpt_dir) -> Optional[int]:
    """The step of the newest checkpoint a training run (not this protocol) left, or None."""
    path = os.path.join(ckpt_dir, "checkpoint")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        found = re.search(r'^model_checkpoint_path: "ckpt-(\d+)"', f.read(), re.M)
    return int(found.group(1)) if found else None


class Protocol:
    """The protocol's stages (``stage_<name>``) over one set of parsed flags (bench.rd.cli)."""

    def __init__(self, args):
        self.args = args
        self.py = sys.executable
        self.work = os.path.abspath(args.work_dir)
        self.out = os.path.abspath(args.out)
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        self.times = {}
        self.kodak = args.kodak

    # -- helpers
    def run(self, cmd: List[str]) -> None:
        self.run_together([cmd])

    def run_together(self, cmds: List[List[str]]) -> None:
        """Run the commands side by side (each logged); SystemExit when any fails."""
        processes = []
        for cmd in cmds:
            text = " ".join(self.shown(arg) for arg in cmd)
            log("$ " + text)
            for folder in (self.work, self.out):
                with open(os.path.join(folder, "commands.log"), "a", encoding="utf-8") as f:
                    f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {text}\n")
            processes.append((text, subprocess.Popen(cmd, cwd=REPO)))
        failed = [(text, proc.wait()) for text, proc in processes]
        for text, code in failed:
            if code != 0:
                raise SystemExit(f"command failed with status {code}: {text}")

    def shown(self, arg):
        """`arg` as the logs record it: the interpreter as python, paths inside the repository
        relative to it, paths under a folder given on the command line relative to that
        folder's flag ($WORK_DIR, $OUT, $KODAK, $TRAIN_DIR): no machine's paths."""
        if arg == self.py:
            return "python"
        if not os.path.isabs(arg):
            return arg
        if arg == REPO or arg.startswith(REPO + os.sep):
            return os.path.relpath(arg, REPO)
        folders = [(os.path.abspath(getattr(self.args, flag)), "$" + flag.upper())
                   for flag in ("work_dir", "out", "kodak", "train_dir")
                   if getattr(self.args, flag, None)]
        for folder, name in sorted(folders, key=lambda item: -len(item[0])):
            if arg == folder or arg.startswith(folder + os.sep):
                return name + arg[len(folder):]
        return arg

    def timed(self, name, fn):
        start = time.monotonic()
        fn()
        self.times[name] = self.times.get(name, 0.0) + time.monotonic() - start

    def ckpt(self, name):
        """The model `name` (quality, single_<k>, spatial) that the eval stages use."""
        if self.args.models == "pretrained":
            return self.shipped(name)
        return os.path.join(self.work, "runs", name)

    def shipped(self, name):
        """Where `name` ships: pretrained/quality, pretrained/single_layer/<layer>, ..."""
        if name.startswith("single_"):
            name = os.path.join("single_layer", layer_names(len(self.args.filters))[
                int(name.split("_")[1]) - 1])
        return os.path.join(REPO, "pretrained", name)

    def model_names(self):
        return (["quality"] + [f"single_{k + 1}" for k in range(len(self.args.filters))]
                + ["spatial"])

    def done_step(self, ckpt_dir) -> Optional[int]:
        if os.path.exists(os.path.join(ckpt_dir, "weights.npz")):
            with open(os.path.join(ckpt_dir, "weights.npz"), "rb") as f:  # shipped: by digest
                return int.from_bytes(hashlib.sha256(f.read()).digest()[:6], "big")
        path = os.path.join(ckpt_dir, "rd_done.json")
        if not os.path.exists(path):
            return _checkpoint_step(ckpt_dir)
        with open(path) as f:
            return int(json.load(f)["last_step"])

    def mark_done(self, ckpt_dir, step):
        with open(os.path.join(ckpt_dir, "rd_done.json"), "w") as f:
            json.dump({"last_step": int(step)}, f)

    def train(self, script, ckpt_dir, data_flag, data, filters, lmbdas, patch, batch, steps):
        if self.done_step(ckpt_dir) == steps:
            log(f"{ckpt_dir}: trained to step {steps}, skipped")
            return
        a = self.args
        cmd = [self.py, script, data_flag, data, "--checkpoint_dir", ckpt_dir,
               "--filters", ",".join(map(str, filters)),
               "--lmbdas", ",".join(f"{l:g}" for l in lmbdas),
               "--entropy_model", a.entropy_model, "--patchsize", str(patch),
               "--batchsize", str(batch), "--last_step", str(steps),
               "--learning_rate", f"{a.learning_rate:g}", "--lr_schedule", a.lr_schedule,
               "--seed", str(a.seed),
               "--log_every", str(max(1, min(100, steps // 5))),
               "--checkpoint_secs", str(a.checkpoint_secs)]
        if a.preprocess_threads:
            cmd += ["--preprocess_threads", str(a.preprocess_threads)]
        self.run(cmd)
        self.mark_done(ckpt_dir, steps)

    def train_glob(self):
        d = self.args.train_dir
        return os.path.join(d, "*", "*.[pjPJ][npNP]*g") if self.args.train_recursive else d

    # -- training stages
    def stage_train_quality(self):
        a = self.args
        self.train("train_quality.py", self.ckpt("quality"), "--train_glob", self.train_glob(),
                   a.filters, a.lmbdas, a.patchsize, a.batchsize, a.steps)

    def stage_train_single(self):
        a = self.args
        for k, (f, l) in enumerate(zip(a.filters, a.lmbdas)):
            self.train("train_quality.py", self.ckpt(f"single_{k + 1}"), "--train_glob",
                       self.train_glob(), [f], [l], a.patchsize, a.batchsize, a.single_steps)

    def whole_images(self):
        """Whether the spatial examples are whole photos (create_tfrecords.py --whole_images)."""
        return self.args.tfrecord_examples == "whole_images"

    def tfrecord_path(self):
        whole = "whole_" if self.whole_images() else ""
        return os.path.join(self.work, "data",
                            f"train_{whole}{self.args.tfrecord_patchsize}.tfrecords")

    def stage_tfrecords(self):
        path = self.tfrecord_path()
        if os.path.exists(path):
            log(f"{path} exists, skipped")
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".partial"
        self.run([self.py, "create_tfrecords.py", "--input_image", self.train_glob(),
                  "--patchsize", str(self.args.tfrecord_patchsize), "--train_tfrecords", tmp]
                 + (["--whole_images"] if self.whole_images() else []))
        os.replace(tmp, path)

    def stage_train_spatial(self):
        a = self.args
        self.train("train_spatial.py", self.ckpt("spatial"), "--train_tfrecords",
                   self.tfrecord_path(), a.spatial_filters, a.spatial_lmbdas,
                   a.spatial_patchsize, a.spatial_batchsize, a.spatial_steps)

    def stage_export(self):
        """Every trained model of the protocol -> its shipped folder (float16 weights)."""
        for name in self.model_names():
            trained = os.path.join(self.work, "runs", name)
            if self.done_step(trained) is None:
                raise SystemExit(f"{name} is not trained to its last step: train it first")
            self.run([self.py, "-m", "pipeline.pretrained", "--checkpoint_dir", trained,
                      "--output", self.shipped(name)])

    # -- evaluation stages
    def eval_dir(self, name):
        return os.path.join(self.work, "eval", name)

    def evaluate(self, script, name, ckpt_name, images, ckpt_dir=None):
        """Run `script` (a script path, or a list such as ["-m", module]) on `images` with the
        model `ckpt_name` (or the checkpoint folder `ckpt_dir`); skipped when its results
        exist for the same step."""
        self.evaluate_together([(script, name, ckpt_name, images, ckpt_dir)])

    def evaluate_together(self, jobs):
        """`evaluate` for each (script, name, ckpt_name, images, ckpt_dir), side by side."""
        pending = [job for job in (self._prepare_eval(*job) for job in jobs) if job]
        self.run_together([cmd for cmd, _ in pending])
        for _, finish in pending:
            finish()

    def _prepare_eval(self, script, name, ckpt_name, images, ckpt_dir):
        """(command, finish) of one evaluation, or None when its results are current."""
        folder = self.eval_dir(name)
        results = os.path.join(folder, "results.json")
        marker = os.path.join(folder, "rd_eval.json")
        ckpt_dir = ckpt_dir or self.ckpt(ckpt_name)
        step = self.done_step(ckpt_dir)
        if step is None:
            raise SystemExit(f"{ckpt_name} is not trained: run its train stage first")
        if os.path.exists(results) and os.path.exists(marker):
            with open(marker) as f:
                if json.load(f).get("step") == step:
                    log(f"{results} exists for step {step}, skipped")
                    self.copy_per_image(name, results)
                    return None
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        script = [script] if isinstance(script, str) else list(script)

        def finish():
            with open(marker, "w") as f:
                json.dump({"step": step, "images": images}, f)
            self.copy_per_image(name, results)

        return ([self.py, *script, "--input_image", images, "--output_folder", folder,
                 "--checkpoint_dir", ckpt_dir], finish)

    def copy_per_image(self, name, results):
        dst = os.path.join(self.out, "per_image", f"{name}.json")
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(results, dst)

    def kodak_images(self):
        from codec.image import list_images
        paths = list_images(self.kodak)
        if self.args.max_images:
            paths = paths[:self.args.max_images]
        return paths

    def image_arg(self):
        """The Kodak folder, or a folder of links to its first --max_images images."""
        if not self.args.max_images:
            return self.kodak
        folder = os.path.join(self.work, "kodak_subset")
        os.makedirs(folder, exist_ok=True)
        for p in self.kodak_images():
            dst = os.path.join(folder, os.path.basename(p))
            if not os.path.exists(dst):
                os.symlink(os.path.abspath(p), dst)
        return folder

    def stage_eval_quality(self):
        images = self.image_arg()
        self.evaluate("eval_quality.py", "quality", "quality", images)
        for k in range(len(self.args.filters)):
            self.evaluate("eval_quality.py", f"single_{k + 1}", f"single_{k + 1}", images)

    def stage_eval_spatial(self):
        self.evaluate("eval_spatial.py", "spatial", "spatial", self.image_arg())

    def lowres_folders(self):
        """Lanczos pyramid levels of the evaluation images below full resolution (the same
        codec.image.pyramid that eval_spatial.py compares against), as PNG folders."""
        from codec import image as image_lib
        n = len(self.args.spatial_filters)
        folders = [os.path.join(self.work, "kodak_levels", f"level{j + 1}of{n}")
                   for j in range(n - 1)]
        for path in self.kodak_images():
            targets = [os.path.join(f, os.path.basename(os.path.splitext(path)[0]) + ".png")
                       for f in folders]
            if all(os.path.exists(t) for t in targets):
                continue
            levels = image_lib.pyramid(image_lib.read_image(path), n)
            for f, t, level in zip(folders, targets, levels[:-1]):
                os.makedirs(f, exist_ok=True)
                image_lib.write_png(t, level)
        return folders

    def stage_eval_lowres(self):
        for j, folder in enumerate(self.lowres_folders()):
            for k in range(len(self.args.filters)):
                self.evaluate("eval_quality.py", f"single_{k + 1}_level{j + 1}",
                              f"single_{k + 1}", folder)

    # -- classic anchors matched to our results
    def stage_anchors(self):
        codecs = self.args.anchor_codecs
        if "j2k" in codecs:
            self.j2k_anchors()
        modern = [c for c in codecs if c != "j2k"]
        if modern:
            self.modern_anchors(modern)

    def j2k_anchors(self):
        from bench import anchors
        from codec import image as image_lib
        quality = self.load_eval("quality")
        if quality is None:
            raise SystemExit("anchors: run eval_quality first (the layered JPEG 2000 anchor is "
                             "matched to the scalable model's per-image layer rates)")
        by_image = per_image(quality)
        out = os.path.join(self.work, "anchors")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, "j2k_layered_matched.json")
        if not os.path.exists(path):
            start = time.monotonic()
            docs = []
            for p in self.kodak_images():
                entry = by_image[image_key(p)]
                bpps = [float(e["actual_bpp"]) for e in entry["layers"]]
                img = image_lib.read_image(p)
                ok = all(b2 > b1 for b1, b2 in zip(bpps, bpps[1:])) and bpps[0] > 0
                pts = anchors.jpeg2000_layered(img, bpps, ms_ssim=not self.args.no_ms_ssim) \
                    if ok else None
                docs.append(dict(image=os.path.basename(p), target_bpp=bpps,
                                 points=pts))
            with open(path, "w") as f:
                json.dump(docs, f, indent=1)
            log(f"JPEG 2000 layered (matched): {time.monotonic() - start:.0f} s")
        path = os.path.join(out, "j2k_resolutions.json")
        if not os.path.exists(path):
            start = time.monotonic()
            n = len(self.args.spatial_filters)
            docs = []
            for p in self.kodak_images():
                img = image_lib.read_image(p)
                levels = image_lib.pyramid(img, n)
                res = [anchors.jpeg2000_resolution_levels(img, n, t, ms_ssim=False)
                       for t in RESOLUTION_TARGETS_BPP]
                single = [anchors.jpeg2000_single_sweep(level, RESOLUTION_TARGETS_BPP,
                                                         ms_ssim=False) for level in levels]
                docs.append(dict(image=os.path.basename(p), resolution_levels=res,
                                 single=single))
            with open(path, "w") as f:
                json.dump(docs, f, indent=1)
            log(f"JPEG 2000 resolution anchors: {time.monotonic() - start:.0f} s")
        for name in ("j2k_layered_matched", "j2k_resolutions"):
            self.copy_anchor(name)

    def copy_anchor(self, name):
        os.makedirs(os.path.join(self.out, "per_image"), exist_ok=True)
        shutil.copyfile(os.path.join(self.work, "anchors", name + ".json"),
                        os.path.join(self.out, "per_image", name + ".json"))

    def modern_anchors(self, stems):
        """HEVC intra, JPEG XL, AVIF sweeps at every pyramid level; JPEG XL progressive and
        HEVC simulcast at each image's own layer rates of the scalable model (bench.modern).
        A curve whose tools are absent is skipped with the reason."""
        from bench.modern import curves
        from codec import image as image_lib
        folder = os.path.join(self.work, "anchors")
        os.makedirs(folder, exist_ok=True)
        n = len(self.args.spatial_filters)
        paths = self.kodak_images()
        levels = {}

        def images(level):  # [(file name, image at pyramid level `level` of n)]
            if not levels:
                for p in paths:
                    levels[os.path.basename(p)] = image_lib.pyramid(image_lib.read_image(p), n)
            return [(name, pyr[level]) for name, pyr in levels.items()]

        for stem in stems:
            gone = curves.absent(stem)
            if gone:
                log(f"anchors: {stem} skipped: {', '.join(gone)} not found here "
                    "(docs/anchors.md says how to install it)")
                continue
            if stem in curves.SWEEPS:
                jobs = [(stem if j == n - 1 else f"{stem}_level{j + 1}", j) for j in range(n)]
                for name, j in jobs:
                    if not os.path.exists(os.path.join(folder, name + ".json")):
                        self.write_anchor(name, curves.run_sweep(
                            stem, images(j), ms_ssim=j == n - 1 and not self.args.no_ms_ssim,
                            log=log))
                    self.copy_anchor(name)
                continue
            quality = self.load_eval("quality")
            if quality is None:
                raise SystemExit(f"anchors: {stem} is matched to the scalable model's layer "
                                 "rates: run eval_quality first")
            if not os.path.exists(os.path.join(folder, stem + ".json")):
                bpps = {os.path.basename(im["image"]): [float(e["actual_bpp"])
                                                        for e in im["layers"]]
                        for im in quality["images"]}
                self.write_anchor(stem, curves.run_matched(
                    stem, images(n - 1), bpps, ms_ssim=not self.args.no_ms_ssim, log=log))
            self.copy_anchor(stem)

    def write_anchor(self, name, doc):
        path = os.path.join(self.work, "anchors", name + ".json")
        with open(path + ".partial", "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(path + ".partial", path)

    # -- aggregation (reads results only)
    def stage_portable(self):
        """Rate cost of portable coding (issue 9): BD-rate of the exact (integer) scale-index
        path against tfc's float one. The quality model at equal weights (eval_quality.py vs
        bench.rd.float_indexes); with --qat_dir and --float_dir, a quantization-aware
        fine-tune coded exactly against a float fine-tune (same start, same steps) coded with
        float indexes. Writes <out>/portable_rd.json."""
        images = self.image_arg()
        pairs = [("quality", self.ckpt("quality"), self.ckpt("quality"))]
        if self.args.qat_dir:
            pairs.append(("qat", os.path.abspath(self.args.qat_dir),
                          os.path.abspath(self.args.float_dir)))
        pairs = [pair for pair in pairs if pair[0] in self.args.portable_pairs]
        comparisons = {}
        for name, exact_dir, float_dir in pairs:
            self.evaluate_together([
                ("eval_quality.py", f"portable_{name}_exact", name, images, exact_dir),
                (["-m", "bench.rd.float_indexes"], f"portable_{name}_float", name, images,
                 float_dir)])
            curves = {path: self.load_eval(f"portable_{name}_{path}")
                      for path in ("exact", "float")}
            comparisons[name] = portable_comparison(
                curves, dict(exact=self.shown(exact_dir), float=self.shown(float_dir)),
                dict(exact=self.done_step(exact_dir), float=self.done_step(float_dir)))
            log(f"portable {name}: BD-rate exact vs float "
                f"{comparisons[name]['bd_rate_percent']} %")
        with open(os.path.join(self.out, "portable_rd.json"), "w") as f:
            json.dump(dict(config=self.describe(), comparisons=comparisons), f, indent=2)
            f.write("\n")

    def load_eval(self, name) -> Optional[Dict]:
        path = os.path.join(self.out, "per_image", f"{name}.json")
        if not os.path.exists(path):
            path = os.path.join(self.eval_dir(name), "results.json")
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def stage_aggregate(self):
        docs = aggregate(self.out, self.load_eval, len(self.args.filters),
                         len(self.args.spatial_filters), self.describe())
        path = os.path.join(self.out, "protocol.json")
        runs = (load_json(path) or {}).get("runs", [])
        this = dict(finished=time.strftime("%Y-%m-%d %H:%M:%S"),
                    stage_seconds={k: round(v, 1) for k, v in self.times.items()})
        if runs and runs[-1].get("pid") == os.getpid():
            runs[-1] = dict(this, pid=os.getpid())
        else:
            runs.append(dict(this, pid=os.getpid()))
        meta = dict(profile=self.args.profile, config=self.describe(), runs=runs,
                    curves=sorted(docs))
        with open(path, "w") as f:
            json.dump(meta, f, indent=2)

    def describe(self):
        a = self.args
        return dict(filters=a.filters, lmbdas=a.lmbdas, patchsize=a.patchsize,
                    batchsize=a.batchsize, steps=a.steps, single_steps=a.single_steps,
                    learning_rate=a.learning_rate, entropy_model=a.entropy_model,
                    spatial_filters=a.spatial_filters, spatial_lmbdas=a.spatial_lmbdas,
                    spatial_patchsize=a.spatial_patchsize, spatial_batchsize=a.spatial_batchsize,
                    spatial_steps=a.spatial_steps, tfrecord_patchsize=a.tfrecord_patchsize,
                    tfrecord_examples=a.tfrecord_examples,
                    train_dir=self.shown(os.path.abspath(a.train_dir)),
                    kodak=self.shown(os.path.abspath(a.kodak)), max_images=a.max_images,
                    seed=a.seed)
