"""Per-image anchor points on a list of images: single-layer sweeps (at each pyramid level),
JPEG XL progressive decoded from prefixes at given layer rates, HEVC simulcast at given layer
rates; and the per-image documents (one per curve) that the RD report averages.

A document: {"codec", "name", "scalable", "tool": {versions, encode, decode, param, ...},
"seconds", "images": [{"image": file name, "points": [...] or None, "target_bpp": [...]}]}.
Points are bench.anchors.rd_point dicts (bpp from the real bytes, RGB PSNR, MS-SSIM)."""
from __future__ import annotations

import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from bench.anchors import rd_point
from bench.modern import avif, hevc, jxl, rate, tools

# single-layer sweeps: stem -> (codec module, parameter sweep)
SWEEPS = {"hevc_intra": (hevc, hevc.QPS), "jxl": (jxl, jxl.DISTANCES),
          "avif": (avif, avif.CQ_LEVELS)}
# curves at given layer rates: stem -> (curve name, requirements)
MATCHED = {"jxl_progressive": (jxl.PROGRESSIVE_NAME, jxl.REQUIRES),
           "hevc_simulcast": ("HEVC-simulcast", hevc.REQUIRES)}


def absent(stem: str) -> List[str]:
    """What a curve needs and this machine lacks (empty when it can run)."""
    requires = SWEEPS[stem][0].REQUIRES if stem in SWEEPS else MATCHED[stem][1]
    gone = tools.missing(requires)
    if not gone and stem == "jxl_progressive":
        try:
            jxl.libjxl.library()
        except OSError as error:
            gone.append(f"libjxl of the imagecodecs wheel ({error})")
    return gone


def sweep(codec, image: np.ndarray, params: Sequence, ms_ssim: bool = True) -> List[Dict]:
    """One single-layer file per parameter; the points in order of increasing rate."""
    h, w = image.shape[:2]
    points = []
    for p in params:
        data = codec.encode(image, p)
        points.append(rd_point(image, codec.decode(data, h, w), len(data), ms_ssim, param=p))
    return sorted(points, key=lambda pt: pt["bpp"])


def jxl_progressive(image: np.ndarray, bpps: Sequence[float], ms_ssim: bool = True,
                    ) -> Optional[List[Dict]]:
    """ONE progressive JPEG XL file per image, its distance the smallest on the search grid
    whose file is at most the last rate; point k = the file's first floor(bpp_k * pixels / 8)
    bytes decoded (the last point: the whole file).  None when a prefix is too short to
    render (the DC of every group is needed first)."""
    h, w = image.shape[:2]
    targets = rate.target_bytes(bpps, h, w)
    distance, data = rate.match(lambda d: jxl.encode_progressive(image, d), targets[-1],
                                jxl.SEARCH_GRID, below=True)
    points = []
    for k, target in enumerate(targets, start=1):
        prefix = data[:target]
        decoded = jxl.decode_prefix(prefix)
        if decoded is None:
            return None
        points.append(rd_point(image, decoded, len(prefix), ms_ssim, layer=k,
                               target_bpp=float(bpps[k - 1]), distance=distance))
    return points


def simulcast(codec, grid: Sequence, image: np.ndarray, bpps: Sequence[float],
              ms_ssim: bool = True) -> List[Dict]:
    """Independent single-layer streams, stream k's rate the nearest on ``grid`` to bpp_k
    (log rate); point k: rate = streams 1..k summed, quality = stream k."""
    h, w = image.shape[:2]
    cache, total, points = {}, 0, []
    for k, target in enumerate(rate.target_bytes(bpps, h, w), start=1):
        param, data = rate.match(lambda p: codec.encode(image, p), target, grid, cache=cache)
        total += len(data)
        points.append(rd_point(image, codec.decode(data, h, w), total, ms_ssim, layer=k,
                               target_bpp=float(bpps[k - 1]), stream_bytes=len(data),
                               param=param))
    return points


def tool(stem: str) -> Dict:
    """Versions, command lines and parameters of a curve's codec."""
    if stem in SWEEPS:
        codec, params = SWEEPS[stem]
        return dict(codec.describe(), params=list(params))
    if stem == "jxl_progressive":
        return jxl.describe(progressive=True)
    return dict(hevc.describe(), search="per stream, the QP of 0..51 whose file is nearest "
                "the target in log rate")


def document(stem: str, name: str, tool: Dict, images: List[Dict], seconds: float,
             scalable: bool) -> Dict:
    return dict(codec=stem, name=name, scalable=scalable, tool=tool,
                seconds=round(seconds, 1), images=images)


def run_sweep(stem: str, images: Sequence[tuple], ms_ssim: bool = True,
              log: Callable = print) -> Dict:
    """Per-image sweep document over (file name, uint8 image) pairs."""
    codec, params = SWEEPS[stem]
    start = time.monotonic()
    out = []
    for name, image in images:
        out.append(dict(image=name, points=sweep(codec, image, params, ms_ssim)))
    log(f"{codec.NAME}: {len(out)} images, {time.monotonic() - start:.0f} s")
    return document(stem, codec.NAME, tool(stem), out, time.monotonic() - start, False)


def run_matched(stem: str, images: Sequence[tuple], bpps: Dict[str, Sequence[float]],
                ms_ssim: bool = True, log: Callable = print) -> Dict:
    """Per-image document of a curve at each image's own layer rates (``bpps[file name]``;
    images whose rates do not increase get points None)."""
    name = MATCHED[stem][0]
    start = time.monotonic()
    out = []
    for file_name, image in images:
        target = [float(b) for b in bpps[file_name]]
        ok = target[0] > 0 and all(b > a for a, b in zip(target, target[1:]))
        if not ok:
            pts = None
        elif stem == "jxl_progressive":
            pts = jxl_progressive(image, target, ms_ssim)
        else:
            pts = simulcast(hevc, hevc.SEARCH_GRID, image, target, ms_ssim)
        out.append(dict(image=file_name, target_bpp=target, points=pts))
    log(f"{name}: {len(out)} images, {time.monotonic() - start:.0f} s")
    return document(stem, name, tool(stem), out, time.monotonic() - start, True)

