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


def psnr(reference, decoded, max_value=255.0):
    """PSNR in dB between two uint8 images (computed in float64); inf when identical."""
    reference = np.asarray(reference, dtype=np.float64)
    decoded = np.asarray(decoded, dtype=np.float64)
    _check_same_shape(reference, decoded)
    return psnr_from_mse(float(np.mean(np.square(reference - decoded))), max_value)


# MS-SSIM as tf.image.ssim_multiscale computes it (5 scales, these power factors, Gaussian
# filter of sigma 1.5, k1 = 0.01, k2 = 0.03, "valid" filtering, 2x2 average pooling after a
# symmetric pad to even sides), but through compiled functions with relaxed shapes, the
# Gaussian applied as two 1-D passes, and the per-scale means summed over strips of rows in
# float64: seconds instead of minutes on a 12 MP image, and bounded memory.
MS_SSIM_POWER_FACTORS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_SIGMA = 1.5
MS_SSIM_STRIP_ROWS = 512
_K1, _K2 = 0.01, 0.03


class _MsSsimFunctions:
    """The compiled pieces of MS-SSIM, traced once per process (any image size)."""

    def __init__(self, dtype="float32"):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.tf = tf
        size = MS_SSIM_FILTER_SIZE
        coords = tf.range(size, dtype=dtype) - (size - 1) / 2.0
        gauss = tf.nn.softmax(tf.square(coords) * (-0.5 / MS_SSIM_SIGMA ** 2))
        channels = 12  # x, y, x*y, x^2 + y^2 for 3 colour channels
        self.horizontal = tf.tile(tf.reshape(gauss, (1, size, 1, 1)), (1, 1, channels, 1))
        self.vertical = tf.tile(tf.reshape(gauss, (size, 1, 1, 1)), (1, 1, channels, 1))
        image = tf.TensorSpec((None, None, 3), dtype)
        self.sums = tf.function(self._sums, input_signature=[image, image])
        self.downsample = tf.function(self._downsample, input_signature=[image])

    def _sums(self, x, y):
        """Per channel: sums of the contrast-structure map and of luminance * cs, in float64."""
        tf = self.tf
        stack = tf.concat([x, y, x * y, tf.square(x) + tf.square(y)], axis=-1)[None]
        means = tf.nn.depthwise_conv2d(stack, self.horizontal, [1, 1, 1, 1], "VALID")
        means = tf.nn.depthwise_conv2d(means, self.vertical, [1, 1, 1, 1], "VALID")
        mean_x, mean_y, mean_xy, mean_squares = tf.split(means, 4, axis=-1)
        c1, c2 = (_K1 * 255.0) ** 2, (_K2 * 255.0) ** 2
        num0 = mean_x * mean_y * 2.0
        den0 = tf.square(mean_x) + tf.square(mean_y)
        luminance = (num0 + c1) / (den0 + c1)
        cs = (mean_xy * 2.0 - num0 + c2) / (mean_squares - den0 + c2)
        return (tf.reduce_sum(tf.cast(cs, tf.float64), axis=(0, 1, 2)),
                tf.reduce_sum(tf.cast(luminance * cs, tf.float64), axis=(0, 1, 2)))

    def _downsample(self, x):
        tf = self.tf
        shape = tf.shape(x)
        x = tf.pad(x, [[0, shape[0] % 2], [0, shape[1] % 2], [0, 0]], "SYMMETRIC")
        return tf.nn.avg_pool2d(x[None], 2, 2, "VALID")[0]

    def scale_means(self, x, y):
        """Means over the image of cs and of luminance * cs (per channel), over row strips."""
        import numpy as np  # pylint: disable=import-outside-toplevel,reimported
        height, width = x.shape[:2]
        rows = height - MS_SSIM_FILTER_SIZE + 1  # rows of the "valid" maps
        cs_sum, ssim_sum = np.zeros(3), np.zeros(3)
        for top in range(0, rows, MS_SSIM_STRIP_ROWS):
            bottom = min(rows, top + MS_SSIM_STRIP_ROWS) + MS_SSIM_FILTER_SIZE - 1
            cs, ssim = self.sums(x[top:bottom], y[top:bottom])
            cs_sum += cs.numpy()
            ssim_sum += ssim.numpy()
        count = rows * (width - MS_SSIM_FILTER_SIZE + 1)
        return cs_sum / count, ssim_sum / count


_ms_ssim_functions = {}


def ms_ssim(reference, decoded, dtype="float32"):
    """RGB MS-SSIM of two uint8 (H, W, 3) images, as tf.image.ssim_multiscale defines it.

    Uses max_val=255, the default 5 scales and power factors and an 11-tap
    filter. Returns None when min(H, W) < MS_SSIM_MIN_SIDE (too small for 5 scales).
    dtype "float64" computes everything in double precision (slower; a reference).
    """
    reference = np.asarray(reference)
    decoded = np.asarray(decoded)
    _check_same_shape(reference, decoded)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    if dtype not in _ms_ssim_functions:
        _ms_ssim_functions[dtype] = _MsSsimFunctions(dtype)
    functions = _ms_ssim_functions[dtype]
    x, y = reference.astype(dtype), decoded.astype(dtype)
    factors = []
    for scale in range(len(MS_SSIM_POWER_FACTORS)):
        if scale > 0:
            x, y = functions.downsample(x), functions.downsample(y)
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
