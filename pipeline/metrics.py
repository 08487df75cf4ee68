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


def ms_ssim(reference, decoded):
    """RGB MS-SSIM of two uint8 (H, W, 3) images with tf.image.ssim_multiscale.

    Uses max_val=255, the default 5 scales and power factors and an 11-tap
    filter. Returns None when min(H, W) < MS_SSIM_MIN_SIDE (too small for 5 scales).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (keeps PSNR-only use light)
    reference = np.asarray(reference)
    decoded = np.asarray(decoded)
    _check_same_shape(reference, decoded)
    if min(reference.shape[:2]) < MS_SSIM_MIN_SIDE:
        return None
    value = tf.image.ssim_multiscale(
        tf.constant(reference, tf.float32), tf.constant(decoded, tf.float32),
        max_val=255.0, filter_size=MS_SSIM_FILTER_SIZE)
    return float(value)


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
