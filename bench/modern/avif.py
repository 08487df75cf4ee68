"""AVIF: libaom through libavif's avifenc (4:4:4, 8 bits, full range, constant quality
``cq-level``, speed 4), decoded by avifdec.  avifenc converts RGB to YCbCr itself (BT.601,
full range); at cq-level 0 the round trip is 52.4 dB on kodim01.  The rate is the .avif file
(the ISOBMFF boxes included, about 300 bytes)."""
from __future__ import annotations

import os
import tempfile

import numpy as np

from bench.modern import tools
from codec import image as image_lib

NAME = "AVIF"
REQUIRES = ("avifenc", "avifdec")
CQ_LEVELS = (58, 52, 46, 40, 34, 28, 22, 16)  # about 0.1 to 2 bpp on Kodak
SPEED = 4
ENCODE = ("avifenc -j 1 -c aom -s {speed} -y 444 -d 8 -r full --min 0 --max 63 "
          "-a end-usage=q -a cq-level={q} -a tune=psnr {png} {avif}")
DECODE = "avifdec -j 1 {avif} {png}"
PROGRAMS = {"avifenc": (["avifenc", "--version"], "version", "libavif-bin")}


def encode(image: np.ndarray, q: int) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        png, avif = os.path.join(tmp, "in.png"), os.path.join(tmp, "out.avif")
        image_lib.write_png(png, image)
        tools.run(ENCODE.format(speed=SPEED, q=int(q), png=png, avif=avif).split())
        with open(avif, "rb") as f:
            return f.read()


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        avif, png = os.path.join(tmp, "in.avif"), os.path.join(tmp, "out.png")
        with open(avif, "wb") as f:
            f.write(data)
        tools.run(DECODE.format(avif=avif, png=png).split())
        return image_lib.read_image(png)


def describe() -> dict:
    return dict(versions=tools.versions(PROGRAMS), encode=ENCODE.replace("{speed}", str(SPEED)),
                decode=DECODE, param="cq-level")
