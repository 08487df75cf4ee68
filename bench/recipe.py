"""A/B of training recipes: fine-tune one trained model under each recipe for the same steps
from the same seed, then compare the recipes on Kodak and on held-out photos.

    python -m bench.recipe --train_glob 'TRAIN/*/*' --kodak KODAK --heldout data/photos/heldout \\
        --recipes base,downscale,downscale_extra,patch256 --steps 1200

Every recipe starts from `--init_from` (default: the shipped quality model, trained for
`--init_step` steps) with a fresh Adam at a constant `--learning_rate`, and trains
`--steps` more steps (seed 1) into `--runs/<recipe>`; a rerun resumes unfinished runs and skips
finished ones. Each run, and the starting model, is then evaluated with eval_quality.py (real
stream sizes) on both image sets. The report (`--out`: recipes.json, recipes.md) gives per set
the mean bpp and PSNR per layer, BD-rate and BD-PSNR (PSNR, averaged curves) of every recipe
against the baseline (the first recipe) and against JPEG 2000 (single layer, a sweep of
fixed rates, mct=1, averaged over the same images), with each run's train command.

Recipes differ from the baseline in one thing each, unless named as combinations.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The shipped quality model's recipe (bench.rd's ship profile) is the baseline; every recipe
# changes the data or the patches only. Flags with "{extra}" get --extra_glob's photos.
BASE_FLAGS = ["--filters", "48,48,64,64", "--patchsize", "128", "--batchsize", "8"]
RECIPES = {
    "base": [],
    "downscale": ["--downscale", "0.5,1.0"],
    "downscale_extra": ["--downscale", "0.5,1.0", "{extra}"],
    "extra": ["{extra}"],
    "patch256": ["--patchsize", "256", "--batchsize", "2"],
    "downscale_all": ["--downscale", "0.5,1.0", "--downscale_sources", "all"],
}
# JPEG 2000 anchor rates (bpp), single layer, averaged over the images of a set.
J2K_BPPS = (0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.65, 0.8, 1.0, 1.3, 1.6, 2.0)
STAGES = ("train", "eval", "report")


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train_command(args, recipe):
    """The train_quality.py command line of `recipe` (a list of arguments)."""
    glob_ = args.train_glob
    flags = []
    for flag in RECIPES[recipe]:
        if flag == "{extra}":
            if not args.extra_glob:
                raise SystemExit(f"error: recipe {recipe} needs --extra_glob (the photos of "
                                 "python -m pipeline.photo_sets)")
            glob_ = f"{glob_},{args.extra_glob}"
        else:
            flags.append(flag)
    merged = list(BASE_FLAGS)
    for name, value in zip(flags[::2], flags[1::2]):  # a recipe's flag replaces the base's
        if name in merged:
            merged[merged.index(name) + 1] = value
        else:
            merged += [name, value]
    return ["train_quality.py", "--train_glob", glob_, *merged,
            "--init_from", args.init_from, "--init_step", str(args.init_step),
            "--learning_rate", str(args.learning_rate),
            "--last_step", str(args.init_step + args.steps),
            "--checkpoint_dir", os.path.join(args.runs, recipe), "--seed", str(args.seed),
            "--checkpoint_secs", "600", "--log_every", "100"]


def run_logged(command, log_path):
    """Run a repository script with this Python, its output appended to `log_path`."""
    log(" ".join(shlex.quote(c) for c in command))
    with open(log_path, "a") as f:
        subprocess.run([sys.executable, *command], cwd=REPO, check=True, stdout=f,
                       stderr=subprocess.STDOUT)


def _eval_dir(args, name, image_set):
    return os.path.join(args.runs, "eval", f"{name}_{image_set}")


def _sets(args):
    return {"kodak": args.kodak, "heldout": args.heldout}


def stage_train(args):
    os.makedirs(args.runs, exist_ok=True)
    for recipe in args.recipes:
        run_logged(train_command(args, recipe), os.path.join(args.runs, f"{recipe}.log"))


def stage_eval(args):
    models = {"start": args.init_from}
    models.update({r: os.path.join(args.runs, r) for r in args.recipes})
    for name, model in models.items():
        for image_set, folder in _sets(args).items():
            out = _eval_dir(args, name, image_set)
            if os.path.exists(os.path.join(out, "results.json")):
                continue
            run_logged(["eval_quality.py", "--input_image", folder, "--checkpoint_dir", model,
                  "--output_folder", out], os.path.join(args.runs, "eval.log"))


def mean_curve(results):
    """Per layer: mean actual bpp and PSNR over the images of an eval results.json."""
    from bench.rd.points import layer_points
    per_image = layer_points(results)
    layers = len(per_image[0])
    return [dict(bpp=sum(p[k]["bpp"] for p in per_image) / len(per_image),
                 psnr=sum(p[k]["psnr"] for p in per_image) / len(per_image))
            for k in range(layers)]


def j2k_sweep(image):
    """JPEG 2000 single layer at J2K_BPPS on one image (array): its bpp and PSNR points."""
    from bench import anchors
    return [dict(bpp=p["bpp"], psnr=p["psnr"])
            for p in anchors.jpeg2000_single_sweep(image, J2K_BPPS, ms_ssim=False)]


def j2k_curve(images):
    """JPEG 2000 single layer at J2K_BPPS, mean bpp and PSNR over `images` (arrays)."""
    per_image = [j2k_sweep(image) for image in images]
    return [dict(bpp=sum(p[i]["bpp"] for p in per_image) / len(per_image),
                 psnr=sum(p[i]["psnr"] for p in per_image) / len(per_image))
            for i in range(len(J2K_BPPS))]


def bd_against(anchor, test):
    """BD-rate (%) and BD-PSNR (dB) of the curve `test` against `anchor`."""
    from bench import bd
    rate = bd.bd_rate([p["bpp"] for p in anchor], [p["psnr"] for p in anchor],
                      [p["bpp"] for p in test], [p["psnr"] for p in test])
    psnr = bd.bd_psnr([p["bpp"] for p in anchor], [p["psnr"] for p in anchor],
                      [p["bpp"] for p in test], [p["psnr"] for p in test])
    return dict(bd_rate_percent=rate, bd_psnr_db=psnr)


def stage_report(args):
    names = ["start", *args.recipes]
    baseline = args.recipes[0]
    report = dict(init_from=os.path.relpath(args.init_from, REPO), init_step=args.init_step,
                  steps=args.steps, learning_rate=args.learning_rate, seed=args.seed,
                  baseline=baseline, sets={}, commands={
                      r: "python " + " ".join(shlex.quote(c) for c in train_command(args, r))
                      for r in args.recipes})
    for image_set, folder in _sets(args).items():
        log(f"JPEG 2000 sweep on {image_set}")
        from codec.image import list_images, read_image
        anchor = j2k_curve([read_image(path) for path in list_images(folder)])
        curves = {}
        for name in names:
            with open(os.path.join(_eval_dir(args, name, image_set), "results.json")) as f:
                curves[name] = mean_curve(json.load(f))
        report["sets"][image_set] = dict(
            images=len(json.load(open(os.path.join(
                _eval_dir(args, baseline, image_set), "results.json")))["images"]),
            jpeg2000=anchor, curves=curves,
            vs_baseline={n: bd_against(curves[baseline], curves[n]) for n in names if n != baseline},
            vs_jpeg2000={n: bd_against(anchor, curves[n]) for n in names})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "recipes.json"), "w") as f:
        json.dump(report, f, indent=1)
    with open(os.path.join(args.out, "recipes.md"), "w") as f:
        f.write(format_report(report))
    print(format_report(report))


def signed(value, digits, unit=""):
    return "n/a" if value is None else f"{value:+.{digits}f}{unit}"


def format_report(report):
    """The markdown tables of a recipes.json document."""
    lines = [f"Fine-tunes of `{report['init_from']}` (step {report['init_step']}) for "
             f"{report['steps']} steps each, seed {report['seed']}, Adam at a constant "
             f"{report['learning_rate']:g}; eval_quality.py, real stream sizes. BD on PSNR "
             "(Akima) of curves averaged over the images; JPEG 2000 single layer (mct=1) at "
             "fixed rates. 'start' is the model before fine-tuning.", ""]
    for image_set, result in report["sets"].items():
        lines += [f"**{image_set}** ({result['images']} images)", "",
                  "| recipe | bpp per layer | PSNR per layer (dB) | vs baseline: BD-rate | "
                  "BD-PSNR | vs JPEG 2000: BD-rate | BD-PSNR |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for name, curve in result["curves"].items():
            base = result["vs_baseline"].get(name)
            j2k = result["vs_jpeg2000"][name]
            lines.append(
                f"| {name}{' (baseline)' if name == report['baseline'] else ''} | "
                + " / ".join(f"{p['bpp']:.3f}" for p in curve) + " | "
                + " / ".join(f"{p['psnr']:.2f}" for p in curve) + " | "
                + (f"{signed(base['bd_rate_percent'], 1, ' %')} | "
                   f"{signed(base['bd_psnr_db'], 2, ' dB')}" if base else "– | –") + " | "
                + f"{signed(j2k['bd_rate_percent'], 1, ' %')} | "
                  f"{signed(j2k['bd_psnr_db'], 2, ' dB')} |")
        lines.append("")
    lines += ["Commands (from the repository root):", ""]
    lines += [f"- {name}: `{command}`" for name, command in report["commands"].items()]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default=",".join(STAGES),
                        help=f"Comma-separated, of {', '.join(STAGES)}.")
    parser.add_argument("--recipes", default="base,downscale,downscale_extra,patch256",
                        help=f"Comma-separated, the baseline first; of {', '.join(RECIPES)}.")
    parser.add_argument("--train_glob", required=True,
                        help="The baseline's training photos (a glob or folder).")
    parser.add_argument("--extra_glob", default=None,
                        help="More photos for the *_extra recipes (python -m "
                             "pipeline.photo_sets writes data/photos/train_extra).")
    parser.add_argument("--kodak", required=True, help="Folder of the Kodak images.")
    parser.add_argument("--heldout", required=True,
                        help="Folder of held-out photos (never in training).")
    parser.add_argument("--init_from", default=os.path.join("pretrained", "quality"))
    parser.add_argument("--init_step", type=int, default=25000)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--runs", default=os.path.join("runs", "recipe"),
                        help="Training runs and evaluations (not committed).")
    parser.add_argument("--out", default=os.path.join("bench", "results", "recipe"),
                        help="recipes.json and recipes.md.")
    args = parser.parse_args(argv)
    args.stages = [s for s in args.stages.split(",") if s]
    args.recipes = [r for r in args.recipes.split(",") if r]
    for name, known in (("stage", STAGES), ("recipe", RECIPES)):
        unknown = [v for v in getattr(args, name + "s") if v not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown[0]!r}: use {', '.join(known)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    for stage in STAGES:
        if stage in args.stages:
            globals()[f"stage_{stage}"](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
