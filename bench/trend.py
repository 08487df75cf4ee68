"""The trend of a long training run against JPEG 2000, on Kodak and on held-out photos.

    python -m bench.trend --checkpoint_dir runs/long/quality --kodak KODAK \\
        --heldout data/photos/heldout --out bench/results/long

Evaluates the newest checkpoint of --checkpoint_dir (a snapshot of it is copied first, so the
run may go on) with eval_quality.py or eval_spatial.py on both image sets, real stream sizes,
and adds one row per step to `<mode>_trend.json` and `<mode>_trend.md` in --out:
- quality mode: BD-rate and BD-PSNR of the layer curve (averaged over the images) against
  JPEG 2000 single layer at fixed rates (mct=1) on the same images, and the median and worst
  of the same BD-PSNR image by image;
- spatial mode: per layer, the mean point at its own resolution (Lanczos pyramid, as
  eval_spatial.py makes it) against JPEG 2000 coding that resolution alone: the PSNR
  difference at the same rate;
- both modes: the model's flat-field PSNR per layer (bench/flat_field.py).
--checkpoint_dir may also be a pretrained folder (its step given with --step).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys

from bench import flat_field, recipe

J2K_NAME = "jpeg2000_{set}_level{level}_of_{levels}.json"


def _snapshot(checkpoint_dir, runs):
    """Copy the newest checkpoint of a training run (or a pretrained folder) into `runs`."""
    import tensorflow as tf
    from pipeline.pretrained import is_pretrained
    if is_pretrained(checkpoint_dir):
        return checkpoint_dir, None
    path = tf.train.latest_checkpoint(checkpoint_dir)
    if path is None:
        raise SystemExit(f"error: '{checkpoint_dir}' has no checkpoint yet")
    step = int(path.rsplit("-", 1)[1])
    if os.path.samefile(os.path.dirname(os.path.abspath(checkpoint_dir)), runs):
        return checkpoint_dir, step  # already a snapshot: a rerun (its evaluations are kept)
    name = f"{os.path.basename(os.path.normpath(checkpoint_dir))}_step{step}"
    target = os.path.join(runs, name)
    if not os.path.exists(os.path.join(target, "checkpoint")):
        os.makedirs(target, exist_ok=True)
        for file in os.listdir(checkpoint_dir):
            if file.startswith(os.path.basename(path) + ".") or file == "config.json":
                shutil.copy2(os.path.join(checkpoint_dir, file), target)
        with open(os.path.join(target, "checkpoint"), "w") as f:
            f.write(f'model_checkpoint_path: "{os.path.basename(path)}"\n')
    return target, step


def _levels(folder, level, levels):
    """The images of `folder` at pyramid level `level` (1 = lowest of `levels`)."""
    from codec.image import list_images, pyramid, read_image
    return [pyramid(read_image(p), levels)[level - 1] for p in list_images(folder)]


def _j2k(out, image_set, folder, level, levels):
    """JPEG 2000 single layer at recipe.J2K_BPPS on one level of a set (cached in `out`)."""
    path = os.path.join(out, J2K_NAME.format(set=image_set, level=level, levels=levels))
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    curve = recipe.j2k_curve(_levels(folder, level, levels))
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
        json.dump(curve, f, indent=1)
    return curve


def _per_image_bd_psnr(out, image_set, folder, results):
    """Quality mode: per image, BD-PSNR (dB) of its layer curve against JPEG 2000 single layer
    (recipe.j2k_sweep) on that image (the sweeps cached in `out`); None where undefined
    (e.g. JPEG 2000 reaching lossless inside the sweep)."""
    import warnings
    from bench.rd.points import layer_points
    from codec.image import read_image
    path = os.path.join(out, f"jpeg2000_{image_set}_per_image.json")
    cache = {}
    if os.path.exists(path):
        with open(path) as f:
            cache = json.load(f)
    bd_psnr = {}
    for entry, points in zip(results["images"], layer_points(results)):
        name = os.path.basename(entry["image"])  # older results.json hold the folder too
        if name not in cache:
            cache[name] = recipe.j2k_sweep(read_image(os.path.join(folder, name)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bd_psnr[name] = recipe.bd_against(cache[name], points)["bd_psnr_db"]
    with open(path, "w") as f:
        json.dump(cache, f, indent=1)
    return bd_psnr


def evaluate(args):
    from bench import bd
    from models.config import ModelConfig
    os.makedirs(args.runs, exist_ok=True)
    model, step = _snapshot(args.checkpoint_dir, args.runs)
    step = args.step if step is None else step
    config = ModelConfig.load(model)
    row = dict(step=step, sets={})
    for image_set, folder in (("kodak", args.kodak), ("heldout", args.heldout)):
        out = os.path.join(args.runs, f"{os.path.basename(model)}_{image_set}")
        if not os.path.exists(os.path.join(out, "results.json")):
            recipe.run_logged([f"eval_{config.mode}.py", "--input_image", folder,
                         "--checkpoint_dir", model, "--output_folder", out],
                        os.path.join(args.runs, "eval.log"))
        with open(os.path.join(out, "results.json")) as f:
            results = json.load(f)
        curve = recipe.mean_curve(results)
        if config.mode == "quality":
            anchor = _j2k(args.out, image_set, folder, 1, 1)
            result = dict(curve=curve, vs_jpeg2000=recipe.bd_against(anchor, curve),
                          per_image_bd_psnr_db=_per_image_bd_psnr(args.out, image_set,
                                                                  folder, results))
        else:
            levels = len(curve)
            result = dict(curve=curve, vs_jpeg2000_db=[
                bd.point_vs_curve(point, _j2k(args.out, image_set, folder, k, levels))[
                    "metric_diff"] for k, point in enumerate(curve, start=1)])
        row["sets"][image_set] = result
    from pipeline.api import ScalableCodec
    row["flat_field_psnr"] = flat_field.flat_field(ScalableCodec.load(model))["psnr"]
    return config.mode, row


def _cells(mode, result):
    """Table cells of one set of a trend row: the curve, then its comparison."""
    curve = " / ".join(f"{p['psnr']:.2f}@{p['bpp']:.3f}" for p in result["curve"])
    if mode == "quality":
        j2k = result["vs_jpeg2000"]
        return [curve, recipe.signed(j2k["bd_psnr_db"], 2, " dB"),
                recipe.signed(j2k["bd_rate_percent"], 1, " %"), _spread(result)]
    return [curve, " / ".join(recipe.signed(d, 2) for d in result["vs_jpeg2000_db"])]


def _spread(result):
    """'median -1.30 / worst -5.46 dB (13 of 14)' of the per-image BD-PSNRs, if measured."""
    values = result.get("per_image_bd_psnr_db")
    if not values:
        return "n/a"
    defined = sorted(v for v in values.values() if v is not None)
    if not defined:
        return "n/a"
    median = statistics.median(defined)
    return (f"median {recipe.signed(median, 2)} / worst {recipe.signed(defined[0], 2)} dB"
            f" ({len(defined)} of {len(values)})")


def format_trend(mode, rows):
    """The markdown table of a trend document."""
    compared = (["BD-PSNR vs JPEG 2000", "BD-rate", "per-image BD-PSNR"] if mode == "quality"
                else ["vs JPEG 2000 at each size (dB)"])
    header = ["step"] + [f"{name}: {column}" for name in ("Kodak", "held-out")
                         for column in ["PSNR per layer (dB) @ bpp", *compared]] + [
                             "flat field: PSNR per layer (dB)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [str(row["step"])] + [c for image_set in ("kodak", "heldout")
                                      for c in _cells(mode, row["sets"][image_set])]
        cells.append(flat_field.format_psnr(dict(psnr=row["flat_field_psnr"]))
                     if "flat_field_psnr" in row else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--step", type=int, default=None,
                        help="The step of a pretrained folder (training runs know theirs).")
    parser.add_argument("--kodak", required=True)
    parser.add_argument("--heldout", required=True)
    parser.add_argument("--runs", default=os.path.join("runs", "trend"),
                        help="Snapshots and evaluations (not committed).")
    parser.add_argument("--out", default=os.path.join("bench", "results", "long"))
    args = parser.parse_args(argv)
    mode, row = evaluate(args)
    path = os.path.join(args.out, f"{mode}_trend.json")
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            rows = [r for r in json.load(f)["rows"] if r["step"] != row["step"]]
    rows = sorted(rows + [row], key=lambda r: r["step"] if r["step"] is not None else -1)
    with open(path, "w") as f:
        json.dump(dict(mode=mode, rows=rows), f, indent=1)
    with open(os.path.join(args.out, f"{mode}_trend.md"), "w") as f:
        f.write(format_trend(mode, rows))
    print(format_trend(mode, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
