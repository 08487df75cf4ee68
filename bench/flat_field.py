"""How closely a model reproduces flat colour, layer by layer.

    python -m bench.flat_field --checkpoint_dir pretrained/quality [--out flat.json]

Codes uniform grey images (nine levels from 16 to 240, 256x256) through the real codec
(pipeline.api: streams, range coder, decoder) and prints, per layer, the PSNR of the mean
squared error over the levels. A probe of the lowest frequencies: on clean, smooth photos,
where JPEG 2000 reaches 40-50 dB at 0.1-0.2 bpp, a model can get no closer to it than it gets
to a flat field (docs/training-recipe.md, "Where the held-out gap is").
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

GREY_LEVELS = (16, 44, 72, 100, 128, 156, 184, 212, 240)
SIDE = 256


def flat_field(codec, levels=GREY_LEVELS, side=SIDE):
    """Per layer of `codec` (a pipeline.api.ScalableCodec): the PSNR (dB, None for a perfect
    layer) of the mean squared error of its decoded layers over uniform grey images, and
    each layer's mean error per level (a bias, in grey levels, averaged over R, G, B)."""
    from pipeline.metrics import psnr_from_mse
    names = codec.layer_names
    squared = np.zeros((len(levels), len(names)))
    bias = np.zeros((len(levels), len(names)))
    for i, level in enumerate(levels):
        image = np.full((side, side, 3), level, np.uint8)
        for k, layer in enumerate(codec.decompress(codec.compress(image))):
            error = layer.astype(np.float64) - level
            squared[i, k], bias[i, k] = np.mean(error ** 2), np.mean(error)
    psnr = [psnr_from_mse(mse) for mse in squared.mean(axis=0)]
    return dict(levels=list(levels), side=side, layers=list(names),
                psnr=[None if np.isinf(p) else round(p, 2) for p in psnr],
                bias=[[round(b, 2) for b in row] for row in bias.tolist()])


def format_psnr(result):
    """'39.9 / 40.9 / ...' (dB per layer)."""
    return " / ".join("inf" if p is None else f"{p:.1f}" for p in result["psnr"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", default="quality",
                        help="A model directory, or quality / spatial for the shipped ones.")
    parser.add_argument("--out", default=None, help="Also write the result as JSON here.")
    args = parser.parse_args(argv)
    from pipeline.api import ScalableCodec
    result = flat_field(ScalableCodec.load(args.checkpoint_dir))
    print(f"flat-field PSNR per layer ({', '.join(result['layers'])}): "
          f"{format_psnr(result)} dB")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
