"""Matching a target rate by a codec parameter: a binary search over an ordered parameter
grid along which the file size grows (monotone codecs), with every encoding cached."""
from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Tuple


def geometric_grid(low: float, high: float, ratio: float) -> Tuple[float, ...]:
    """low, low*ratio, ... up to high (inclusive), rounded to 4 significant digits."""
    out, value = [], float(low)
    while value <= high * (1 + 1e-9):
        out.append(float(f"{value:.4g}"))
        value *= ratio
    return tuple(dict.fromkeys(out))


def match(encode: Callable[[object], bytes], target_bytes: float, grid: Sequence,
          below: bool = False, cache: Dict = None) -> Tuple[object, bytes]:
    """(parameter, encoded bytes) of the grid entry whose size is nearest ``target_bytes`` in
    log rate, or with ``below`` the largest one not above it (the smallest entry when even
    that is above).  ``grid`` is ordered so that the size grows along it (e.g. QPs from 51
    down to 0, JPEG XL distances from large to small); ``cache`` ({param: bytes}) is
    filled and reused across calls on the same image."""
    if not grid:
        raise ValueError("empty parameter grid")
    if not target_bytes > 0:
        raise ValueError(f"target must be > 0 bytes, got {target_bytes}")
    cache = {} if cache is None else cache

    def size(i):
        if grid[i] not in cache:
            cache[grid[i]] = encode(grid[i])
        return len(cache[grid[i]])

    lo, hi = 0, len(grid) - 1  # first index whose size reaches the target
    if size(hi) < target_bytes:
        lo = hi
    else:
        while lo < hi:
            mid = (lo + hi) // 2
            if size(mid) >= target_bytes:
                hi = mid
            else:
                lo = mid + 1
    candidates = [i for i in (lo - 1, lo) if 0 <= i < len(grid)]
    if below:
        fits = [i for i in candidates if size(i) <= target_bytes]
        best = max(fits, key=size) if fits else 0
    else:
        best = min(candidates, key=lambda i: abs(math.log(size(i) / target_bytes)))
    return grid[best], cache[grid[best]]


def target_bytes(bpps: Sequence[float], height: int, width: int) -> list:
    """Byte counts of rates in bpp on an image: floor(bpp * pixels / 8)."""
    return [int(b * height * width / 8) for b in bpps]
