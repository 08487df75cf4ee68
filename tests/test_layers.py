"""Tests for models/layers.py: the transforms' shapes and their configuration.

The expected configuration is the one of the project brief ARCHITECTURE.md ("Shared
transforms"): every conv is a 5x5 `tfc.SignalConv2D` with zero "same" padding and a bias;
"down" is a correlation with stride 2, "up" a convolution (corr=False) upsampling by 2.
"""
import math

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_compression as tfc

from models.layers import (AnalysisTransform, PredictionTransform, SynthesisTransform,
                           UpTransform, crop_to, set_kernels_frozen, zero_pad_to_multiple)


def _random(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).normal(size=shape).astype(np.float32))


def _convs(layer):
    return [l for l in layer.layers] if isinstance(layer, tf.keras.Sequential) else layer.convs


def _describe(conv):
    """(filters, stride, activation) in ARCHITECTURE.md's notation, after checking the rest."""
    assert isinstance(conv, tfc.SignalConv2D)
    assert tuple(conv.kernel_support) == (5, 5)
    assert conv.padding == "same_zeros"
    assert conv.use_bias
    down, up = tuple(conv.strides_down), tuple(conv.strides_up)
    if down == (2, 2):
        assert up == (1, 1) and conv.corr, "a downsampling conv is a correlation"
        stride = "down"
    elif up == (2, 2):
        assert down == (1, 1) and not conv.corr, "an upsampling conv is a convolution"
        stride = "up"
    else:
        assert down == up == (1, 1)
        stride = "1" if conv.corr else "1T"  # 1T: the reference's stride-1 transposed conv
    activation = conv.activation
    if activation is None or activation is tf.keras.activations.linear:
        name = None
    else:
        assert isinstance(activation, tfc.GDN)
        name = "igdn" if activation.inverse else "gdn"
    return conv.filters, stride, name


# --- configuration ---------------------------------------------------------------------------

def test_analysis_configuration():
    assert [_describe(c) for c in _convs(AnalysisTransform(6))] == [
        (6, "down", "gdn"), (6, "down", "gdn"), (6, "down", "gdn"), (6, "down", None)]


def test_synthesis_configuration():
    assert [_describe(c) for c in _convs(SynthesisTransform(6))] == [
        (6, "up", "igdn"), (6, "up", "igdn"), (6, "up", "igdn"), (3, "up", None)]


def test_up_transform_configuration():
    assert [_describe(c) for c in _convs(UpTransform(5))] == [
        (5, "up", None), (5, "1T", None), (5, "1T", None)]


@pytest.mark.parametrize("variant, strides", [
    ("quality", ["down", "down", "1", "1", "1", "1", "up", "up"]),
    ("spatial", ["down", "1", "1", "1", "1", "1", "up", "up"]),
])
def test_prediction_configuration(variant, strides):
    described = [_describe(c) for c in _convs(PredictionTransform(12, 5, variant))]
    activations = ["gdn", "gdn", "gdn", None, "gdn", None, "igdn", None]
    # L0 has F_in filters, L1..L7 have F_out.
    assert described == [(12 if i == 0 else 5, s, a)
                         for i, (s, a) in enumerate(zip(strides, activations))]


def test_prediction_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        PredictionTransform(4, 4, "temporal")


# --- shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("height, width", [(16, 16), (1, 1), (17, 33), (48, 80), (333, 517)])
def test_analysis_downsamples_by_16_rounding_up(height, width):
    out = AnalysisTransform(4)(_random((2, height, width, 3)))
    assert out.shape == (2, math.ceil(height / 16), math.ceil(width / 16), 4)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (7, 9)])
def test_synthesis_upsamples_by_16_from_wider_input(height, width):
    # The input may have more channels (concatenated latents) than the hidden width F.
    out = SynthesisTransform(4)(_random((1, height, width, 10)))
    assert out.shape == (1, 16 * height, 16 * width, 3)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (7, 9)])
def test_up_transform_doubles(height, width):
    out = UpTransform(6)(_random((1, height, width, 6)))
    assert out.shape == (1, 2 * height, 2 * width, 6)


@pytest.mark.parametrize("height, width", [(1, 1), (3, 5), (7, 9), (4, 8), (2, 6)])
def test_quality_prediction_cropped_matches_target_latent(height, width):
    # Quality mode: context (concatenated lower latents) and target latent share their size;
    # sizes that are not multiples of 4 crashed the reference code.
    context = _random((1, height, width, 7))
    prediction = PredictionTransform(7, 5, "quality")(context)
    # Two down and two up steps: the context is zero-padded to a multiple of 4.
    assert prediction.shape == (1, 4 * math.ceil(height / 4), 4 * math.ceil(width / 4), 5)
    cropped = crop_to(prediction, tf.constant([height, width]))
    assert cropped.shape == (1, height, width, 5)


@pytest.mark.parametrize("height, width", [(1, 1), (16, 16), (47, 80), (333, 517), (100, 3)])
def test_spatial_prediction_covers_next_level_latent(height, width):
    # Spatial mode: the context is the latent of the half-size image; the target is the
    # latent of the full image, ceil(H / 16) x ceil(W / 16).
    half = (math.ceil(height / 2), math.ceil(width / 2))
    context_size = (math.ceil(half[0] / 16), math.ceil(half[1] / 16))
    target = (math.ceil(height / 16), math.ceil(width / 16))
    prediction = PredictionTransform(6, 4, "spatial")(_random((1, *context_size, 6)))
    # One down and two up steps: twice the context zero-padded to a multiple of 2.
    assert prediction.shape == (1, 4 * math.ceil(context_size[0] / 2),
                                4 * math.ceil(context_size[1] / 2), 4)
    assert crop_to(prediction, tf.constant(target)).shape == (1, *target, 4)


@pytest.mark.parametrize("variant", ["quality", "spatial"])
def test_prediction_skip_structure(variant):
    """call() equals the formula of ARCHITECTURE.md evaluated with the same convs:
    x1=L0(in); x2=L1(x1); x3=L2(x2); x4=L3(x3); x5=L4(x4+x2); x6=L5(x5); x7=L6(x6+x4+x2);
    out=L7(x7)."""
    layer = PredictionTransform(6, 6, variant)
    context = _random((1, 8, 12, 6), seed=1)  # a multiple of the path's downsampling: no pad
    layer(context)  # creates the variables
    # Make the skips matter: perturb the biases away from their zero initialization.
    for i, conv in enumerate(layer.convs):
        conv.bias_parameter.assign(_random(conv.bias.shape, seed=10 + i) * 0.5)
    out = layer(context)
    l0, l1, l2, l3, l4, l5, l6, l7 = layer.convs
    x1 = l0(context)
    x2 = l1(x1)
    x3 = l2(x2)
    x4 = l3(x3)
    x5 = l4(x4 + x2)
    x6 = l5(x5)
    x7 = l6(x6 + x4 + x2)
    np.testing.assert_allclose(out.numpy(), l7(x7).numpy(), rtol=1e-5, atol=1e-5)
    # A structure without the skips gives something else (the check above has teeth).
    no_skips = l7(l6(l5(l4(x4))))
    assert not np.allclose(out.numpy(), no_skips.numpy(), atol=1e-3)


def test_zero_pad_to_multiple_and_crop_to():
    tensor = _random((1, 5, 7, 2))
    padded = zero_pad_to_multiple(tensor, 4)
    assert padded.shape == (1, 8, 8, 2)
    np.testing.assert_array_equal(padded[:, :5, :7].numpy(), tensor.numpy())
    assert not np.any(padded[:, 5:].numpy()) and not np.any(padded[:, :, 7:].numpy())
    np.testing.assert_array_equal(crop_to(padded, tensor).numpy(), tensor.numpy())
    assert zero_pad_to_multiple(tensor, 1).shape == tensor.shape


def test_frozen_kernels_give_the_same_output_and_thaw_for_training():
    prediction = PredictionTransform(8, 6, "quality")
    context = _random((1, 8, 12, 8))
    trained = prediction(context).numpy()
    set_kernels_frozen(prediction, True)
    np.testing.assert_allclose(prediction(context).numpy(), trained, atol=1e-5)
    # Frozen: a later change of the kernel variables is not seen (the kernel is cached) ...
    first = prediction.convs[0]
    kernel_variables = first.kernel_parameter.trainable_variables  # RDFT coefficients
    for variable in kernel_variables:
        variable.assign(variable * 0.5)
    kernel_variable = kernel_variables[0]
    np.testing.assert_allclose(prediction(context).numpy(), trained, atol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(prediction(context))
    assert tape.gradient(loss, kernel_variable) is None
    # ... thawed, the kernels come from the variables again and are trainable.
    set_kernels_frozen(prediction, False)
    assert not np.allclose(prediction(context).numpy(), trained, atol=1e-5)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(prediction(context))
    assert tape.gradient(loss, kernel_variable) is not None
