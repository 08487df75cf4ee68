"""Classic-codec anchors through Pillow: JPEG 2000 (quality layers, single layer, resolution
levels), JPEG and WebP.

Every function returns a list of per-point dicts

    {"bpp": file bytes * 8 / pixels, "psnr": dB, "ms_ssim": raw value or None, "bytes": int, ...}

(``ms_ssim`` is None for images under ``pipeline.metrics.MS_SSIM_MIN_SIDE`` pixels a side or
when called with ``ms_ssim=False``; MS-SSIM is the slow part.)

computed from the decoded 8-bit RGB pixels with ``pipeline.metrics`` (the same metric code as the
evaluation scripts).  Rates are always real byte counts of a file that decodes to exactly the
pixels that were measured; nothing is estimated from a rate target.

JPEG 2000 settings (see the project brief ANCHORS.md, not in this repository, for why): raw
codestream (``.j2k``, no JP2 boxes), ``irreversible=True`` (9/7 wavelet), ``mct=1``
(RGB->YCbCr; Pillow's default mct=0 is about 3 dB worse and would be a straw man), ``quality_mode="rates"`` with compression ratios
``24 / bpp`` (24 bits per RGB pixel), OpenJPEG's default 5 decomposition levels and 64x64
code-blocks, one tile.

How the rate of a prefix of one codestream is measured (layers or resolutions)
-----------------------------------------------------------------------------
The codestream is encoded once with PLT markers (packet lengths, ``plt=True``).  The PLT
segments give the byte length of every packet; with a single tile and LRCP (or RLCP)
progression the packet order is known from the SIZ/COD markers, so the byte offset where
layer k (or resolution r) ends is exact.  The PLT segments are then stripped (they are
optional, informational markers) and the stream is *truncated* after the needed packets, its
tile-part length (Psot) patched and an EOC marker appended.  That truncated codestream is a
complete, standalone, valid JPEG 2000 file; its size in bytes (main header + tile-part header
+ the packets + 2 bytes EOC) is the reported rate, and its decoded pixels are what the metrics
are computed on.  ``verify=True`` additionally decodes the *full* codestream with the layer
count (or ``reduce``) forced and checks the pixels are identical to the truncated file's.
The PLT-stripped full stream is byte-identical to what OpenJPEG writes with ``plt=False``
(checked on all 24 Kodak images and in tests/test_bench_tools.py), so asking for PLT does not
change the coding.

Pillow 13 ignores ``im.layers`` unless ``im.reduce`` is non-zero (``load()`` only rewrites the
tile arguments then), and for ``reduce`` it sizes the output as round(size / 2**r) where
JPEG 2000 gives ceil (odd sizes then fail), so ``_j2k_decode`` sets the size and the tile
arguments (codec, reduce, layers, fd, length) itself after ``Image.open``.

Kodak check (24 images, 4 layers for 0.25/0.5/0.75/1.0 bpp, means of per-image values):
layered 0.249/0.499/0.749/0.998 bpp -> 29.25/32.16/34.27/35.94 dB; single-layer files
0.249/0.499/0.749/0.999 bpp -> 29.25/32.18/34.31/36.00 dB, as in the brief ANCHORS.md.
"""
from __future__ import annotations

import io
import struct
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageFile

from pipeline import metrics
from codec import image as image_lib

BITS_PER_PIXEL_RGB = 24.0
_PROGRESSIONS = {0: "LRCP", 1: "RLCP", 2: "RPCL", 3: "PCRL", 4: "CPRL"}

# ----------------------------------------------------------------------------------------------
# Helpers shared by all codecs


def _as_uint8_rgb(image) -> np.ndarray:
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image, got {arr.dtype}")
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def rd_point(ref: np.ndarray, dec: np.ndarray, num_bytes: int, with_ms_ssim: bool = True,
           **extra) -> Dict:
    """One RD point from reference and decoded uint8 RGB pixels and a real byte count.

    ``ms_ssim`` is None when ``with_ms_ssim`` is False or the image is smaller than
    ``metrics.MS_SSIM_MIN_SIDE``."""
    if dec.shape != ref.shape:
        raise ValueError(f"decoded shape {dec.shape} != reference shape {ref.shape}")
    num_pixels = ref.shape[0] * ref.shape[1]
    ms = metrics.ms_ssim(ref, dec) if with_ms_ssim else None
    point = {
        "bpp": float(metrics.bpp(num_bytes, num_pixels)),
        "psnr": float(metrics.psnr(ref, dec)),
        "ms_ssim": None if ms is None else float(ms),
        "bytes": int(num_bytes),
    }
    point.update(extra)
    return point


def _decode_rgb(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


# ----------------------------------------------------------------------------------------------
# JPEG 2000 codestream parsing (single tile; enough for what OpenJPEG writes through Pillow)


def _j2k_encode(image: np.ndarray, quality_layers: Optional[Sequence[float]], progression: str,
                plt: bool = True) -> bytes:
    """Raw J2K codestream with the honest-anchor settings; ``quality_layers`` are ratios."""
    buf = io.BytesIO()
    kwargs = dict(irreversible=True, mct=1, progression=progression, no_jp2=True, plt=plt)
    if quality_layers is not None:
        kwargs.update(quality_mode="rates", quality_layers=[float(q) for q in quality_layers])
    Image.fromarray(image, "RGB").save(buf, format="JPEG2000", **kwargs)
    return buf.getvalue()


def _ratio(bpp: float) -> float:
    if not bpp > 0:
        raise ValueError(f"target bpp must be > 0, got {bpp}")
    return BITS_PER_PIXEL_RGB / float(bpp)


class J2KCodestream:
    """Parsed single-tile J2K codestream with the byte length of every packet (from PLT).

    Attributes: ``size`` (x1, y1), ``origin`` (x0, y0), ``num_components``, ``num_layers``,
    ``progression`` (e.g. "LRCP"), ``num_levels`` (wavelet decomposition levels),
    ``precinct_exps`` [(PPx, PPy)] per resolution, ``header`` (main header + tile-part header,
    PLT removed, Psot to be patched), ``packets`` list of bytes, ``packet_ids`` list of
    (layer, resolution, component, precinct) in stream order.
    """

    def __init__(self, data: bytes):
        if data[:4] != b"\xff\x4f\xff\x51":
            raise ValueError("not a raw J2K codestream (SOC+SIZ expected)")
        pos = 2
        main = bytearray(data[:2])
        cod = None
        siz = None
        while True:
            marker, = struct.unpack(">H", data[pos:pos + 2])
            if marker == 0xFF90:  # SOT
                break
            length, = struct.unpack(">H", data[pos + 2:pos + 4])
            seg = data[pos:pos + 2 + length]
            if marker == 0xFF51:
                siz = seg
            elif marker == 0xFF52:
                cod = seg
            elif marker in (0xFF53, 0xFF5D, 0xFF5F, 0xFF55, 0xFF57, 0xFF60):
                # COC, QCC (harmless) / POC, TLM, PLM, PPM: not expected from Pillow
                if marker not in (0xFF5D, 0xFF53):
                    raise ValueError(f"unsupported main-header marker 0x{marker:04X}")
                if marker == 0xFF53:
                    raise ValueError("COC marker (per-component coding style) not supported")
            main += seg
            pos += 2 + length
        if siz is None or cod is None:
            raise ValueError("SIZ/COD marker missing")
        (_, _, _rsiz, xsiz, ysiz, xosiz, yosiz, xtsiz, ytsiz, xtosiz, ytosiz,
         csiz) = struct.unpack(">HHHIIIIIIIIH", siz[:40])
        if xtosiz + xtsiz < xsiz or ytosiz + ytsiz < ysiz:
            raise ValueError("more than one tile: not supported")
        for c in range(csiz):
            _ssiz, xr, yr = struct.unpack(">BBB", siz[40 + 3 * c:43 + 3 * c])
            if xr != 1 or yr != 1:
                raise ValueError("subsampled components not supported")
        self.size = (xsiz, ysiz)
        self.origin = (xosiz, yosiz)
        self.num_components = csiz
        scod = cod[4]
        prog, layers, _mct = struct.unpack(">BHB", cod[5:9])
        self.progression = _PROGRESSIONS[prog]
        self.num_layers = layers
        self.num_levels = cod[9]
        if scod & 1:
            exps = [(b & 0x0F, b >> 4) for b in cod[14:14 + self.num_levels + 1]]
        else:
            exps = [(15, 15)] * (self.num_levels + 1)
        self.precinct_exps = exps

        # Tile-part(s): exactly one tile-part expected.
        sot_pos = pos
        _lsot, isot, psot, tpsot, tnsot = struct.unpack(">HHIBB", data[pos + 2:pos + 12])
        if isot != 0 or tpsot != 0 or tnsot not in (0, 1):
            raise ValueError("multiple tile-parts not supported")
        tile_end = len(data) - 2 if psot == 0 else sot_pos + psot
        if data[tile_end:tile_end + 2] != b"\xff\xd9":
            raise ValueError("expected EOC right after the single tile-part")
        tile_header = bytearray(data[pos:pos + 12])
        pos += 12
        lengths: List[int] = []
        while True:
            marker, = struct.unpack(">H", data[pos:pos + 2])
            if marker == 0xFF93:  # SOD
                tile_header += data[pos:pos + 2]
                pos += 2
                break
            length, = struct.unpack(">H", data[pos + 2:pos + 4])
            if marker == 0xFF58:  # PLT: Zplt then variable-length packet lengths
                body = data[pos + 5:pos + 2 + length]
                value = 0
                for byte in body:
                    value = (value << 7) | (byte & 0x7F)
                    if not byte & 0x80:
                        lengths.append(value)
                        value = 0
            else:
                tile_header += data[pos:pos + 2 + length]
            pos += 2 + length
        body = data[pos:tile_end]
        if not lengths:
            raise ValueError("no PLT marker: encode with plt=True")
        if sum(lengths) != len(body):
            raise ValueError(f"PLT lengths sum {sum(lengths)} != tile data {len(body)} bytes")
        self.header = bytes(main) + bytes(tile_header)
        self._psot_offset = len(main) + 6  # Psot inside SOT (SOT marker at len(main))
        self._sot_offset = len(main)
        self.packets = []
        off = 0
        for n in lengths:
            self.packets.append(body[off:off + n])
            off += n
        self.packet_ids = self._packet_order()
        if len(self.packet_ids) != len(self.packets):
            raise ValueError(f"expected {len(self.packet_ids)} packets, PLT lists "
                             f"{len(self.packets)}")

    def _precincts(self, r: int) -> int:
        d = self.num_levels - r
        x0 = -(-self.origin[0] // (1 << d))
        y0 = -(-self.origin[1] // (1 << d))
        x1 = -(-self.size[0] // (1 << d))
        y1 = -(-self.size[1] // (1 << d))
        if x1 <= x0 or y1 <= y0:
            return 0
        ppx, ppy = self.precinct_exps[r]
        nw = -(-x1 // (1 << ppx)) - x0 // (1 << ppx)
        nh = -(-y1 // (1 << ppy)) - y0 // (1 << ppy)
        return nw * nh

    def _packet_order(self) -> List[Tuple[int, int, int, int]]:
        L, R, C = self.num_layers, self.num_levels + 1, self.num_components
        P = [self._precincts(r) for r in range(R)]
        if self.progression == "LRCP":
            return [(l, r, c, p) for l in range(L) for r in range(R) for c in range(C)
                    for p in range(P[r])]
        if self.progression == "RLCP":
            return [(l, r, c, p) for r in range(R) for l in range(L) for c in range(C)
                    for p in range(P[r])]
        raise ValueError(f"progression {self.progression} not supported (use LRCP or RLCP)")

    def full(self) -> bytes:
        """The whole codestream without PLT markers."""
        return self.truncated(len(self.packets))

    def truncated(self, num_packets: int) -> bytes:
        """Valid standalone codestream with the first ``num_packets`` packets, then EOC."""
        body = b"".join(self.packets[:num_packets])
        header = bytearray(self.header)
        psot = len(header) - self._sot_offset + len(body)
        header[self._psot_offset:self._psot_offset + 4] = struct.pack(">I", psot)
        return bytes(header) + body + b"\xff\xd9"

    def prefix_length(self, keep) -> int:
        """Number of leading packets that are exactly the packets with ``keep(id)`` true.

        Raises if the wanted packets are not a prefix of the stream (wrong progression)."""
        flags = [bool(keep(pid)) for pid in self.packet_ids]
        n = sum(flags)
        if not all(flags[:n]):
            raise ValueError("wanted packets are not a prefix of the codestream")
        return n


def _j2k_decode(data: bytes, layers: int = 0, reduce: int = 0) -> np.ndarray:
    """Decode a J2K codestream; ``layers`` > 0 forces the number of quality layers decoded,
    ``reduce`` > 0 decodes at 1/2**reduce resolution.

    Pillow 13 only forwards ``layers`` to OpenJPEG when ``reduce`` is non-zero, and for
    ``reduce`` it computes the output size as round(size / 2**reduce) where JPEG 2000 gives
    ceil(size / 2**reduce) (OpenJPEG then fails on odd sizes). So the image size and the tile
    arguments (codec, reduce, layers, fd, length) are set here after ``Image.open``."""
    im = Image.open(io.BytesIO(data))
    try:
        if layers or reduce:
            w, h = im.size
            f = 1 << int(reduce)
            size = (-(-w // f), -(-h // f))  # image origin is (0, 0) in what Pillow writes
            t = im.tile[0]
            args = (t[3][0], int(reduce), int(layers), t[3][3], t[3][4])
            im._size = size
            im.tile = [ImageFile._Tile(t[0], (0, 0, *size), t[2], args)]
        im.load()  # self._reduce stays 0, so Pillow's load() leaves size and tile alone
        return np.asarray(im.convert("RGB"))
    finally:
        im.close()


# ----------------------------------------------------------------------------------------------
# JPEG 2000 anchors


# Full-resolution bpp targets of the JPEG 2000 resolution-level (RLCP) anchors of bench.rd.
RESOLUTION_TARGETS_BPP = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)


def jpeg2000_layered(image, bpps: Sequence[float], verify: bool = False,
                     ms_ssim: bool = True) -> List[Dict]:
    """Quality-scalable JPEG 2000: ONE codestream with ``len(bpps)`` quality layers.

    Encoded with irreversible=True, mct=1, quality_mode="rates", quality_layers=[24/b for b in
    bpps] (cumulative rates, increasing), LRCP progression.  Point k (1-based) is the image
    decoded from the codestream *truncated after layer k* (LRCP: all packets of layers 1..k
    come first).  Its ``bytes`` is the size of that truncated, standalone, valid codestream
    (main header + tile-part header + layer-1..k packets + EOC; PLT markers used to find the
    packet boundaries are stripped), so the last point's size is the whole file's.  See the
    module docstring.  ``verify=True`` also decodes the full codestream with the layer count
    forced to k and checks that the pixels are identical.

    Each point also has "layer" (k) and "target_bpp".
    """
    img = _as_uint8_rgb(image)
    bpps = [float(b) for b in bpps]
    if not bpps or any(b2 <= b1 for b1, b2 in zip(bpps, bpps[1:])):
        raise ValueError(f"bpps must be a non-empty strictly increasing list, got {bpps}")
    cs = J2KCodestream(_j2k_encode(img, [_ratio(b) for b in bpps], "LRCP", plt=True))
    if cs.num_layers != len(bpps):
        raise RuntimeError(f"encoder wrote {cs.num_layers} layers, expected {len(bpps)}")
    full = cs.full() if verify else None
    points = []
    for k in range(1, len(bpps) + 1):
        n = cs.prefix_length(lambda pid: pid[0] < k)
        data = cs.truncated(n)
        dec = _j2k_decode(data)
        if verify:
            forced = _j2k_decode(full, layers=k)
            if not np.array_equal(forced, dec):
                raise AssertionError(f"layer {k}: truncated stream and layers={k} decode differ")
        points.append(rd_point(img, dec, len(data), ms_ssim, layer=k, target_bpp=bpps[k - 1]))
    return points


def jpeg2000_single(image, bpp: float, ms_ssim: bool = True) -> Dict:
    """Single-layer JPEG 2000 file at ``bpp`` (same settings as the layered anchor); the rate
    is the size of the raw codestream as written by OpenJPEG (no PLT, no JP2 boxes)."""
    img = _as_uint8_rgb(image)
    data = _j2k_encode(img, [_ratio(bpp)], "LRCP", plt=False)
    return rd_point(img, _j2k_decode(data), len(data), ms_ssim, target_bpp=float(bpp))


def jpeg2000_single_sweep(image, bpps: Iterable[float], ms_ssim: bool = True) -> List[Dict]:
    """One single-layer file per target rate (the non-scalable JPEG 2000 curve)."""
    return [jpeg2000_single(image, b, ms_ssim) for b in bpps]


def jpeg2000_resolution_levels(image, levels: int = 3, target_bpp: Optional[float] = None,
                               verify: bool = False, ms_ssim: bool = True) -> List[Dict]:
    """Spatially scalable JPEG 2000: ONE codestream decoded at ``levels`` resolutions.

    The codestream (single layer, irreversible, mct=1, RLCP progression so that resolutions
    come first; ``target_bpp`` sets the rate of the full-resolution codestream, None = no rate
    limit) is decoded with reduce = levels-1, ..., 0 (lowest resolution first).  Point j is
    compared against ``codec.image.downsample(image, pyramid_sizes(h, w, levels)[j])``.
    Its ``bytes`` is the size of the codestream truncated after the packets of the resolutions
    needed for that reduce (a valid standalone file, measured as in ``jpeg2000_layered``) and
    its ``bpp`` is bytes*8 over *that level's* pixels.  ``verify=True`` also decodes the full
    codestream with ``reduce`` and checks that the pixels are identical.

    Each point also has "reduce", "height", "width", "target_bpp".
    """
    img = _as_uint8_rgb(image)
    h, w = img.shape[:2]
    ratios = None if target_bpp is None else [_ratio(target_bpp)]
    cs = J2KCodestream(_j2k_encode(img, ratios, "RLCP", plt=True))
    if levels < 1 or levels - 1 > cs.num_levels:
        raise ValueError(f"levels={levels} needs {levels - 1} wavelet levels, stream has "
                         f"{cs.num_levels}")
    sizes = image_lib.pyramid_sizes(h, w, levels)
    full = cs.full() if verify else None
    points = []
    for j, (lh, lw) in enumerate(sizes):
        reduce = levels - 1 - j
        n = cs.prefix_length(lambda pid: pid[1] <= cs.num_levels - reduce)
        data = cs.truncated(n)
        # The truncated stream lacks the higher resolutions, so it must be decoded with the
        # same reduce (OpenJPEG would otherwise reconstruct them with zero detail bands).
        dec = _j2k_decode(data, reduce=reduce)
        if verify and not np.array_equal(dec, _j2k_decode(full, reduce=reduce)):
            raise AssertionError(f"reduce={reduce}: truncated and full-stream decodes differ")
        if dec.shape[:2] != (lh, lw):
            raise RuntimeError(f"decoded size {dec.shape[:2]} != pyramid size {(lh, lw)}")
        ref = img if reduce == 0 else np.asarray(image_lib.downsample(img, (lh, lw)))
        points.append(rd_point(ref, dec, len(data), ms_ssim, reduce=reduce, height=lh, width=lw,
                             target_bpp=None if target_bpp is None else float(target_bpp)))
    return points


# ----------------------------------------------------------------------------------------------
# JPEG / WebP


def _pillow_sweep(img: np.ndarray, fmt: str, qualities: Iterable[int], ms_ssim: bool,
                  **kwargs) -> List[Dict]:
    points = []
    for q in qualities:
        buf = io.BytesIO()
        Image.fromarray(img, "RGB").save(buf, format=fmt, quality=int(q), **kwargs)
        data = buf.getvalue()
        points.append(rd_point(img, _decode_rgb(data), len(data), ms_ssim, quality=int(q)))
    return points


def jpeg_sweep(image, qualities: Iterable[int], ms_ssim: bool = True) -> List[Dict]:
    """Baseline JPEG (libjpeg via Pillow, 4:2:0 chroma subsampling, optimized Huffman tables)
    at each quality; rate = file size (JFIF)."""
    return _pillow_sweep(_as_uint8_rgb(image), "JPEG", qualities, ms_ssim, subsampling="4:2:0",
                         optimize=True)


def webp_sweep(image, qualities: Iterable[int], ms_ssim: bool = True) -> List[Dict]:
    """Lossy WebP (libwebp via Pillow, method=6) at each quality; rate = file size (RIFF)."""
    return _pillow_sweep(_as_uint8_rgb(image), "WEBP", qualities, ms_ssim, method=6)


def average_points(per_image: Sequence[Sequence[Dict]]) -> List[Dict]:
    """Average point-wise over images (bpp, psnr, ms_ssim, bytes): the usual Kodak protocol
    (mean of per-image PSNR, not PSNR of the mean MSE).  Non-numeric/None values are dropped
    from the mean (ms_ssim None on an image makes the mean None)."""
    if not per_image:
        raise ValueError("no images to average")
    n_points = {len(p) for p in per_image}
    if len(n_points) != 1:
        raise ValueError("all images must have the same number of points")
    out = []
    for i in range(n_points.pop()):
        pts = [p[i] for p in per_image]
        avg = {}
        for key in ("bpp", "psnr", "ms_ssim", "bytes"):
            vals = [p.get(key) for p in pts]
            avg[key] = None if any(v is None for v in vals) else float(np.mean(vals))
        for key, val in pts[0].items():
            if key not in avg and all(p.get(key) == val for p in pts):
                avg[key] = val
        out.append(avg)
    return out
