"""Rate-distortion protocol: train, evaluate on Kodak, aggregate into JSON + plots + BD tables.

One command (CPU scale, see bench/README.md for the exact command and the GPU flags):

    .venv/bin/python -m bench.rd --train_dir /work/shared/train --kodak /work/shared/kodak \
        --out bench/results --profile cpu

Stages (each one resumable; run them all, or a subset with --stages):

  train_quality    the quality-scalable model (hyperprior, 4 layers) with train_quality.py
  train_single     one single-layer model per layer of the quality model: same filters and
                   lambda as that layer, same data, steps, patch and batch (``--filters F
                   --lmbdas L``: a one-element layer list = Balle et al. 2018)
  tfrecords        create_tfrecords.py on the training images (spatial training data)
  train_spatial    the spatial-scalable model (3 layers) with train_spatial.py
  eval_quality     eval_quality.py on Kodak for the scalable and each single-layer model
  eval_spatial     eval_spatial.py on Kodak
  anchors          JPEG 2000 layered, matched per image to our layer rates; JPEG 2000
                   resolution levels and single-layer JPEG 2000 per resolution (PSNR only)
  aggregate        reads the results.json files only: CompressAI JSON per curve,
                   rd_quality.png, rd_spatial.png, bd_table.md, protocol.json
  eval_lowres      the single-layer models on the Lanczos-downsampled Kodak at the spatial
                   model's lower resolutions (1/4, 1/2), for the per-resolution comparison;
                   last because it is optional (budget): aggregate runs again after it

Training stages call the train scripts, which resume from their checkpoints (a finished
stage leaves ``rd_done.json`` with its step and is skipped).  Each evaluation stage writes its
``results.json`` (eval scripts' format) and is skipped when it exists for the same checkpoint
step.  Checkpoints, streams and reconstructions go under --work_dir; the per-image
results.json files are copied into ``<out>/per_image/``.

All averages are means over images of per-image values (bpp from real stream sizes, RGB PSNR
and MS-SSIM from the same metric code as eval_*.py).  BD-rate / BD-PSNR use the PyPI package
``bjontegaard`` with Akima interpolation (bench.bd).

When the training or the Kodak folder is absent, the command says so and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

STAGES = ("train_quality", "train_single", "tfrecords", "train_spatial", "eval_quality",
          "eval_spatial", "anchors", "aggregate", "eval_lowres")

PROFILES = {
    # CPU scale: 1000 steps; about an hour end to end on 2 idle cores (see bench/README.md).
    "cpu": dict(filters=[32, 40, 48, 64], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=64,
                batchsize=8, steps=1000, learning_rate=1e-3,
                spatial_filters=[32, 32, 32], spatial_lmbdas=[400.0, 300.0, 200.0],
                spatial_patchsize=128, spatial_batchsize=2, spatial_steps=1000,
                tfrecord_patchsize=256),
    # The paper's sizes (ARCHITECTURE.md): GPU protocol, flags only.
    "gpu": dict(filters=[96, 120, 144, 196], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=256,
                batchsize=8, steps=20000, learning_rate=1e-4,
                spatial_filters=[96, 96, 96], spatial_lmbdas=[400.0, 300.0, 200.0],
                spatial_patchsize=512, spatial_batchsize=8, spatial_steps=20000,
                tfrecord_patchsize=512),
    # Smoke test of the whole pipeline (minutes).
    "tiny": dict(filters=[8, 8, 8, 8], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=64,
                 batchsize=2, steps=3, learning_rate=1e-4,
                 spatial_filters=[8, 8, 8], spatial_lmbdas=[400.0, 300.0, 200.0],
                 spatial_patchsize=64, spatial_batchsize=2, spatial_steps=3,
                 tfrecord_patchsize=128),
}

J2K_RESOLUTION_TARGETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)  # full-resolution bpp of the RLCP codestream
LEVEL_NAMES = {3: ("quarter", "half", "full")}


def log(msg: str) -> None:
    print(f"[rd {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ----------------------------------------------------------------------------------------------
# Pure aggregation code (tested in tests/test_bench_rd.py; no TensorFlow)


def layer_points(results: Mapping, num_layers: Optional[int] = None) -> List[List[Dict]]:
    """Per-image list of per-layer points from an eval results.json document.

    Point k: bpp = actual_bpp (bytes of layers 1..k over layer k's pixels), psnr, ms_ssim,
    bytes (of layer k's stream alone), plus height/width when present."""
    out = []
    for image in results["images"]:
        layers = image["layers"][:num_layers] if num_layers else image["layers"]
        pts = []
        for k, entry in enumerate(layers, start=1):
            p = dict(bpp=float(entry["actual_bpp"]), psnr=entry.get("psnr"),
                     ms_ssim=entry.get("ms_ssim"), bytes=int(entry["bytes"]), layer=k,
                     eval_bpp=entry.get("eval_bpp"))
            for key in ("height", "width"):
                if key in entry:
                    p[key] = int(entry[key])
            pts.append(p)
        out.append(pts)
    return out


def _image_key(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def per_image(results: Mapping) -> Dict[str, Dict]:
    """{image stem: image entry} of an eval results.json document."""
    return {_image_key(im["image"]): im for im in results["images"]}


def average(per_image_points: Sequence[Sequence[Mapping]]) -> List[Dict]:
    """Point-wise mean over images (bench.anchors.average_points); inf PSNR is stored as
    None by the eval scripts and makes the mean None."""
    if not per_image_points:
        raise ValueError("no images")
    from bench import anchors
    return anchors.average_points(per_image_points)


def single_layer_points(single_results: Sequence[Mapping]) -> List[List[Dict]]:
    """Per-image points of the single-layer anchors: point k = model k's only layer.

    ``single_results``: results.json documents of the single-layer models in layer order; the
    images are matched by file stem (all documents must hold the same images)."""
    maps = [per_image(doc) for doc in single_results]
    keys = list(maps[0])
    for m in maps[1:]:
        if set(m) != set(keys):
            raise ValueError("single-layer results cover different images")
    out = []
    for key in keys:
        pts = []
        for k, m in enumerate(maps, start=1):
            e = m[key]["layers"][0]
            pts.append(dict(bpp=float(e["actual_bpp"]), psnr=e.get("psnr"),
                            ms_ssim=e.get("ms_ssim"), bytes=int(e["bytes"]), layer=k))
        out.append(pts)
    return out


def simulcast_points(single_per_image: Sequence[Sequence[Mapping]]) -> List[List[Dict]]:
    """Simulcast per image: rate of layer k = sum of the single-layer rates (bytes) of models
    1..k over the image's pixels; quality = single-layer model k's quality."""
    out = []
    for pts in single_per_image:
        total_bytes, total_bpp, sim = 0, 0.0, []
        for p in pts:
            total_bytes += int(p["bytes"])
            total_bpp += float(p["bpp"])
            sim.append(dict(bpp=total_bpp, psnr=p.get("psnr"), ms_ssim=p.get("ms_ssim"),
                            bytes=total_bytes, layer=p.get("layer")))
        out.append(sim)
    return out


def _rd_curve(anchor_bpp: Sequence[float], anchor_metric: Sequence[float]):
    """(log10 rates, metrics) sorted by rate, or None unless the anchor is a proper RD curve
    (at least 2 points, rate and metric both strictly increasing)."""
    pairs = sorted((float(r), float(m)) for r, m in zip(anchor_bpp, anchor_metric)
                   if r is not None and m is not None and r > 0)
    if len(pairs) < 2:
        return None
    rs = np.log10([p[0] for p in pairs])
    ms = np.array([p[1] for p in pairs])
    if np.any(np.diff(rs) <= 0) or np.any(np.diff(ms) <= 0):
        return None
    return rs, ms


def interp_log_rate(anchor_bpp: Sequence[float], anchor_metric: Sequence[float],
                    metric: float) -> Optional[float]:
    """Rate of the anchor at ``metric`` (piecewise linear in log10 rate), None outside."""
    curve = _rd_curve(anchor_bpp, anchor_metric)
    if curve is None or not curve[1][0] <= metric <= curve[1][-1]:
        return None
    return float(10 ** np.interp(metric, curve[1], curve[0]))


def interp_metric(anchor_bpp: Sequence[float], anchor_metric: Sequence[float],
                  bpp: float) -> Optional[float]:
    """Metric of the anchor at ``bpp`` (piecewise linear in log10 rate), None outside."""
    curve = _rd_curve(anchor_bpp, anchor_metric)
    if curve is None or not curve[0][0] <= np.log10(bpp) <= curve[0][-1]:
        return None
    return float(np.interp(np.log10(bpp), curve[0], curve[1]))


def point_vs_curve(point: Mapping, anchor, metric: str = "psnr") -> Dict:
    """One RD point against an anchor curve: rate difference (%) at equal metric and metric
    difference at equal rate, by piecewise-linear interpolation in log rate (a single point
    has no BD integral).  None where the point lies outside the anchor's range."""
    from bench.bd import curve_arrays
    bpp, vals = curve_arrays(anchor, metric)
    value = point.get(metric)
    out = {"rate_diff": None, "metric_diff": None}
    if value is None or point.get("bpp") is None:
        return out
    r = interp_log_rate(bpp, vals, float(value))
    if r is not None:
        out["rate_diff"] = 100.0 * (float(point["bpp"]) / r - 1.0)
    m = interp_metric(bpp, vals, float(point["bpp"]))
    if m is not None:
        out["metric_diff"] = float(value) - m
    return out


def bd_rows(reference: str, curves: Mapping[str, object], tests: Sequence[str],
            metric: str = "psnr") -> List[Dict]:
    """bench.bd.bd_table rows (Akima) of ``tests`` against ``reference``."""
    from bench import bd
    sub = {reference: curves[reference]}
    for name in tests:
        sub[name] = curves[name]
    return bd.bd_table(reference, sub, metric=metric, method="akima")


def format_bd_section(title: str, reference: str, curves: Mapping[str, object],
                      tests: Sequence[str]) -> str:
    from bench import bd
    lines = [f"### {title}\n"]
    for metric in ("psnr", "ms_ssim_db"):
        try:
            rows = bd_rows(reference, curves, tests, metric)
        except KeyError as error:
            lines.append(f"({metric}: {error})\n")
            continue
        lines.append(bd.format_markdown(rows, reference))
    return "\n".join(lines)


def format_curve_table(docs: Mapping[str, Mapping]) -> str:
    """Markdown table of every point of every curve (means over images)."""
    lines = ["| Curve | Point | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) |",
             "|---|---:|---:|---:|---:|---:|"]
    from pipeline import metrics
    for name, doc in docs.items():
        r = doc["results"]
        labels = r.get("layer") or r.get("level") or list(range(1, len(r["bpp"]) + 1))
        for i, bpp in enumerate(r["bpp"]):
            ps = r["psnr-rgb"][i]
            ms = r["ms-ssim-rgb"][i]
            lines.append(f"| {name} | {labels[i]} | {bpp:.4f} | "
                         f"{'n/a' if ps is None else f'{ps:.2f}'} | "
                         f"{'n/a' if ms is None else f'{ms:.4f}'} | "
                         f"{'n/a' if ms is None else f'{metrics.ms_ssim_db(ms):.2f}'} |")
    return "\n".join(lines) + "\n"


def format_point_table(rows: Sequence[Mapping]) -> str:
    lines = ["| Spatial layer | Resolution | bpp | PSNR (dB) | Anchor | Rate diff at equal PSNR (%) "
             "| PSNR diff at equal rate (dB) |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        na = "n/a (outside the anchor's range, or anchor not monotonic)"
        rd = na if r["rate_diff"] is None else f"{r['rate_diff']:+.1f}"
        md = na if r["metric_diff"] is None else \
            f"{r['metric_diff']:+.2f}"
        lines.append(f"| {r['layer']} | {r['resolution']} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                     f"{r['anchor']} | {rd} | {md} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# Stages


class Protocol:
    def __init__(self, args):
        self.args = args
        self.py = sys.executable
        self.work = os.path.abspath(args.work_dir)
        self.out = os.path.abspath(args.out)
        os.makedirs(self.work, exist_ok=True)
        os.makedirs(self.out, exist_ok=True)
        self.times = {}
        self.kodak = args.kodak
        self.names = ["B"] + [f"e{k}" for k in range(1, len(args.filters))]

    # -- helpers
    def run(self, cmd: List[str]) -> None:
        text = " ".join(cmd)
        log("$ " + text)
        with open(os.path.join(self.work, "commands.log"), "a", encoding="utf-8") as f:
            f.write(text + "\n")
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        proc = subprocess.run(cmd, cwd=REPO, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"command failed with status {proc.returncode}: {text}")

    def timed(self, name, fn):
        start = time.monotonic()
        fn()
        self.times[name] = self.times.get(name, 0.0) + time.monotonic() - start

    def ckpt(self, name):
        return os.path.join(self.work, "runs", name)

    def done_step(self, ckpt_dir) -> Optional[int]:
        path = os.path.join(ckpt_dir, "rd_done.json")
        if not os.path.exists(path):
            return None
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
               "--learning_rate", f"{a.learning_rate:g}", "--seed", str(a.seed),
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

    def tfrecord_path(self):
        return os.path.join(self.work, "data", f"train_{self.args.tfrecord_patchsize}.tfrecords")

    def stage_tfrecords(self):
        path = self.tfrecord_path()
        if os.path.exists(path):
            log(f"{path} exists, skipped")
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".partial"
        self.run([self.py, "create_tfrecords.py", "--input_image", self.train_glob(),
                  "--patchsize", str(self.args.tfrecord_patchsize), "--train_tfrecords", tmp])
        os.replace(tmp, path)

    def stage_train_spatial(self):
        a = self.args
        self.train("train_spatial.py", self.ckpt("spatial"), "--train_tfrecords",
                   self.tfrecord_path(), a.spatial_filters, a.spatial_lmbdas,
                   a.spatial_patchsize, a.spatial_batchsize, a.spatial_steps)

    # -- evaluation stages
    def eval_dir(self, name):
        return os.path.join(self.work, "eval", name)

    def evaluate(self, script, name, ckpt_name, images):
        folder = self.eval_dir(name)
        results = os.path.join(folder, "results.json")
        marker = os.path.join(folder, "rd_eval.json")
        step = self.done_step(self.ckpt(ckpt_name))
        if step is None:
            raise SystemExit(f"{ckpt_name} is not trained: run its train stage first")
        if os.path.exists(results) and os.path.exists(marker):
            with open(marker) as f:
                if json.load(f).get("step") == step:
                    log(f"{results} exists for step {step}, skipped")
                    self.copy_per_image(name, results)
                    return
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        self.run([self.py, script, "--input_image", images, "--output_folder", folder,
                  "--checkpoint_dir", self.ckpt(ckpt_name)])
        with open(marker, "w") as f:
            json.dump({"step": step, "images": images}, f)
        self.copy_per_image(name, results)

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
                entry = by_image[_image_key(p)]
                bpps = [float(e["actual_bpp"]) for e in entry["layers"]]
                img = image_lib.read_image(p)
                ok = all(b2 > b1 for b1, b2 in zip(bpps, bpps[1:])) and bpps[0] > 0
                pts = anchors.jpeg2000_layered(img, bpps, ms_ssim=not self.args.no_ms_ssim) \
                    if ok else None
                docs.append(dict(image=p, target_bpp=bpps, points=pts))
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
                       for t in J2K_RESOLUTION_TARGETS]
                single = [anchors.jpeg2000_single_sweep(level, J2K_RESOLUTION_TARGETS,
                                                         ms_ssim=False) for level in levels]
                docs.append(dict(image=p, resolution_levels=res, single=single))
            with open(path, "w") as f:
                json.dump(docs, f, indent=1)
            log(f"JPEG 2000 resolution anchors: {time.monotonic() - start:.0f} s")
        for name in ("j2k_layered_matched", "j2k_resolutions"):
            shutil.copyfile(os.path.join(out, name + ".json"),
                            os.path.join(self.out, "per_image", name + ".json"))

    # -- aggregation (reads results only)
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
                    train_dir=a.train_dir, kodak=a.kodak, max_images=a.max_images, seed=a.seed)


def _doc(name, points, description, scalable, **extra):
    from bench import results_io
    keys = [k for k in ("bytes", "layer", "level", "height", "width") if k in points[0]]
    return results_io.to_results(name, points, description, extra_point_keys=keys,
                                 scalable=scalable, **extra)


def aggregate(out: str, load, num_layers: int, num_levels: int, config: Mapping) -> Dict:
    """Builds every curve from the per-image results (``load(name)`` -> results document or
    None), writes JSON, plots and bd_table.md into ``out``; returns {file stem: doc}."""
    from bench import plot, results_io
    docs: Dict[str, Dict] = {}
    sections: List[str] = []
    desc = (f"filters {config.get('filters')}, lambdas {config.get('lmbdas')}, "
            f"{config.get('steps')} steps, patch {config.get('patchsize')}, batch "
            f"{config.get('batchsize')}, {config.get('entropy_model')}")
    n_img = None
    quality = load("quality")
    singles = [load(f"single_{k + 1}") for k in range(num_layers)]
    if quality is not None:
        pts = layer_points(quality)
        n_img = len(pts)
        docs["quality_scalable"] = _doc(
            "Ours-scalable", average(pts), f"quality-scalable model, {desc}; layer k rate = "
            f"streams 1..k; mean over {n_img} images", True)
    if all(s is not None for s in singles):
        sp = single_layer_points(singles)
        docs["single_layer"] = _doc(
            "Ours-single-layer", average(sp), "one single-layer model per lambda (same filters, "
            f"lambda, data and steps as the scalable model's layer); mean over {len(sp)} images",
            False)
        docs["simulcast"] = _doc(
            "Ours-simulcast", average(simulcast_points(sp)), "rate of point k = sum of the "
            f"single-layer rates 1..k per image; mean over {len(sp)} images", True)
    matched = load_json(os.path.join(out, "per_image", "j2k_layered_matched.json"))
    if matched:
        ok = [d["points"] for d in matched if d["points"]]
        if ok:
            docs["j2k_layered_matched"] = _doc(
                "JPEG2000-layered", average(ok), "one JPEG 2000 codestream per image with 4 "
                "quality layers whose cumulative rates are matched to the scalable model's "
                "layer rates of that image (irreversible, mct=1, LRCP); rate = truncated "
                f"codestream size; mean over {len(ok)} images "
                f"({len(matched) - len(ok)} skipped: non-increasing rates)", True)
    # classic anchors computed earlier (bench.kodak_anchors)
    classic = {}
    for stem in ("j2k_single", "jpeg", "webp"):
        path = os.path.join(out, f"{stem}.json")
        if os.path.exists(path):
            classic[stem] = results_io.read_results(path)
    for stem, doc in docs.items():
        results_io.write_results(os.path.join(out, f"{stem}.json"), doc)
    quality_curves = {d["name"]: d for d in docs.values()}
    for d in classic.values():
        quality_curves.setdefault(d["name"], d)
    if quality_curves:
        plot.plot_rd(quality_curves, os.path.join(out, "rd_quality.png"),
                     f"Quality scalability, Kodak ({n_img} images), CPU-scale training")
    if "quality_scalable" in docs:
        tests = [n for n in ("Ours-single-layer", "Ours-simulcast", "JPEG2000-layered",
                             "JPEG2000", "WebP", "JPEG") if n in quality_curves]
        sections.append(format_bd_section(
            "Quality: anchors against the scalable model (negative BD-rate = the anchor needs "
            "fewer bits than the scalable model)", "Ours-scalable", quality_curves, tests))
        ref_tests = [n for n in ("Ours-scalable",) if n in quality_curves]
        for ref in ("Ours-single-layer", "Ours-simulcast", "JPEG2000-layered"):
            if ref in quality_curves:
                sections.append(format_bd_section(
                    f"Quality: scalable model against {ref} (positive BD-rate = cost of the "
                    "scalable model in extra bits)", ref, quality_curves, ref_tests))

    # spatial
    spatial = load("spatial")
    res_anchor = load_json(os.path.join(out, "per_image", "j2k_resolutions.json"))
    spatial_curves = {}
    point_rows = []
    if spatial is not None:
        sp_pts = layer_points(spatial)
        avg = average(sp_pts)
        for j, p in enumerate(avg):
            p["level"] = j + 1
        docs["spatial_scalable"] = _doc(
            "Ours-spatial", avg, f"spatial-scalable model, filters {config.get('spatial_filters')}, "
            f"lambdas {config.get('spatial_lmbdas')}, {config.get('spatial_steps')} steps; layer k "
            "compared with pyramid level k (Lanczos); rate = streams 1..k over level k's pixels; "
            f"mean over {len(sp_pts)} images", True)
        results_io.write_results(os.path.join(out, "spatial_scalable.json"),
                                 docs["spatial_scalable"])
        spatial_curves["Ours-spatial"] = docs["spatial_scalable"]
        for j in range(num_levels):
            anchors_at_level = {}
            if res_anchor:
                per_img = [[lvls[j] for lvls in d["resolution_levels"]] for d in res_anchor]
                stem = f"j2k_resolution_level{j + 1}"
                docs[stem] = _doc(f"JPEG2000-resolution-L{j + 1}", average(per_img),
                                  "one RLCP JPEG 2000 codestream per full-resolution target "
                                  f"{list(J2K_RESOLUTION_TARGETS)} bpp, truncated/decoded at "
                                  f"level {j + 1} of {num_levels} (reduce="
                                  f"{num_levels - 1 - j}); bpp over that level's pixels", False)
                per_img = [d["single"][j] for d in res_anchor]
                stem2 = f"j2k_single_level{j + 1}"
                docs[stem2] = _doc(f"JPEG2000-single-L{j + 1}", average(per_img),
                                   f"single-layer JPEG 2000 of the level-{j + 1} Lanczos image at "
                                   f"{list(J2K_RESOLUTION_TARGETS)} bpp", False)
                anchors_at_level[docs[stem]["name"]] = docs[stem]
                anchors_at_level[docs[stem2]["name"]] = docs[stem2]
            if j == num_levels - 1:
                single_docs = singles
            else:
                single_docs = [load(f"single_{k + 1}_level{j + 1}") for k in range(num_layers)]
            if all(s is not None for s in single_docs):
                stem = f"single_layer_level{j + 1}"
                docs[stem] = _doc(f"Ours-single-layer-L{j + 1}",
                                  average(single_layer_points(single_docs)),
                                  "our single-layer models (quality protocol) applied to the "
                                  f"level-{j + 1} image", False)
                anchors_at_level[docs[stem]["name"]] = docs[stem]
            for name, doc in anchors_at_level.items():
                spatial_curves[name] = doc
                point = avg[j]
                cmp = point_vs_curve(point, doc, "psnr")
                point_rows.append(dict(layer=j + 1, resolution=(
                    f"{point.get('width', 0):.0f}x{point.get('height', 0):.0f}"
                    if point.get("width") else f"level {j + 1}"), bpp=point["bpp"],
                    psnr=point["psnr"], anchor=name, **cmp))
        for stem, doc in docs.items():
            if stem.startswith(("j2k_resolution_level", "j2k_single_level", "single_layer_level")):
                results_io.write_results(os.path.join(out, f"{stem}.json"), doc)
        plot.plot_rd(spatial_curves, os.path.join(out, "rd_spatial.png"),
                     f"Spatial scalability per resolution, Kodak ({len(sp_pts)} images)")
        sections.append(
            "### Spatial: each layer of the spatial model against anchors at that resolution\n\n"
            "The spatial model has ONE point per resolution (one lambda per layer), so no BD "
            "integral exists; the table gives the rate difference at equal PSNR and the PSNR "
            "difference at equal rate against each anchor curve at that resolution "
            "(piecewise-linear interpolation in log rate; n/a outside the anchor's range or where the anchor's PSNR is not increasing with rate). "
            "Negative rate diff / positive PSNR diff = the spatial layer is better.\n\n"
            + format_point_table(point_rows))
    text = ["# Rate-distortion protocol results\n",
            f"Configuration: {json.dumps(dict(config))}\n",
            "BD-rate / BD-PSNR: PyPI `bjontegaard` (1.3.0), Akima interpolation, 4 points per "
            "curve minimum, means over images of per-image bpp/PSNR/MS-SSIM.\n",
            "## Curves (means over images)\n", format_curve_table(docs), "## BD tables\n"]
    text += sections
    with open(os.path.join(out, "bd_table.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    return docs


def load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_dir", default="/work/shared/train",
                   help="Training images: a folder with subfolders of photos (default) or, with "
                        "--no_recursive, a folder/glob given to the train scripts as is.")
    p.add_argument("--no_recursive", dest="train_recursive", action="store_false")
    p.add_argument("--kodak", default="/work/shared/kodak", help="Evaluation images.")
    p.add_argument("--out", default="bench/results", help="JSON, plots, BD table.")
    p.add_argument("--work_dir", default=None,
                   help="Checkpoints, streams, reconstructions (default /tmp/scalable_rd/<profile>).")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--max_images", type=int, default=0, help="Only the first N images (smoke).")
    p.add_argument("--entropy_model", default="hyperprior", choices=("hyperprior", "factorized"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_secs", type=float, default=120)
    p.add_argument("--preprocess_threads", type=int, default=2)
    p.add_argument("--no_ms_ssim", action="store_true", help="anchors: PSNR only")
    for key, value in PROFILES["cpu"].items():
        kind = _ints if isinstance(value, list) and isinstance(value[0], int) else \
            _floats if isinstance(value, list) else type(value)
        p.add_argument(f"--{key}", type=kind, default=None, help=f"overrides the profile's {key}")
    p.add_argument("--single_steps", type=int, default=None,
                   help="steps of each single-layer model (default: --steps)")
    args = p.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.single_steps is None:
        args.single_steps = args.steps
    if args.work_dir is None:
        args.work_dir = os.path.join("/tmp", "scalable_rd", args.profile)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {STAGES}")
    if len(args.filters) != len(args.lmbdas):
        p.error("--filters and --lmbdas need one value per layer")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    needs_train = any(s.startswith("train") or s == "tfrecords" for s in args.stages)
    needs_kodak = any(s.startswith("eval") or s == "anchors" for s in args.stages)
    for needed, path, what in ((needs_train, args.train_dir, "training images"),
                               (needs_kodak, args.kodak, "evaluation images")):
        if needed and not os.path.exists(path):
            print(f"no {what} at {path}: skipping the RD protocol (nothing to do)")
            return 0
    proto = Protocol(args)
    start = time.monotonic()
    for stage in STAGES:
        if stage in args.stages:
            log(f"stage {stage}")
            proto.timed(stage, getattr(proto, f"stage_{stage}"))
            log(f"stage {stage} done ({proto.times[stage]:.0f} s, total "
                f"{time.monotonic() - start:.0f} s)")
    if "eval_lowres" in args.stages:
        log("stage aggregate (again, with the low-resolution single-layer results)")
        proto.stage_aggregate()
    log(f"all done in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
