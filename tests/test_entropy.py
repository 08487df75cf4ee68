"""Tests for models/entropy/: the registry and both per-layer entropy models, training and coding forms.

Estimated vs actual bits (measured on this machine, smooth 2x32x32x8 tensor):
  factorized, untrained prior:   actual / estimate = 1.0002 .. 1.0003 (a few bytes)
  hyperprior, fitted 120 steps:  actual / estimate = 1.0003 .. 1.004
The tests allow actual within [0.99, 1.02] x estimate + 16 bytes per string (range-coder
termination). An untrained hyperprior is far off in the other direction (estimate ~4x the
actual size): its scale indexes are clipped to the 0.11 minimum scale, where the
likelihood of an outlier is tiny but the range coder's overflow code is short.
"""
import numpy as np
import pytest
import tensorflow as tf

from models.config import ENTROPY_MODELS as REGISTERED
from models.entropy import make_entropy_model
from models.entropy.factorized import FactorizedEntropyModel
from models.entropy.hyperprior import HyperpriorEntropyModel

ENTROPY_MODELS = tuple(REGISTERED)  # the built-in ones (tests may register more)

CHANNELS = 8


def smooth_tensor(shape=(2, 32, 32, CHANNELS), seed=0):
    """Latent-like values: a smooth pattern of amplitude 1..6 per channel plus mild noise."""
    batch, height, width, channels = shape
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    values = np.zeros(shape)
    for c in range(channels):
        fy, fx = rng.uniform(0.1, 0.4, 2)
        values[..., c] = rng.uniform(1, 6) * np.sin(fy * yy + fx * xx + rng.uniform(0, 6))
    values += rng.normal(0, 0.5, shape)
    return tf.constant(values.astype(np.float32))


def _fit(model, tensor, steps, learning_rate=2e-2):
    """Minimize the training-form bits of `tensor` (the entropy model alone)."""
    optimizer = tf.keras.optimizers.Adam(learning_rate)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            _, bits = model(tensor, training=True)
            loss = tf.reduce_sum(bits)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    for _ in range(steps):
        step()


@pytest.fixture(scope="module")
def coders():
    """Per kind: (model in coding form, the tensor it was prepared for)."""
    tensor = smooth_tensor()
    models = {}
    for kind in ENTROPY_MODELS:
        model = make_entropy_model(kind, CHANNELS)
        model(tensor, training=True)  # create the variables
        if kind == "hyperprior":
            _fit(model, tensor, steps=120)
        model.prepare_coding()
        models[kind] = model
    return models, tensor


def test_make_entropy_model():
    assert isinstance(make_entropy_model("factorized", 4), FactorizedEntropyModel)
    assert isinstance(make_entropy_model("hyperprior", 4), HyperpriorEntropyModel)
    with pytest.raises(ValueError, match="unknown entropy model"):
        make_entropy_model("gaussian", 4)


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_training_form_is_noisy_with_finite_bits(kind):
    model = make_entropy_model(kind, CHANNELS)
    tensor = smooth_tensor((2, 6, 10, CHANNELS))
    noisy, bits = model(tensor, training=True)
    noisy_again, _ = model(tensor, training=True)
    assert noisy.shape == tensor.shape
    assert bits.shape == (2,)
    assert np.all(np.isfinite(bits.numpy())) and np.all(bits.numpy() > 0)
    error = (noisy - tensor).numpy()
    assert np.all(np.abs(error) <= 0.5 + 1e-5)
    # Uniform noise: spread over [-0.5, 0.5], not rounding, and a new draw every call.
    assert error.std() > 0.2
    assert not np.allclose(noisy.numpy(), noisy_again.numpy())
    assert not np.allclose(noisy.numpy(), np.round(noisy.numpy()))
    # The rate is differentiable with respect to the input and the model's variables.
    with tf.GradientTape() as tape:
        tape.watch(tensor)
        _, bits = model(tensor, training=True)
    gradient = tape.gradient(bits, tensor)
    assert gradient is not None and np.any(gradient.numpy())


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_evaluation_form_is_quantized_and_deterministic(kind):
    model = make_entropy_model(kind, CHANNELS)
    tensor = smooth_tensor((1, 5, 7, CHANNELS), seed=3)
    # In a tf.function: the factorized prior's quantization offset (a tail/mode search) runs
    # op by op and slowly in eager mode.
    evaluate = tf.function(lambda t: model(t, training=False))
    quantized, bits = evaluate(tensor)
    quantized_again, bits_again = evaluate(tensor)
    np.testing.assert_array_equal(quantized.numpy(), quantized_again.numpy())
    np.testing.assert_array_equal(bits.numpy(), bits_again.numpy())
    values = quantized.numpy()
    assert np.all(np.abs(values - tensor.numpy()) <= 0.5 + 1e-5)
    # Integers up to one offset per channel (the factorized prior's quantization offset).
    fraction = values - np.floor(values)
    spread = fraction.reshape(-1, CHANNELS).max(0) - fraction.reshape(-1, CHANNELS).min(0)
    assert np.all((spread < 1e-5) | (spread > 1 - 1e-5))


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_compress_decompress_reproduces_quantized_values(kind, coders):
    models, tensor = coders
    model = models[kind]
    strings, shapes, quantized, bits, symbols = model.compress(tensor)
    assert len(strings) == len(shapes) == len(symbols) == model.num_strings
    assert all(s.dtype == tf.int32 for s in symbols)
    assert all(s.shape == (2,) and s.dtype == tf.string for s in strings)
    np.testing.assert_array_equal(shapes[0].numpy(), [32, 32])
    # The coding form quantizes as the evaluation form does.
    expected, expected_bits = tf.function(lambda t: model(t, training=False))(tensor)
    np.testing.assert_allclose(quantized.numpy(), expected.numpy(), atol=1e-5)
    # Same estimate up to the side information's quantization offsets (a side value that
    # rounds the other way moves a few scale indexes).
    np.testing.assert_allclose(bits.numpy(), expected_bits.numpy(), rtol=2e-2)
    decoded, decoded_symbols = model.decompress(strings, shapes)
    np.testing.assert_array_equal(decoded.numpy(), quantized.numpy())
    for sent, received in zip(symbols, decoded_symbols):
        np.testing.assert_array_equal(sent.numpy(), received.numpy())


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_decompress_in_a_fresh_instance(kind, coders):
    """The receiver has its own model object with the same weights, nothing else."""
    models, tensor = coders
    sender = models[kind]
    strings, shapes, quantized, _, _ = sender.compress(tensor[:1])
    receiver = make_entropy_model(kind, CHANNELS)
    receiver(tensor[:1], training=True)
    receiver.set_weights(sender.get_weights())
    receiver.load_tables(sender.coding_tables())
    decoded, _ = receiver.decompress([tf.constant(s.numpy()) for s in strings], shapes)
    np.testing.assert_array_equal(decoded.numpy(), quantized.numpy())


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_estimated_bits_match_string_lengths(kind, coders):
    models, tensor = coders
    strings, _, _, bits, _ = models[kind].compress(tensor)
    actual = sum(np.array([len(s) for s in part.numpy()]) for part in strings) * 8
    estimate = bits.numpy()
    slack = 16 * 8 * len(strings)
    print(f"{kind}: estimated bits {estimate}, actual {actual}, ratio {actual / estimate}")
    assert np.all(actual >= 0.99 * estimate - slack), (actual, estimate)
    assert np.all(actual <= 1.02 * estimate + slack), (actual, estimate)


@pytest.mark.parametrize("kind", ENTROPY_MODELS)
def test_compress_without_the_estimate_codes_the_same_strings(kind, coders):
    """A sender's compress(estimate_bits=False) skips the likelihoods, not the coding."""
    models, tensor = coders
    strings, shapes, quantized, bits, symbols = models[kind].compress(tensor)
    fast = models[kind].compress(tensor, estimate_bits=False)
    assert fast[3] is None and bits is not None
    for a, b in zip(fast[0], strings):
        assert list(a.numpy()) == list(b.numpy())
    np.testing.assert_array_equal(fast[2].numpy(), quantized.numpy())
    for a, b in zip(fast[4], symbols):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_hyperprior_side_information_has_its_own_string(coders):
    models, tensor = coders
    strings, shapes, _, _, _ = models["hyperprior"].compress(tensor)
    # 32x32 latent -> side latent downsampled by 4.
    np.testing.assert_array_equal(shapes[1].numpy(), [8, 8])
    assert all(len(s) > 0 for s in strings[1].numpy())
