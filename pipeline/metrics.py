"""Image quality and rate metrics: PSNR, MS-SSIM (RGB), bits per pixel."""
import math
import os

import numpy as np

# tf.image.ssim_multiscale with 5 scales and an 11-tap filter halves the image
# 4 times (rounding up) and needs the smallest scale to be at least 11 pixels:
# ceil(side / 16) >= 11, i.e. side >= 161 (checked in tests/test_metrics.py).
MS_SSIM_MIN_SIDE = 161
MS_SSIM_FILTER_SIZE = 11


def _check_same_shape(reference, decoded):
    if reference.shape != decoded.shape:
        raise ValueError(f"images differ in shape: reference {reference.shape}, "
                         f"decoded {decoded.shape}: compare an image with its own decoding")


def psnr_from_mse(mse, max_value=255.0):
    """PSNR in dB for a mean squared error; inf when mse is 0."""
    if mse < 0:
        raise ValueError(f"mean squared error must be non-negative, got {mse}")
    if mse == 0:
        return math.inf
    return 10.0 * math.log10(max_value**2 / mse)


PSNR_STRIP_ROWS = 256


def psnr(reference, decoded, max_value=255.0):
    """PSNR in dB between two images (float64 mean of the squared error); inf when identical.

    uint8 images are compared exactly in integers over strips of rows (a few bytes per
    pixel of one strip at a time instead of float64 copies of both images)."""
    reference, decoded = np.asarray(reference), np.asarray(decoded)
    _check_same_shape(reference, decoded)
    if reference.dtype != np.uint8 or decoded.dtype != np.uint8:
        difference = reference.astype(np.float64) - decoded.astype(np.float64)
        return psnr_from_mse(float(np.mean(np.square(difference))), max_value)
    squared_error = 0
    for top in range(0, reference.shape[0], PSNR_STRIP_ROWS):
        difference = (reference[top:top + PSNR_STRIP_ROWS].astype(np.int32)
                      - decoded[top:top + PSNR_STRIP_ROWS])
        squared_error += int(np.sum(np.square(difference), dtype=np.int64))
    return psnr_from_mse(squared_error / reference.size, max_value)


# MS-SSIM as tf.image.ssim_multiscale computes it (5 scales, these power factors, Gaussian
# filter of sigma 1.5, k1 = 0.01, k2 = 0.03, "valid" filtering, 2x2 average pooling after a
# symmetric pad to even sides), but through XLA-compiled functions: each scale's maps are
# made tile by tile in one compiled loop (small buffers reused from tile to tile; about 1.3x
# faster here than passes over strips of whole rows, and no call per strip), the Gaussian as
# two 1-D passes of shifted slices, the (co)variances from centred samples, the means summed
# in float64, the tiles shared out to a few threads. Bounded memory, and about 5x faster than
# eager tf.image.ssim_multiscale on 12 MP (bench/large_images.py).
MS_SSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_SIGMA = 1.5
MS_SSIM_TILE = (128, 64)  # rows, columns of the filtered maps made per loop step
# The 2x2 pooling runs over strips of rows of about this many pixels (at least 64 rows).
MS_SSIM_STRIP_PIXELS = 1 << 19
MS_SSIM_THREADS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else (os.cpu_count() or 1))
_K1, _K2 = 0.01, 0.03


def _ms_ssim_tiles(height, width, tile):
    """Tiles (rows x columns) of the "valid" maps of a height x width image."""
    border = MS_SSIM_FILTER_SIZE - 1
    return -(-(height - border) // tile[0]), -(-(width - border) // tile[1])


class _MsSsimFunctions:
    """The compiled pieces of MS-SSIM for one float dtype and tile size (traced once per
    input dtype; XLA compiles once per image shape: one per scale and image size)."""

    def __init__(self, dtype="float32", tile=MS_SSIM_TILE):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.tf = tf
        self.dtype = dtype
        self.tile = tuple(tile)
        size = MS_SSIM_FILTER_SIZE
        coords = np.arange(size) - (size - 1) / 2.0
        gauss = np.exp(np.square(coords) * (-0.5 / MS_SSIM_SIGMA ** 2))
        self.taps = [float(v) for v in gauss / gauss.sum()]
        self._compiled = {}

    def _function(self, name, input_dtype, arguments):
        """The compiled method `name`, traced once per input dtype: `arguments` lists its
        arguments, None for a (rows, width, 3) image of `input_dtype`, else a scalar's dtype."""
        key = name, str(input_dtype)
        if key not in self._compiled:
            image = self.tf.TensorSpec((None, None, 3), input_dtype)
            specs = [image if a is None else self.tf.TensorSpec((), a) for a in arguments]
            self._compiled[key] = self.tf.function(getattr(self, name), jit_compile=True,
                                                   input_signature=specs)
        return self._compiled[key]

    def _filter(self, maps, length, step, axis):
        """The Gaussian along `axis` of (4, rows, width * 3) maps, "valid": `length` outputs,
        neighbours `step` elements apart (3 along a row of interleaved RGB, 1 down a column).
        The filter is symmetric: taps o and 10 - o are added before their one product."""
        def shifted(offset):
            start = offset * step
            return maps[:, start:start + length] if axis == 1 else \
                maps[:, :, start:start + length]
        middle = len(self.taps) // 2
        total = self.taps[middle] * shifted(middle)
        for offset in range(middle):
            total += self.taps[offset] * (shifted(offset) + shifted(2 * middle - offset))
        return total

    def _tile_maps(self, x, y):
        """cs and luminance * cs, (tile rows, tile columns * 3), of a tile of the inputs with
        the filter's border (any dtype).

        The maps are laid out (4, rows, width * 3) so that every operation runs along long
        contiguous rows. The (co)variances are computed from the samples less 128 (the same
        values: they do not depend on an offset), which halves their magnitudes and so the
        float rounding of E[x^2] - E[x]^2."""
        tf = self.tf
        rows, columns = self.tile
        border = MS_SSIM_FILTER_SIZE - 1
        x, y = tf.cast(x, self.dtype) - 128.0, tf.cast(y, self.dtype) - 128.0
        maps = tf.reshape(tf.stack([x, y, x * y, tf.square(x) + tf.square(y)]),
                          [4, rows + border, (columns + border) * 3])
        mean_x, mean_y, mean_xy, mean_squares = tf.unstack(
            self._filter(self._filter(maps, columns * 3, 3, 2), rows, 1, 1))
        c1, c2 = (_K1 * 255.0) ** 2, (_K2 * 255.0) ** 2
        cs = ((mean_xy - mean_x * mean_y) * 2.0 + c2) / (
            mean_squares - tf.square(mean_x) - tf.square(mean_y) + c2)
        mean_x, mean_y = mean_x + 128.0, mean_y + 128.0
        luminance = (mean_x * mean_y * 2.0 + c1) / (tf.square(mean_x) + tf.square(mean_y) + c1)
        return cs, luminance * cs

    def _sums(self, x, y, first, last, height, width):
        """Per channel, float64: sums of cs and of luminance * cs over tiles first..last-1
        (row-major) of two height x width images of any dtype, padded to whole tiles (see
        scale_means); (2, 3)."""
        tf = self.tf
        rows, columns = self.tile
        border = MS_SSIM_FILTER_SIZE - 1
        tile_columns = _ms_ssim_tiles(height, width, self.tile)[1]
        column_of = tf.range(columns * 3) // 3

        def step(index, sums):
            top, left = (index // tile_columns) * rows, (index % tile_columns) * columns
            size = [rows + border, columns + border, 3]
            maps = tf.stack(self._tile_maps(tf.slice(x, [top, left, 0], size),
                                            tf.slice(y, [top, left, 0], size)))
            inside = tf.logical_and((tf.range(rows) + top < height - border)[:, None],
                                    (column_of + left < width - border)[None, :])
            # Column sums over the tile's rows (float32: at most a few hundred terms of at
            # most 1), then float64 over the columns and per channel.
            columns_sums = tf.reduce_sum(tf.where(inside, maps, tf.zeros_like(maps)), axis=1)
            per_channel = tf.reshape(tf.cast(columns_sums, tf.float64), [2, columns, 3])
            return index + 1, sums + tf.reduce_sum(per_channel, axis=1)
        return tf.while_loop(lambda index, _: index < last, step,
                             [first, tf.zeros([2, 3], tf.float64)])[1]

    def _downsample(self, x):
        """2x2 average of a (rows, width, 3) strip of any dtype, after a symmetric pad to even
        sides (as sums of row pairs, then of column pairs: contiguous, unlike a pooling op)."""
        tf = self.tf
        x = tf.cast(x, self.dtype)
        shape = tf.shape(x)
        x = tf.pad(x, [[0, shape[0] % 2], [0, shape[1] % 2], [0, 0]], "SYMMETRIC")
        rows, width = tf.shape(x)[0] // 2, tf.shape(x)[1] // 2
        pairs = tf.reshape(x, [rows, 2, width * 6])
        pairs = tf.reshape(pairs[:, 0] + pairs[:, 1], [rows, width, 2, 3])
        return (pairs[:, :, 0] + pairs[:, :, 1]) * 0.25

    def scale_means(self, x, y, pool):
        """Means over the image of cs and of luminance * cs (per channel), the tiles split
        into one contiguous run per thread."""
        height, width = x.shape[:2]
        border = MS_SSIM_FILTER_SIZE - 1
        tile_rows, tile_columns = _ms_ssim_tiles(height, width, self.tile)
        pad = [(0, tile_rows * self.tile[0] + border - height),
               (0, tile_columns * self.tile[1] + border - width), (0, 0)]
        sums = self._function("_sums", x.dtype, [None, None] + ["int32"] * 4)
        x, y = (self.tf.convert_to_tensor(np.pad(image, pad)) for image in (x, y))
        tiles = tile_rows * tile_columns
        runs = min(MS_SSIM_THREADS, tiles)
        bounds = [tiles * k // runs for k in range(runs + 1)]
        total = sum(pool.map(
            lambda k: sums(x, y, bounds[k], bounds[k + 1], height, width).numpy(),
            range(runs)))  # in order: the same sums every time
        return total / ((height - border) * (width - border))

    def halved(self, image, pool):
        """The next scale of `image` (any dtype), made over strips of an even number of rows
        (only the last may be odd, where the symmetric pad repeats its last row)."""
        height, width = image.shape[:2]
        output = np.empty(((height + 1) // 2, (width + 1) // 2, 3), self.dtype)
        step = 2 * max(32, MS_SSIM_STRIP_PIXELS // (2 * width))
        downsample = self._function("_downsample", image.dtype, [None])

        def halve(top):
            output[top // 2:(top + step) // 2] = downsample(image[top:top + step]).numpy()
        list(pool.map(halve, range(0, height, step)))
        return output


_ms_ssim_functions = {}


def ms_ssim(reference, decoded, dtype="float32"):
    """RGB MS-SSIM of two uint8 (H, W, 3) images, as tf.image.ssim_multiscale defines it.

    Uses max_val=255, the default 5 scales and power factors and an 11-tap
    filter. Returns None when min(H, W) < MS_SSIM_MIN_SIDE (too small for 5 scales).
    dtype "float64" computes everything in double precision (slower; a reference).
    The full-size scale is read tile by tile straight from (padded copies of) the uint8
    images, so the largest float arrays made are the quarter-size copies of each image.
    """
    from concurrent.futures import ThreadPoolExecutor  # pylint: disable=import-outside-toplevel
    reference = np.asarray(reference)
    decoded = np.asarray(decoded)
    _check_same_shape(reference, decoded)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    if dtype not in _ms_ssim_functions:
        _ms_ssim_functions[dtype] = _MsSsimFunctions(dtype)
    functions = _ms_ssim_functions[dtype]
    x, y = reference, decoded
    factors = []
    with ThreadPoolExecutor(MS_SSIM_THREADS) as pool:
        for scale in range(len(MS_SSIM_POWER_FACTORS)):
            if scale > 0:
                x, y = functions.halved(x, pool), functions.halved(y, pool)
            cs, ssim = functions.scale_means(x, y, pool)
            factors.append(cs if scale < len(MS_SSIM_POWER_FACTORS) - 1 else ssim)
    per_channel = np.prod([np.maximum(f, 0.0) ** p
                           for f, p in zip(factors, MS_SSIM_POWER_FACTORS)], axis=0)
    return float(np.mean(per_channel))


def ms_ssim_db(value):
    """MS-SSIM in dB, -10 log10(1 - value); inf when value is 1, None passes through."""
    if value is None:
        return None
    if value >= 1.0:
        return math.inf
    return -10.0 * math.log10(1.0 - value)


def bpp(num_bytes, num_pixels):
    """Bits per pixel: 8 * num_bytes / num_pixels."""
    if num_pixels <= 0:
        raise ValueError(f"number of pixels must be positive, got {num_pixels}")
    return 8.0 * num_bytes / num_pixels
