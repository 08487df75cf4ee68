"""AVIF: libaom through libavif's avifenc (4:4:4, 8 bits, full range, constant quality
``cq-level``, speed 4), decoded by avifdec.  avifenc converts RGB to YCbCr itself (BT.601,
full range); at cq-level 0 the round trip is 52.4 dB on kodim01.  The rate is the .avif file
(the ISOBMFF boxes included, about 300 bytes)."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bench.modern import tools

NAME = "AVIF"
REQUIRES = ("avifenc", "avifdec")
CQ_LEVELS = (58, 52, 46, 40, 34, 28, 22, 16)  # about 0.1 to 2 bpp on Kodak
SPEED = 4
ENCODE = ("avifenc -j 1 -c aom -s {speed} -y 444 -d 8 -r full --min 0 --max 63 "
          "-a end-usage=q -a cq-level={q} -a tune=psnr {png} {avif}")
DECODE = "avifdec -j 1 {avif} {png}"
PROGRAMS = {"avifenc": (["avifenc", "--version"], "version", "libavif-bin")}


def encode(image: np.ndarray, q: int) -> bytes:
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    return tools.through_files(png.getvalue(), ENCODE, "in.png", "out.avif", speed=SPEED,
                               q=int(q))


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    png = tools.through_files(data, DECODE, "in.avif", "out.png")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def describe() -> dict:
    return dict(versions=tools.versions(PROGRAMS), encode=ENCODE.replace("{speed}", str(SPEED)),
                decode=DECODE, param="cq-level")
