"""JPEG XL with libjxl 0.11 (the imagecodecs wheel): single-layer files at a sweep of
distances (default effort 7, as ``cjxl -d D``), and progressive files (``cjxl -p -d D``: AC in
shift-quantized passes) decoded from byte prefixes.  The encoder works in XYB from the 8-bit
sRGB input and decodes back to 8-bit sRGB; the rate is the bare codestream (no container)."""
from __future__ import annotations

import numpy as np

from bench.modern import libjxl, rate

NAME = "JPEG-XL"
PROGRESSIVE_NAME = "JPEG-XL-progressive"
REQUIRES = ("py:imagecodecs",)
DISTANCES = (25.0, 15.0, 10.0, 6.5, 4.5, 3.0, 2.0, 1.4, 1.0, 0.7)  # about 0.1 to 2 bpp
EFFORT = 7
# distances for rate matching, large to small (the size grows along it), 3 % apart
SEARCH_GRID = tuple(reversed(rate.geometric_grid(0.1, 25.0, 1.03)))
ENCODE = ("imagecodecs.jpegxl_encode(rgb, distance={d}, effort=7, numthreads=1) "
          "(= cjxl in.png out.jxl -d {d} -e 7 --num_threads 0)")
DECODE = "imagecodecs.jpegxl_decode(data, numthreads=1) (= djxl out.jxl out.png)"
ENCODE_PROGRESSIVE = ("libjxl C API: distance {d}, JXL_ENC_FRAME_SETTING_EFFORT 7, "
                      "JXL_ENC_FRAME_SETTING_QPROGRESSIVE_AC 1 (= cjxl in.png out.jxl -d {d} "
                      "-e 7 -p --qprogressive_ac)")
DECODE_PREFIX = ("libjxl C API on the first N bytes: JxlDecoderProcessInput until "
                 "JXL_DEC_NEED_MORE_INPUT, then JxlDecoderFlushImage "
                 "(= djxl prefix.jxl out.png --allow_partial_files)")


def encode(image: np.ndarray, distance: float) -> bytes:
    import imagecodecs
    return bytes(imagecodecs.jpegxl_encode(np.ascontiguousarray(image), distance=float(distance),
                                           effort=EFFORT, numthreads=1))


def decode(data: bytes, height: int, width: int) -> np.ndarray:
    import imagecodecs
    out = np.asarray(imagecodecs.jpegxl_decode(data, numthreads=1))
    if out.shape != (height, width, 3) or out.dtype != np.uint8:
        raise RuntimeError(f"JPEG XL decoded {out.shape} {out.dtype}, expected 8-bit RGB")
    return out


def encode_progressive(image: np.ndarray, distance: float) -> bytes:
    return libjxl.encode(image, distance, EFFORT, progressive=True)


def decode_prefix(data: bytes):
    """Pixels rendered from a prefix of a progressive file, or None (too few bytes)."""
    return libjxl.decode(data, partial=True)


def describe(progressive: bool = False) -> dict:
    import imagecodecs
    versions = {"imagecodecs": f"imagecodecs {imagecodecs.__version__}, {libjxl.version()}"}
    if progressive:
        return dict(versions=versions, encode=ENCODE_PROGRESSIVE, decode=DECODE_PREFIX,
                    param="distance")
    return dict(versions=versions, encode=ENCODE, decode=DECODE, param="distance")
