"""HEVC intra, the BPG setting: x265 (preset slow, tune psnr, every frame intra, constant QP),
4:4:4 8-bit, full-range BT.601 YCbCr; decoded by ffmpeg's HEVC decoder.

The RGB <-> YCbCr conversion is done here (exact JFIF/BT.601 full-range matrices, rounded to
8 bits), not by a scaler, so both directions are known: the round trip alone is 52.7 dB on
kodim01, x265 at QP 0 then 52.6 dB (the conversion, not the codec, is the cap; at 2 bpp the
codec is near 40 dB).  The rate is the size of the Annex-B bitstream (VPS/SPS/PPS + one
slice; ``--no-info`` drops x265's version SEI, as BPG does)."""
from __future__ import annotations

import numpy as np

from bench.modern import tools

NAME = "HEVC-intra"
REQUIRES = ("x265", "ffmpeg")
QPS = (22, 25, 28, 31, 34, 37, 40, 43, 46)  # about 0.1 to 2 bpp on Kodak
SEARCH_GRID = tuple(range(51, -1, -1))  # size grows along it (rate matching)
ENCODE = ("x265 --input {yuv} --input-res {w}x{h} --input-csp i444 --input-depth 8 --fps 1 "
          "--frames 1 --preset slow --tune psnr --keyint 1 --qp {qp} --range full "
          "--colormatrix smpte170m --no-info --pools none --frame-threads 1 --no-wpp "
          "--lookahead-slices 0 --no-progress --log-level error -o {hevc}")
DECODE = "ffmpeg -v error -y -threads 1 -f hevc -i {hevc} -f rawvideo -pix_fmt yuv444p {yuv}"
PROGRAMS = {"x265": (["x265", "--version"], "version", "x265"),
            "ffmpeg": (["ffmpeg", "-version"], "ffmpeg version", "ffmpeg")}

# JFIF / BT.601 full range: Y, Cb, Cr from R, G, B (offsets 0, 128, 128)
RGB_TO_YCBCR = np.array([[0.299, 0.587, 0.114],
                         [-0.168735892, -0.331264108, 0.5],
                         [0.5, -0.418687589, -0.081312411]])
YCBCR_TO_RGB = np.linalg.inv(RGB_TO_YCBCR)
_OFFSET = np.array([0.0, 128.0, 128.0])


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 full-range YCbCr (BT.601), rounded."""
    ycc = rgb.astype(np.float64) @ RGB_TO_YCBCR.T + _OFFSET
    return np.clip(np.rint(ycc), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """uint8 full-range YCbCr (BT.601) -> uint8 RGB, rounded."""
    rgb = (ycc.astype(np.float64) - _OFFSET) @ YCBCR_TO_RGB.T
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def planar(image: np.ndarray) -> bytes:
    """HxWx3 -> the three planes one after the other (yuv444p)."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)).tobytes()


def interleaved(data: bytes, height: int, width: int) -> np.ndarray:
    """yuv444p bytes -> HxWx3."""
    return np.frombuffer(data, np.uint8).reshape(3, height, width).transpose(1, 2, 0)


def encode(image: np.ndarray, qp: int) -> bytes:
    h, w = image.shape[:2]
    return tools.through_files(planar(rgb_to_ycbcr(image)), ENCODE, "in.yuv", "out.hevc",
                               w=w, h=h, qp=int(qp))


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    raw = tools.through_files(data, DECODE, "in.hevc", "out.yuv")
    if len(raw) != 3 * height * width:
        raise RuntimeError(f"decoded {len(raw)} bytes, expected a {width}x{height} 4:4:4 frame")
    return ycbcr_to_rgb(interleaved(raw, height, width))


def describe() -> dict:
    return dict(versions=tools.versions(PROGRAMS), encode=ENCODE, decode=DECODE,
                colour="RGB -> YCbCr full range BT.601 (JFIF) in numpy, rounded to 8 bits; "
                       "inverse after decoding", param="qp")
