"""Image quality and rate metrics: PSNR, MS-SSIM (RGB), bits per pixel."""
import math

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
# symmetric pad to even sides), but through compiled functions (XLA for the per-scale sums),
# the Gaussian applied as two 1-D passes, the (co)variances from centred samples, and the
# per-scale means summed over strips of rows in float64: seconds instead of minutes on a
# 12 MP image, and bounded memory.
MS_SSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_SIGMA = 1.5
MS_SSIM_STRIP_ROWS = 512
_K1, _K2 = 0.01, 0.03


class _MsSsimFunctions:
    """The compiled pieces of MS-SSIM, traced once per process (any image size)."""

    def __init__(self, dtype="float32"):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.tf = tf
        self.dtype = dtype
        size = MS_SSIM_FILTER_SIZE
        coords = np.arange(size) - (size - 1) / 2.0
        gauss = np.exp(np.square(coords) * (-0.5 / MS_SSIM_SIGMA ** 2))
        self.taps = [float(v) for v in gauss / gauss.sum()]
        image = tf.TensorSpec((None, None, 3), dtype)
        # XLA fuses the filter's shifted sums and the SSIM terms into a few passes over the
        # strip; it compiles once per strip shape (two per scale and image size).
        self.sums = tf.function(self._sums, input_signature=[image, image], jit_compile=True)
        self.downsample = tf.function(self._downsample, input_signature=[image])

    def _filter(self, values, axis):
        """The Gaussian along `axis` (0: rows, 1: columns), "valid": 10 samples shorter."""
        length = self.tf.shape(values)[axis] - (len(self.taps) - 1)
        total = None
        for offset, tap in enumerate(self.taps):
            part = values[offset:offset + length] if axis == 0 else \
                values[:, offset:offset + length]
            total = tap * part if total is None else total + tap * part
        return total

    def _sums(self, x, y):
        """Per channel: sums of the contrast-structure map and of luminance * cs, in float64.

        The (co)variances are computed from the samples less 128 (the same values: they do
        not depend on an offset), which halves their magnitudes and so the float rounding
        of E[x^2] - E[x]^2."""
        tf = self.tf
        x, y = x - 128.0, y - 128.0
        stack = tf.concat([x, y, x * y, tf.square(x) + tf.square(y)], axis=-1)
        means = self._filter(self._filter(stack, 1), 0)
        mean_x, mean_y, mean_xy, mean_squares = tf.split(means, 4, axis=-1)
        c1, c2 = (_K1 * 255.0) ** 2, (_K2 * 255.0) ** 2
        cs = ((mean_xy - mean_x * mean_y) * 2.0 + c2) / (
            mean_squares - tf.square(mean_x) - tf.square(mean_y) + c2)
        mean_x, mean_y = mean_x + 128.0, mean_y + 128.0
        luminance = (mean_x * mean_y * 2.0 + c1) / (tf.square(mean_x) + tf.square(mean_y) + c1)
        return (tf.reduce_sum(tf.cast(cs, tf.float64), axis=(0, 1)),
                tf.reduce_sum(tf.cast(luminance * cs, tf.float64), axis=(0, 1)))

    def _downsample(self, x):
        tf = self.tf
        shape = tf.shape(x)
        x = tf.pad(x, [[0, shape[0] % 2], [0, shape[1] % 2], [0, 0]], "SYMMETRIC")
        return tf.nn.avg_pool2d(x[None], 2, 2, "VALID")[0]

    def scale_means(self, x, y):
        """Means over the image of cs and of luminance * cs (per channel), over row strips
        (x and y of any dtype: each strip is converted on its own)."""
        height, width = x.shape[:2]
        rows = height - MS_SSIM_FILTER_SIZE + 1  # rows of the "valid" maps
        cs_sum, ssim_sum = np.zeros(3), np.zeros(3)
        for top in range(0, rows, MS_SSIM_STRIP_ROWS):
            bottom = min(rows, top + MS_SSIM_STRIP_ROWS) + MS_SSIM_FILTER_SIZE - 1
            cs, ssim = self.sums(self.strip(x, top, bottom), self.strip(y, top, bottom))
            cs_sum += cs.numpy()
            ssim_sum += ssim.numpy()
        count = rows * (width - MS_SSIM_FILTER_SIZE + 1)
        return cs_sum / count, ssim_sum / count

    def halved(self, image):
        """The next scale of `image` (any dtype), made over strips of an even number of rows
        (only the last may be odd, where the symmetric pad repeats its last row)."""
        height, width = image.shape[:2]
        output = np.empty(((height + 1) // 2, (width + 1) // 2, 3), self.dtype)
        step = 2 * MS_SSIM_STRIP_ROWS
        for top in range(0, height, step):
            output[top // 2:(top + step) // 2] = self.downsample(
                self.strip(image, top, top + step)).numpy()
        return output

    def strip(self, image, top, bottom):
        return np.asarray(image[top:bottom], self.dtype)


_ms_ssim_functions = {}


def ms_ssim(reference, decoded, dtype="float32"):
    """RGB MS-SSIM of two uint8 (H, W, 3) images, as tf.image.ssim_multiscale defines it.

    Uses max_val=255, the default 5 scales and power factors and an 11-tap
    filter. Returns None when min(H, W) < MS_SSIM_MIN_SIDE (too small for 5 scales).
    dtype "float64" computes everything in double precision (slower; a reference).
    The full-size scale is read in strips of rows straight from the uint8 images, so the
    largest array made is a quarter-size float copy of each image.
    """
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
    for scale in range(len(MS_SSIM_POWER_FACTORS)):
        if scale > 0:
            x, y = functions.halved(x), functions.halved(y)
        cs, ssim = functions.scale_means(x, y)
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
