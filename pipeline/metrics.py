"""Image quality and rate metrics: PSNR, MS-SSIM (RGB), bits per pixel."""
import math

import numpy as np

# The MS-SSIM bounds, re-exported for the callers of metrics.ms_ssim.
from pipeline.ms_ssim import FILTER_SIZE as MS_SSIM_FILTER_SIZE  # noqa: F401
from pipeline.ms_ssim import MIN_SIDE as MS_SSIM_MIN_SIDE  # noqa: F401
from pipeline.ms_ssim import ms_ssim as _ms_ssim


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


def ms_ssim(reference, decoded, dtype="float32"):
    """RGB MS-SSIM of two uint8 (H, W, 3) images, as tf.image.ssim_multiscale defines it
    (max_val 255, 5 scales, an 11-tap filter; see pipeline/ms_ssim.py). None when
    min(H, W) < MS_SSIM_MIN_SIDE; dtype "float64" is a slower reference."""
    reference, decoded = np.asarray(reference), np.asarray(decoded)
    _check_same_shape(reference, decoded)
    return _ms_ssim(reference, decoded, dtype)


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
