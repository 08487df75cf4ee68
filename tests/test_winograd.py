"""Winograd's exact integer convolutions (models/entropy/winograd.py): equal to the layers' own
convolutions, and their partial sums within the bound the integer network relies on."""
import numpy as np
import pytest
import tensorflow as tf

from models.entropy import make_entropy_model, winograd


def _hyper_synthesis(channels=6):
    model = make_entropy_model("hyperprior", channels)
    model(tf.zeros((1, 32, 32, channels)), training=True)
    return model.hyper_synthesis.layers


@pytest.mark.parametrize("shape", [(1, 4, 6), (2, 5, 3), (1, 1, 1), (1, 7, 2)])
def test_winograd_is_exactly_four_times_each_layers_convolution(shape):
    """Every hyper-synthesis geometry (5x5 upsampling, 3x3), odd and even sides, batches, and
    integers large enough that the sums pass 2^36: bit for bit 4x the layer's convolution
    (itself exact there, its sums being below 2^53)."""
    rng = np.random.default_rng(0)
    for conv in _hyper_synthesis():
        geometry = winograd.polyphase_kernel(conv)
        assert geometry is not None
        channels_in = conv.kernel.shape[-2]
        kernel = rng.integers(-2 ** 14, 2 ** 14, tuple(conv.kernel.shape))
        inputs = rng.integers(-2 ** 24, 2 ** 24, shape + (channels_in,)).astype(np.float64)
        direct = conv.linear(tf.constant(inputs), tf.constant(kernel, tf.float64)).numpy()
        assert np.abs(direct).max() > 2 ** 36
        fast = winograd.WinogradConv(kernel, geometry)(tf.constant(inputs)).numpy()
        np.testing.assert_array_equal(fast, 4 * direct)


def test_winograd_partial_sums_stay_within_growth_times_the_direct_bound():
    """The proof's constant: for every output, the sum over the terms Winograd adds up
    (|U'| * 4 max|x| over the transformed positions it combines) is at most GROWTH times
    sum |W| * max|x| of the direct convolution."""
    rng = np.random.default_rng(1)
    supports = winograd._OUTPUT != 0  # [16 transformed positions, 4 outputs]
    for conv in _hyper_synthesis():
        for _ in range(5):
            kernel = rng.integers(-2 ** 14, 2 ** 14, tuple(conv.kernel.shape))
            fast = winograd.WinogradConv(kernel, winograd.polyphase_kernel(conv))
            magnitudes = np.abs(fast.kernel.numpy()).sum(1)  # [16, phases * channels_out]
            worst = max((4 * magnitudes[supports[:, q]].sum(0)).max() for q in range(4))
            direct = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0).max()
            assert worst <= winograd.GROWTH * direct
            assert worst > winograd.GROWTH * direct / 16  # the bound is not vacuous


def test_other_geometries_run_directly():
    analysis = make_entropy_model("hyperprior", 4)
    analysis(tf.zeros((1, 32, 32, 4)), training=True)
    down = analysis.hyper_analysis.layers[1]  # 5x5, stride 2 down
    assert winograd.polyphase_kernel(down) is None
