"""Estimated vs actual bits per layer, by image size: is a trained model's entropy model
calibrated on images larger than its training patches?

    python -m bench.bits_by_size --checkpoint_dir DIR --images GLOB \
        [--crops 0,256,512] [--max_images 6] [--out FILE.json]

For each size (0 = the whole images, else non-overlapping square crops of that side from the
top-left), every image is coded with `compress_layers` (spatial models: its Lanczos pyramid,
as eval_spatial.py) and the likelihood-estimated bits of every layer are summed against the
bits of its range-coded strings (payload only, no stream header). A ratio near 1 at the
training patch size but not on larger images points at a model that learned the borders of
its training patches: latents too small in training (see pipeline.cli.small_patch_note).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys


def crops(image, side):
    """The image itself (side 0), or its non-overlapping side x side crops."""
    if not side:
        return [image]
    height, width = image.shape[:2]
    return [image[y:y + side, x:x + side] for y in range(0, height - side + 1, side)
            for x in range(0, width - side + 1, side)]


def layer_bits(model, levels):
    """[(estimated bits, actual payload bits)] per layer of one coded image."""
    return [(layer["bits"], 8 * sum(len(s) for s in layer["strings"]))
            for layer in model.compress_layers(levels, reconstruct=False)]


def measure(checkpoint_dir, paths, sides):
    """{side: {layer name: {estimated, actual, ratio}}} summed over the images' crops."""
    from bench.results_io import shown_path
    from codec import image as image_lib
    from models.config import ModelConfig
    from models.scalable import PAD_MULTIPLE
    from pipeline.checkpoints import load_trained_model
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")  # one traced function per layer is expected, not retracing
    config = ModelConfig.load(checkpoint_dir)
    model = load_trained_model(checkpoint_dir, config.mode)
    results = {}
    for side in sides:
        sums = [[0.0, 0] for _ in config.layer_names]
        count = 0
        for path in paths:
            for crop in crops(image_lib.read_image(path), side):
                levels = (image_lib.pyramid(crop, config.num_layers) if config.mode == "spatial"
                          else [crop] * config.num_layers)
                levels = [image_lib.pad_to_multiple(level, PAD_MULTIPLE) for level in levels]
                for total, (estimated, actual) in zip(sums, layer_bits(model, levels)):
                    total[0] += estimated
                    total[1] += actual
                count += 1
        results[str(side)] = dict(crops=count, layers={
            name: dict(estimated_bits=round(estimated), actual_bits=actual,
                       ratio=round(estimated / actual, 4) if actual else None)
            for name, (estimated, actual) in zip(config.layer_names, sums)})
    return dict(checkpoint_dir=shown_path(checkpoint_dir, "--checkpoint_dir"), mode=config.mode,
                images=[os.path.basename(p) for p in paths], results=results)


def format_table(doc):
    lines = ["| size | crops | layer | estimated bits | actual bits | estimated / actual |",
             "|---|---:|---|---:|---:|---:|"]
    for side, entry in doc["results"].items():
        for name, row in entry["layers"].items():
            lines.append(f"| {'whole' if side == '0' else side} | {entry['crops']} | {name} | "
                         f"{row['estimated_bits']} | {row['actual_bits']} | {row['ratio']} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint_dir", required=True,
                   help="A training directory or a pretrained folder (either mode).")
    p.add_argument("--images", required=True, help="Glob of images, e.g. 'kodak/*.png'.")
    p.add_argument("--crops", default="0,256,512",
                   help="Comma-separated crop sides; 0 = the whole images.")
    p.add_argument("--max_images", type=int, default=6)
    p.add_argument("--out", default=None, help="Also write the results as JSON here.")
    args = p.parse_args(argv)
    paths = sorted(glob.glob(args.images))[:args.max_images or None]
    if not paths:
        raise SystemExit(f"error: --images '{args.images}' matches no file")
    sides = [int(v) for v in args.crops.split(",") if v.strip()]
    from codec.image import ImageError
    from models.config import ConfigError
    from pipeline.checkpoints import CheckpointError
    try:
        doc = measure(args.checkpoint_dir, paths, sides)
    except (ConfigError, CheckpointError, ImageError) as error:
        raise SystemExit(f"error: {error}") from None
    print(format_table(doc))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
