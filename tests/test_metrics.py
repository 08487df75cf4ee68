"""Tests for pipeline/metrics.py and pipeline/ms_ssim.py: PSNR, MS-SSIM, bits per pixel."""
import importlib.util
import io
import math
import os

import numpy as np
import pytest

from helpers import ROOT
from pipeline import metrics, ms_ssim

RNG = np.random.default_rng(0)


def random_image(height, width):
    return RNG.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def test_psnr_of_constant_offset_one():
    reference = np.full((8, 8, 3), 100, np.uint8)
    assert metrics.psnr(reference, reference + 1) == pytest.approx(48.1308, abs=1e-4)


def test_psnr_does_not_wrap_around_uint8():
    reference = np.zeros((4, 4, 3), np.uint8)
    decoded = np.full((4, 4, 3), 255, np.uint8)  # MSE 255**2 -> 0 dB
    assert metrics.psnr(reference, decoded) == pytest.approx(0.0, abs=1e-12)
    assert metrics.psnr(decoded, reference) == pytest.approx(0.0, abs=1e-12)


def test_psnr_identical_is_inf():
    image = random_image(5, 6)
    assert metrics.psnr(image, image.copy()) == math.inf


def test_psnr_shape_mismatch():
    with pytest.raises(ValueError, match="images differ in shape"):
        metrics.psnr(random_image(4, 4), random_image(4, 5))


def test_psnr_from_mse():
    assert metrics.psnr_from_mse(1.0) == pytest.approx(20 * math.log10(255))
    assert metrics.psnr_from_mse(0.0) == math.inf
    assert metrics.psnr_from_mse(0.01, max_value=1.0) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="non-negative"):
        metrics.psnr_from_mse(-1.0)


def test_ms_ssim_identical_and_noisy():
    side = metrics.MS_SSIM_MIN_SIDE
    image = random_image(side, side + 7)
    assert metrics.ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    noise = RNG.normal(0, 20, size=image.shape)
    noisy = np.clip(image + noise, 0, 255).astype(np.uint8)
    value = metrics.ms_ssim(image, noisy)
    assert isinstance(value, float) and 0.0 < value < 0.999


def test_ms_ssim_none_below_min_side():
    assert metrics.MS_SSIM_MIN_SIDE == 161
    for shape in [(160, 400), (400, 160), (16, 16)]:
        image = random_image(*shape)
        assert metrics.ms_ssim(image, image) is None


def test_ms_ssim_min_side_is_tensorflows_bound():
    """The constant matches what tf.image.ssim_multiscale accepts (5 scales, 11-tap filter)."""
    tf = pytest.importorskip("tensorflow")
    side = metrics.MS_SSIM_MIN_SIDE

    def run(height, width):
        image = tf.zeros((height, width, 3))
        return tf.image.ssim_multiscale(image, image, 255.0, filter_size=11)

    run(side, side)
    with pytest.raises(tf.errors.InvalidArgumentError):
        run(side - 1, side)


def test_ms_ssim_db():
    assert metrics.ms_ssim_db(0.9) == pytest.approx(10.0)
    assert metrics.ms_ssim_db(0.99) == pytest.approx(20.0)
    assert metrics.ms_ssim_db(1.0) == math.inf
    assert metrics.ms_ssim_db(None) is None


def test_bpp():
    assert metrics.bpp(1000, 512 * 768) == pytest.approx(8000 / 393216)
    assert metrics.bpp(0, 10) == 0.0
    with pytest.raises(ValueError, match="positive"):
        metrics.bpp(10, 0)


def test_ms_ssim_matches_double_precision_and_tensorflow(monkeypatch):
    """The compiled float32 MS-SSIM equals the definition in float64 (written apart, in NumPy)
    to 1e-7, and tf.image.ssim_multiscale (whose own float32 rounding, with the 11x11 kernel
    applied at once, moves it by a few 1e-6) to 2e-5; the compiled float64 run equals the
    NumPy one to 1e-12, and other bands and threads change nothing but float32 rounding."""
    from conftest import smooth_image
    reference = smooth_image(300, 437, seed=5)
    noise = RNG.normal(0, 4, size=reference.shape)
    decoded = np.clip(reference + noise, 0, 255).astype(np.uint8)
    value = metrics.ms_ssim(reference, decoded)
    definition = _definition_ms_ssim(reference, decoded)
    assert value == pytest.approx(definition, abs=1e-7)
    assert metrics.ms_ssim(reference, decoded, "float64") == pytest.approx(definition, abs=1e-12)
    if importlib.util.find_spec("tensorflow"):
        assert value == pytest.approx(_eager_ms_ssim(reference, decoded), abs=2e-5)
    # Many short bands, the last one shorter still, on one thread and on three.
    for threads in (1, 3):
        monkeypatch.setattr(ms_ssim, "BAND_ROWS", 7)
        monkeypatch.setattr(ms_ssim, "THREADS", threads)
        assert metrics.ms_ssim(reference, decoded, "float64") == pytest.approx(definition,
                                                                                abs=1e-12)
        assert metrics.ms_ssim(reference, decoded) == pytest.approx(value, abs=1e-8)


def test_ms_ssim_of_float_images_equals_uint8():
    reference, decoded = random_image(170, 180), random_image(170, 180)
    assert metrics.ms_ssim(reference.astype(np.float32), decoded.astype(np.float32)) == \
        pytest.approx(metrics.ms_ssim(reference, decoded), abs=1e-9)


def _definition_ms_ssim(reference, decoded):
    """MS-SSIM as tf.image.ssim_multiscale defines it, in float64 NumPy: a Gaussian of 11 taps
    and sigma 1.5 ("valid"), 2x2 average pooling after a symmetric pad to even sides, the
    contrast-structure means of scales 1-4 and the SSIM mean of scale 5 per channel, clipped
    at 0, raised to the power factors, multiplied, then averaged over channels."""
    taps = np.exp(-np.square(np.arange(11) - 5.0) / (2 * 1.5 ** 2))
    taps /= taps.sum()

    def blur(a):
        height, width = a.shape[:2]
        down = sum(taps[k] * a[k:height - 10 + k] for k in range(11))
        return sum(taps[k] * down[:, k:width - 10 + k] for k in range(11))

    x, y = reference.astype(np.float64), decoded.astype(np.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    means = []
    for scale in range(5):
        if scale:
            x, y = (np.pad(a, [(0, a.shape[0] % 2), (0, a.shape[1] % 2), (0, 0)], "symmetric")
                    for a in (x, y))
            x, y = (a.reshape(a.shape[0] // 2, 2, a.shape[1] // 2, 2, 3).mean(axis=(1, 3))
                    for a in (x, y))
        mean_x, mean_y = blur(x), blur(y)
        covariance = blur(x * y) - mean_x * mean_y
        variances = blur(x * x) + blur(y * y) - mean_x ** 2 - mean_y ** 2
        cs = (2 * covariance + c2) / (variances + c2)
        luminance = (2 * mean_x * mean_y + c1) / (mean_x ** 2 + mean_y ** 2 + c1)
        means.append((cs if scale < 4 else luminance * cs).mean(axis=(0, 1)))
    factors = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    return float(np.mean(np.prod([np.maximum(m, 0) ** p for m, p in zip(means, factors)],
                                 axis=0)))


def _eager_ms_ssim(reference, decoded):
    """What metrics.py called at first: eager float32 tf.image.ssim_multiscale."""
    import tensorflow as tf
    return float(tf.image.ssim_multiscale(tf.constant(reference, tf.float32),
                                          tf.constant(decoded, tf.float32), 255.0,
                                          filter_size=metrics.MS_SSIM_FILTER_SIZE))


KODAK = os.environ.get("KODAK_DIR", os.path.join(ROOT, "data", "kodak"))


@pytest.mark.skipif(not os.path.isdir(KODAK), reason=f"no Kodak images at {KODAK} (KODAK_DIR)")
@pytest.mark.parametrize("name", ["kodim01.png", "kodim07.png", "kodim23.png"])
def test_ms_ssim_on_kodak_equals_double_precision(name):
    """On Kodak photos and JPEG-compressed copies: the compiled float32 MS-SSIM equals the
    definition in float64 to 1e-7; eager float32 tf.image.ssim_multiscale (the code at first)
    is itself a few 1e-6 off that value, so it is compared to 1e-5."""
    from PIL import Image
    path = os.path.join(KODAK, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} missing")
    reference = np.asarray(Image.open(path).convert("RGB"))
    buffer = io.BytesIO()
    Image.fromarray(reference).save(buffer, "JPEG", quality=20)
    decoded = np.asarray(Image.open(buffer).convert("RGB"))
    value = metrics.ms_ssim(reference, decoded)
    assert value == pytest.approx(_definition_ms_ssim(reference, decoded), abs=1e-7)
    if importlib.util.find_spec("tensorflow"):
        assert value == pytest.approx(_eager_ms_ssim(reference, decoded), abs=1e-5)


def test_psnr_of_uint8_in_strips_equals_float64():
    reference, decoded = random_image(300, 50), random_image(300, 50)
    difference = reference.astype(np.float64) - decoded.astype(np.float64)
    expected = metrics.psnr_from_mse(float(np.mean(np.square(difference))))
    assert metrics.psnr(reference, decoded) == pytest.approx(expected, abs=1e-12)
