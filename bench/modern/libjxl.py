"""libjxl's C API through ctypes, for what the Python wrappers do not expose: progressive
encoding (``JXL_ENC_FRAME_SETTING_QPROGRESSIVE_AC``) and decoding a truncated file
(``JxlDecoderFlushImage``).  The library is the one the imagecodecs wheel bundles (libjxl
0.11.1 in imagecodecs 2025.3.30), so single-layer and progressive JPEG XL share one encoder.
(Debian bookworm's libjxl 0.7 ignores the progressive-AC options: its files come out
byte-identical with and without them.)"""
from __future__ import annotations

import ctypes as C
import glob
import os
from functools import lru_cache

import numpy as np

# enum values of libjxl's encode.h / decode.h (stable across 0.7 .. 0.11)
EFFORT, QPROGRESSIVE_AC, PROGRESSIVE_DC = 0, 18, 19
DEC_SUCCESS, DEC_ERROR, DEC_NEED_MORE_INPUT, DEC_NEED_IMAGE_OUT_BUFFER = 0, 1, 2, 5
DEC_BASIC_INFO, DEC_FULL_IMAGE = 0x40, 0x1000
ENC_SUCCESS, ENC_NEED_MORE_OUTPUT = 0, 2
TYPE_UINT8 = 2
_BASIC_INFO_BYTES = 512  # JxlBasicInfo is 204 bytes (100 of them padding)
_XSIZE, _YSIZE, _BITS, _ORIGINAL_PROFILE, _COLOUR_CHANNELS = 1, 2, 3, 9, 13  # uint32 slots


class PixelFormat(C.Structure):
    _fields_ = [("num_channels", C.c_uint32), ("data_type", C.c_int), ("endianness", C.c_int),
                ("align", C.c_size_t)]


@lru_cache(maxsize=1)
def library():
    """The bundled libjxl (its dependencies loaded first); OSError when absent."""
    import imagecodecs
    folder = os.path.join(os.path.dirname(os.path.dirname(imagecodecs.__file__)),
                          "imagecodecs.libs")
    for pattern in ("liblcms2-*", "libbrotlicommon-*", "libbrotlidec-*", "libbrotlienc-*",
                    "libjxl_cms-*"):
        for path in glob.glob(os.path.join(folder, pattern)):
            C.CDLL(path, mode=C.RTLD_GLOBAL)
    paths = glob.glob(os.path.join(folder, "libjxl-*.so*"))
    if not paths:
        raise OSError(f"no libjxl in {folder}")
    lib = C.CDLL(paths[0])
    lib.JxlEncoderCreate.restype = C.c_void_p
    lib.JxlDecoderCreate.restype = C.c_void_p
    lib.JxlEncoderFrameSettingsCreate.restype = C.c_void_p
    lib.JxlEncoderFrameSettingsCreate.argtypes = [C.c_void_p, C.c_void_p]
    lib.JxlEncoderFrameSettingsSetOption.argtypes = [C.c_void_p, C.c_int, C.c_int64]
    lib.JxlEncoderSetFrameDistance.argtypes = [C.c_void_p, C.c_float]
    for name in ("JxlEncoderSetBasicInfo", "JxlEncoderSetColorEncoding",
                 "JxlEncoderCloseInput", "JxlEncoderDestroy", "JxlEncoderProcessOutput",
                 "JxlEncoderAddImageFrame", "JxlDecoderSubscribeEvents", "JxlDecoderSetInput",
                 "JxlDecoderProcessInput", "JxlDecoderGetBasicInfo", "JxlDecoderFlushImage",
                 "JxlDecoderImageOutBufferSize", "JxlDecoderSetImageOutBuffer",
                 "JxlDecoderDestroy"):
        getattr(lib, name).argtypes = None
    return lib


def version() -> str:
    v = library().JxlEncoderVersion()
    return f"libjxl {v // 1000000}.{v // 1000 % 1000}.{v % 1000}"


def _check(status, what):
    if status != 0:
        raise RuntimeError(f"libjxl {what} failed ({status})")


def encode(image: np.ndarray, distance: float, effort: int = 7, progressive: bool = True,
           ) -> bytes:
    """JPEG XL codestream of a uint8 RGB image at ``distance``; ``progressive``: AC coded in
    passes of shift-quantized coefficients (QPROGRESSIVE_AC), as cjxl -p does."""
    lib = library()
    img = np.ascontiguousarray(image, dtype=np.uint8)
    h, w = img.shape[:2]
    enc = C.c_void_p(lib.JxlEncoderCreate(None))
    try:
        info = (C.c_uint8 * _BASIC_INFO_BYTES)()
        lib.JxlEncoderInitBasicInfo(info)
        slots = np.frombuffer(info, np.uint32)
        slots[_XSIZE], slots[_YSIZE], slots[_BITS] = w, h, 8
        slots[_ORIGINAL_PROFILE], slots[_COLOUR_CHANNELS] = 0, 3
        _check(lib.JxlEncoderSetBasicInfo(enc, info), "basic info")
        colour = (C.c_uint8 * 512)()
        lib.JxlColorEncodingSetToSRGB(colour, 0)
        _check(lib.JxlEncoderSetColorEncoding(enc, colour), "colour encoding")
        settings = C.c_void_p(lib.JxlEncoderFrameSettingsCreate(enc, None))
        _check(lib.JxlEncoderSetFrameDistance(settings, float(distance)), "distance")
        _check(lib.JxlEncoderFrameSettingsSetOption(settings, EFFORT, int(effort)), "effort")
        if progressive:
            _check(lib.JxlEncoderFrameSettingsSetOption(settings, QPROGRESSIVE_AC, 1),
                   "progressive")
        fmt = PixelFormat(3, TYPE_UINT8, 0, 0)
        pixels = img.tobytes()
        _check(lib.JxlEncoderAddImageFrame(settings, C.byref(fmt), pixels,
                                           C.c_size_t(len(pixels))), "image frame")
        lib.JxlEncoderCloseInput(enc)
        out = bytearray()
        chunk = (C.c_uint8 * 65536)()
        while True:
            cursor = C.cast(chunk, C.POINTER(C.c_uint8))
            avail = C.c_size_t(len(chunk))
            status = lib.JxlEncoderProcessOutput(enc, C.byref(cursor), C.byref(avail))
            out += bytes(chunk)[:len(chunk) - avail.value]
            if status != ENC_NEED_MORE_OUTPUT:
                _check(status, "encoding")
                return bytes(out)
    finally:
        lib.JxlEncoderDestroy(enc)


def decode(data: bytes, partial: bool = False):
    """uint8 RGB pixels of a JPEG XL codestream; with ``partial`` a prefix of one is rendered
    from what it holds (JxlDecoderFlushImage).  None when the prefix holds too little."""
    lib = library()
    dec = C.c_void_p(lib.JxlDecoderCreate(None))
    buf = C.create_string_buffer(bytes(data), len(data))
    try:
        _check(lib.JxlDecoderSubscribeEvents(dec, DEC_BASIC_INFO | DEC_FULL_IMAGE), "events")
        _check(lib.JxlDecoderSetInput(dec, buf, C.c_size_t(len(data))), "input")
        if not partial:
            lib.JxlDecoderCloseInput(dec)
        fmt = PixelFormat(3, TYPE_UINT8, 0, 0)
        pixels, shape = None, None
        while True:
            status = lib.JxlDecoderProcessInput(dec)
            if status == DEC_BASIC_INFO:
                info = (C.c_uint8 * _BASIC_INFO_BYTES)()
                _check(lib.JxlDecoderGetBasicInfo(dec, info), "basic info")
                slots = np.frombuffer(info, np.uint32)
                shape = (int(slots[_YSIZE]), int(slots[_XSIZE]), 3)
            elif status == DEC_NEED_IMAGE_OUT_BUFFER:
                pixels = (C.c_uint8 * (shape[0] * shape[1] * 3))()
                _check(lib.JxlDecoderSetImageOutBuffer(dec, C.byref(fmt), pixels,
                                                       C.c_size_t(len(pixels))), "buffer")
            elif status == DEC_FULL_IMAGE or status == DEC_SUCCESS:
                break
            elif status == DEC_NEED_MORE_INPUT and partial:
                if pixels is None or lib.JxlDecoderFlushImage(dec) != DEC_SUCCESS:
                    return None
                break
            else:
                raise RuntimeError(f"libjxl decoding failed ({status})")
        return np.frombuffer(pixels, np.uint8).reshape(shape).copy()
    finally:
        lib.JxlDecoderDestroy(dec)
