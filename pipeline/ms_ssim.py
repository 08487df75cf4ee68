"""RGB MS-SSIM as tf.image.ssim_multiscale defines it, compiled with Numba.

The definition: 5 scales with the power factors below, a Gaussian filter of 11 taps and
sigma 1.5, k1 = 0.01, k2 = 0.03, "valid" filtering, 2x2 average pooling after a symmetric pad
to even sides; per channel, the product over scales of the mean contrast-structure term (the
mean SSIM at the last scale), raised to the power factors; then the mean over channels.

How it runs: each scale streams down the image in fixed bands of output rows, shared out to a
few threads. A band keeps a ring of the last 11 rows of the four maps the filter needs (x, y,
x*y and x^2 + y^2, laid out along each row as interleaved RGB), filters them down the
columns, then along the row, and adds the terms of the row into column accumulators (at most
`BAND_ROWS` terms each); the bands' sums are added in float64, in order, so the result does
not depend on the number of threads. Working memory is a few rows per thread, and the
full-size scale is read straight from the uint8 images. The full-size scale runs in float32,
the smaller ones in float64 (see ms_ssim).
"""
import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
FILTER_SIZE = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
# 5 scales halve the image 4 times (rounding up) and the smallest must hold the filter:
# ceil(side / 16) >= 11, i.e. side >= 161 (tests/test_metrics.py checks TensorFlow's bound).
MIN_SIDE = 161
BAND_ROWS = 64  # output rows per band (a unit of work for one thread)
THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
              else (os.cpu_count() or 1))

_JIT = dict(cache=True, nogil=True, error_model="numpy")  # no Python division checks


def gaussian_taps(dtype):
    """The normalised 11-tap Gaussian of sigma 1.5, in `dtype`."""
    coords = np.arange(FILTER_SIZE) - (FILTER_SIZE - 1) / 2.0
    gauss = np.exp(np.square(coords) * (-0.5 / SIGMA ** 2))
    return (gauss / gauss.sum()).astype(dtype)


@numba.njit(**_JIT)
def _map_row(x, y, row, offset, out):
    """The four maps of image row `row` (samples less `offset`, which leaves the (co)variances
    unchanged and halves the float rounding of E[x^2] - E[x]^2) into out (4, width * 3)."""
    width3 = out.shape[1]
    x_row, y_row = x[row].reshape(width3), y[row].reshape(width3)
    for j in range(width3):
        out[0, j] = x_row[j]  # the store converts to the working dtype
        out[1, j] = y_row[j]
        a, b = out[0, j] - offset, out[1, j] - offset
        out[0, j], out[1, j] = a, b
        out[2, j] = a * b
        out[3, j] = a * a + b * b


@numba.njit(fastmath={"contract"}, **_JIT)
def _band_sums(x, y, first, last, taps, constants, ring, down, along, sums):
    """Per channel, sums of cs and of luminance * cs over output rows first..last-1 of two
    (height, width, 3) images, into sums (2, 3) float64. ring (11, 4, width * 3), down
    (4, width * 3) and along (2 + 4, (width - 10) * 3) are scratch buffers of the working
    dtype; constants holds c1, c2, the sample offset and 2 in it.

    The 11 taps are written out (one pass over memory per filter, which is what lets the
    compiler vectorize it), each symmetric pair sharing one product."""
    size = FILTER_SIZE
    t0, t1, t2, t3, t4, t5 = taps[0], taps[1], taps[2], taps[3], taps[4], taps[5]
    c1, c2, offset, two = constants[0], constants[1], constants[2], constants[3]
    along[:2] = 0
    for k in range(size - 1):
        _map_row(x, y, first + k, offset, ring[(first + k) % size])
    for row in range(first, last):
        _map_row(x, y, row + size - 1, offset, ring[(row + size - 1) % size])
        r0, r1, r2, r3, r4, r5 = (row % size, (row + 1) % size, (row + 2) % size,
                                  (row + 3) % size, (row + 4) % size, (row + 5) % size)
        r6, r7, r8, r9, r10 = ((row + 6) % size, (row + 7) % size, (row + 8) % size,
                               (row + 9) % size, (row + 10) % size)
        for m in range(4):  # down the columns
            for j in range(ring.shape[2]):
                down[m, j] = (t5 * ring[r5, m, j] + t0 * (ring[r0, m, j] + ring[r10, m, j])
                              + t1 * (ring[r1, m, j] + ring[r9, m, j])
                              + t2 * (ring[r2, m, j] + ring[r8, m, j])
                              + t3 * (ring[r3, m, j] + ring[r7, m, j])
                              + t4 * (ring[r4, m, j] + ring[r6, m, j]))
        for m in range(4):  # along the row: neighbours in interleaved RGB are 3 apart
            for j in range(along.shape[1]):
                along[2 + m, j] = (t5 * down[m, j + 15] + t0 * (down[m, j] + down[m, j + 30])
                                   + t1 * (down[m, j + 3] + down[m, j + 27])
                                   + t2 * (down[m, j + 6] + down[m, j + 24])
                                   + t3 * (down[m, j + 9] + down[m, j + 21])
                                   + t4 * (down[m, j + 12] + down[m, j + 18]))
        for j in range(along.shape[1]):
            mean_x, mean_y = along[2, j], along[3, j]
            cs = ((along[4, j] - mean_x * mean_y) * two + c2) / (
                along[5, j] - mean_x * mean_x - mean_y * mean_y + c2)
            mean_x, mean_y = mean_x + offset, mean_y + offset
            luminance = (mean_x * mean_y * two + c1) / (mean_x * mean_x + mean_y * mean_y + c1)
            along[0, j] += cs
            along[1, j] += luminance * cs
    sums[:] = 0.0
    for j in range(along.shape[1]):
        sums[0, j % 3] += along[0, j]
        sums[1, j % 3] += along[1, j]


@numba.njit(**_JIT)
def _halve_rows(image, out, first, last):
    """Rows first..last-1 of the 2x2 average of `image` after a symmetric pad to even sides
    (which repeats the last row or column of an odd side)."""
    height, width = image.shape[0], image.shape[1]
    for i in range(first, last):
        top, bottom = 2 * i, min(2 * i + 1, height - 1)
        for j in range(out.shape[1]):
            left, right = 2 * j, min(2 * j + 1, width - 1)
            for c in range(3):
                out[i, j, c] = image[top, left, c]  # converts to the working dtype
                out[i, j, c] = ((out[i, j, c] + image[bottom, left, c])
                                + (image[top, right, c] + image[bottom, right, c])) * 0.25


class _Scales:
    """The per-scale steps, each shared out to a thread pool."""

    def __init__(self, pool):
        self.pool = pool

    def means(self, x, y, dtype):
        """Per channel, the means over the valid positions of cs and luminance * cs, computed
        in `dtype`; (2, 3) float64."""
        height, width = x.shape[:2]
        rows, valid = height - FILTER_SIZE + 1, width - FILTER_SIZE + 1
        taps = gaussian_taps(dtype)
        constants = np.array([(K1 * 255.0) ** 2, (K2 * 255.0) ** 2, 128.0, 2.0], dtype)

        def band(first):
            ring = np.empty((FILTER_SIZE, 4, width * 3), dtype)
            down = np.empty((4, width * 3), dtype)
            along = np.empty((6, valid * 3), dtype)
            sums = np.empty((2, 3), np.float64)
            _band_sums(x, y, first, min(rows, first + BAND_ROWS), taps, constants, ring, down,
                       along, sums)
            return sums
        total = sum(self.pool.map(band, range(0, rows, BAND_ROWS)))  # in order: reproducible
        return total / (rows * valid)

    def halved(self, image):
        """The next scale of `image`, float32: exact for uint8 input, since 4 halvings leave
        at most 8 + 8 significant bits."""
        out = np.empty(((image.shape[0] + 1) // 2, (image.shape[1] + 1) // 2, 3), np.float32)
        list(self.pool.map(
            lambda first: _halve_rows(image, out, first, min(out.shape[0], first + BAND_ROWS)),
            range(0, out.shape[0], BAND_ROWS)))
        return out


def ms_ssim(reference, decoded, dtype="float32"):
    """RGB MS-SSIM of two (H, W, 3) uint8 images, as tf.image.ssim_multiscale defines it with
    max_val 255 and an 11-tap filter. None when min(H, W) < MIN_SIDE (too small for 5 scales).

    dtype is the precision of the full-size scale: "float32" (the default) is within 4e-8 of the
    definition on Kodak (JPEG copies), "float64" is a slower reference. The smaller scales always run in
    float64: their float32 rounding, the same at every pixel of a flat area, moved the result
    by up to 1.4e-6 (kodim20), for a quarter of the time."""
    x, y = np.ascontiguousarray(reference), np.ascontiguousarray(decoded)
    if x.shape != y.shape or x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"MS-SSIM needs two (height, width, 3) images of one shape, got "
                         f"{x.shape} and {y.shape}")
    if min(x.shape[:2]) < MIN_SIDE:
        return None
    factors = []
    with ThreadPoolExecutor(THREADS) as pool:
        scales = _Scales(pool)
        for scale in range(len(POWER_FACTORS)):
            if scale > 0:
                x, y = scales.halved(x), scales.halved(y)
            cs, ssim = scales.means(x, y, dtype if scale == 0 else np.float64)
            factors.append(cs if scale < len(POWER_FACTORS) - 1 else ssim)
    per_channel = np.prod([np.maximum(f, 0.0) ** p for f, p in zip(factors, POWER_FACTORS)],
                          axis=0)
    return float(np.mean(per_channel))
