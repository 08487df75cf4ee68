"""Integer hyper-synthesis: scale indexes that every IEEE-754 machine computes identically.

After Balle, Johnston, Minnen, "Integer Networks for Data Compression with Latent-Variable
Models" (ICLR 2019). The decoder selects each element's probability table with an index
computed from the decoded side symbols. A float network computes it with rounding errors that
depend on the kernel library, the thread count and the device, and one index in the next bin
desynchronises the range decoder. The integer network below is DERIVED from the float
hyper-synthesis (`quantize_network`; nothing new to store in the checkpoint) and computes the
indexes exactly:

- input: the integer side symbols, as x = symbol * 2^A + round(offset * 2^A), clipped;
- per layer: integer kernel W = round(K * 2^s) and bias round(b * 2^(A + s)), v = W * x + bias;
- hidden layers: x' = clip(floor((v + r) / 2^s), 0, ACT_MAX) (a quantized ReLU, A fractional
  bits); last layer: index = clip(floor((v + r) / 2^(A + s)), 0, num_scales - 1);
  the rounding term r (stored, `rounding_<l>`) is half the divisor in hidden layers (round to
  nearest, halves up) and 0 in the last layer: the index is truncated, as tfc's float path
  truncates it, so that the exact path differs from the float one by the quantization of the
  network alone (rounding it instead moved about 0.5 % of rate between the base and the
  enhancement layers of the shipped model: README, "Portable streams").

Everything runs in float64 on integer values. `layer_shift` picks the shift s of every layer
so that GROWTH * max over outputs of (sum |W| * max |x| + |bias| + divisor) < 2^52: every
partial sum of every summation order, of the direct convolution and of its Winograd form
(models/entropy/winograd.py, whose partial sums are at most GROWTH = 64 times the direct
bound; it is how the coder runs the convolutions, about 1.4x faster), is then an integer below
2^53, which float64 holds exactly, so the result does not depend on the order (threads,
oneDNN, blocking) or on the algorithm; dividing by a power of two and flooring are exact too.
The tables' digest covers these integers, so a decoder that holds other integers is refused
before decoding.

Training with quantization in the loop (`fake_quantized_indexes`): the same arithmetic on the
current float weights, with straight-through gradients for every rounding, gives the indexes
(hence the likelihoods) that the integer network will give at coding time, so a short
fine-tune adapts the float model to it.
"""

import math

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

from models import tiling
from models.entropy import winograd

ACTIVATION_BITS = 8           # A: fractional bits of every activation
INPUT_MAX = 2 ** 20           # |x| of the input layer (side symbols up to 4096)
ACTIVATION_MAX = 2 ** 20 - 1  # hidden activations: floats up to 4096
WEIGHT_BITS = 15              # |W| <= 2^14
EXACT_BOUND = 2 ** 52         # margin below 2^53, where float64 stops holding every integer
# Side-latent values (rows x width x channels) per band of the coder's integer network: its
# float64 activations at 4x the side resolution, and their Winograd forms, then stay within
# a few hundred MiB whatever the image size (at 24 MP, the whole side latent at once took
# about 1.5 GiB).
BAND_ELEMENTS = 2 ** 17


def _exceeds_exact_bound(magnitude_bound):
    """Whether a layer's direct-convolution bound could leave float64's exact integers in the
    direct or the Winograd form of the convolution."""
    return magnitude_bound * winograd.GROWTH >= EXACT_BOUND


def _magnitude_bound(kernel, bias, input_max, divisor):
    """Largest |partial sum| a layer can reach, plus its division's rounding term (TF or
    numpy arrays of integers)."""
    per_output = tf.reduce_sum(tf.reshape(tf.abs(kernel), (-1, tf.shape(kernel)[-1])), 0)
    return (tf.reduce_max(per_output) * input_max + tf.reduce_max(tf.abs(bias))
            + tf.cast(divisor, tf.float64))


def _integer_parameters(kernel, bias, shift, last, rounding=tf.round):
    """Integer kernel, bias (float64) and divisor of a layer at `shift` (float64 scalar)."""
    scale = tf.pow(tf.constant(2.0, tf.float64), shift)
    divisor = scale * 2.0 ** ACTIVATION_BITS if last else scale
    return (rounding(kernel * scale), rounding(bias * (scale * 2.0 ** ACTIVATION_BITS)),
            divisor)


def _rounding(divisor, last):
    """The integer added before a layer's floor division (see the module docstring): half
    the divisor (a power of two; for 1, nothing is lost: v is an integer), none in the last."""
    return tf.zeros_like(divisor) if last else tf.math.floor(divisor / 2.0)


def layer_shift(kernel, bias, input_max, last):
    """The shift s of one layer (float64 scalar tensor; -1 when none fits the bound).

    The largest s with max|W| <= 2^(WEIGHT_BITS-1) whose magnitude bound, times Winograd's
    GROWTH, stays below EXACT_BOUND. kernel, bias: the float weights (float64).
    Graph-compatible, so that training (`fake_quantized_indexes`) and `quantize_network` use
    the very same scales.
    """
    largest = tf.reduce_max(tf.abs(kernel))
    # The smallest e with 2^e >= largest (log2 may be off by one ulp around powers of two).
    exponent = tf.math.ceil(tf.math.log(largest) / math.log(2.0))
    two = tf.constant(2.0, tf.float64)
    exponent = tf.where(tf.pow(two, exponent - 1) >= largest, exponent - 1, exponent)
    exponent = tf.where(tf.pow(two, exponent) < largest, exponent + 1, exponent)
    exponent = tf.where(largest > 0, exponent, tf.zeros_like(exponent))
    shift = WEIGHT_BITS - 1 - exponent

    def too_large(shift):
        integer_kernel, integer_bias, divisor = _integer_parameters(kernel, bias, shift, last)
        return _exceeds_exact_bound(
            _magnitude_bound(integer_kernel, integer_bias, input_max, divisor))

    return tf.while_loop(lambda shift: tf.logical_and(shift >= 0, too_large(shift)),
                         lambda shift: [shift - 1], [shift])[0]


def quantize_network(convs, input_offset):
    """Integer parameters of a chain of SignalConv2D layers (ReLU between, none after).

    convs: the float layers (their frozen or trainable kernels are read once, here).
    input_offset: per-channel quantization offset of the side symbols (float).
    Returns a dict of integer arrays: kernel_<l> (int16: |W| <= 2^14), bias_<l>, shift_<l>,
    rounding_<l> and input_offset (int64).
    Raises ValueError when a layer's weights cannot be represented within the bound.
    """
    arrays = dict(input_offset=np.round(
        np.asarray(input_offset, np.float64) * 2.0 ** ACTIVATION_BITS).astype(np.int64))
    input_max = INPUT_MAX
    for index, conv in enumerate(convs):
        kernel = tf.constant(np.asarray(conv.kernel.numpy(), np.float64))
        bias = tf.constant(np.asarray(conv.bias.numpy(), np.float64))
        last = index == len(convs) - 1
        shift = layer_shift(kernel, bias, input_max, last)
        if shift < 0:
            raise ValueError(f"hyper-synthesis layer {index}: weights too large for the "
                             "integer network")
        integer_kernel, integer_bias, divisor = _integer_parameters(kernel, bias, shift, last)
        arrays[f"kernel_{index}"] = integer_kernel.numpy().astype(np.int16)
        arrays[f"bias_{index}"] = integer_bias.numpy().astype(np.int64)
        arrays[f"shift_{index}"] = np.array(int(shift), np.int64)
        arrays[f"rounding_{index}"] = np.array(int(_rounding(divisor, last)), np.int64)
        input_max = ACTIVATION_MAX
    return arrays


def _straight_through(rounding):
    """`rounding` in the forward pass, identity in the backward pass."""
    return lambda x: x + tf.stop_gradient(rounding(x) - x)


def _train_run(convs, values, layers, num_indexes):
    """The integer network's arithmetic on integer-valued float64 `values` (NHWC), each
    rounding with a straight-through gradient and the last clip with tfc's gradient (as its
    indexed model): float64 indexes.

    layers: per conv (integer kernel, integer bias, divisor), float64.
    """
    floor = _straight_through(tf.math.floor)
    for index, (conv, (kernel, bias, divisor)) in enumerate(zip(convs, layers)):
        rounding = _rounding(divisor, index == len(layers) - 1)
        values = floor((conv.linear(values, kernel) + bias + rounding) / divisor)
        if index < len(layers) - 1:
            values = tf.clip_by_value(values, 0.0, ACTIVATION_MAX)
        else:
            values = tfc.upper_bound(tfc.lower_bound(values, 0.0), num_indexes - 1.0)
    return values


def fake_quantized_indexes(convs, side_hat, num_indexes):
    """Training form of the integer network: float32 (integer-valued) scale indexes.

    The integer network's exact arithmetic (float64), with kernels, biases and shifts derived
    from the current float weights as `quantize_network` derives them, and the side latent
    quantized to A fractional bits as the coder's symbols + offset. Every rounding passes the
    gradient straight through. Given the side symbols' values (symbols + stored quantization
    offset), the indexes equal the integer network's (tested on the CPU; it runs wherever the
    model trains, and a GPU's float64 convolution algorithm might not keep sums exact).
    """
    round_even = _straight_through(tf.round)
    values = round_even(tf.cast(side_hat, tf.float64) * 2.0 ** ACTIVATION_BITS)
    values = tf.clip_by_value(values, -float(INPUT_MAX), float(INPUT_MAX))
    layers, input_max = [], INPUT_MAX
    for index, conv in enumerate(convs):
        kernel, bias = tf.cast(conv.kernel, tf.float64), tf.cast(conv.bias, tf.float64)
        last = index == len(convs) - 1
        shift = layer_shift(tf.stop_gradient(kernel), tf.stop_gradient(bias), input_max, last)
        with tf.control_dependencies([tf.debugging.assert_non_negative(
                shift, message=f"hyper-synthesis layer {index}: weights too large for the "
                               "integer network")]):
            shift = tf.identity(shift)
        layers.append(_integer_parameters(kernel, bias, shift, last, round_even))
        input_max = ACTIVATION_MAX
    return tf.cast(_train_run(convs, values, layers, num_indexes), tf.float32)


class IntegerNetwork:
    """The integer hyper-synthesis of `quantize_network`'s arrays, run with `convs`' geometry.

    Each layer's convolution runs in Winograd's form (models/entropy/winograd.py, which gives
    4x the convolution: the factor joins the divisor) where its geometry allows, else as the
    layer's own convolution; both are exact. The division and the quantized ReLU are fused:
    clip(floor((v + r) / d), 0, m) = min(floor(relu(v + r) / d), m), with v + r an integer
    below the bound and 1/d a power of two, so exact too.

    It runs over bands of side-latent rows (about `band_elements` values each) with a halo
    of the network's reach (derived from the convolutions, models/tiling.py), cropped away:
    exact arithmetic makes the banded indexes equal the whole network's, and memory stays
    bounded for any image size.
    """

    def __init__(self, arrays, convs, num_indexes):
        self.num_indexes = int(num_indexes)
        self.input_offset = tf.constant(arrays["input_offset"], tf.float64)
        self.layers = []
        input_max = INPUT_MAX
        for index, conv in enumerate(convs):
            kernel = np.asarray(arrays[f"kernel_{index}"], np.float64)
            bias = np.asarray(arrays[f"bias_{index}"], np.float64)
            shift = int(arrays[f"shift_{index}"])
            rounding = float(arrays[f"rounding_{index}"])
            last = index == len(convs) - 1
            divisor = 2.0 ** (ACTIVATION_BITS + shift if last else shift)
            # The exactness proof (module docstring), checked on what will actually run.
            if not 0 <= rounding < divisor or _exceeds_exact_bound(
                    _magnitude_bound(kernel, bias, input_max, divisor)):
                raise ValueError(f"integer hyper-synthesis layer {index} can exceed 2^52 in "
                                 "its Winograd form: its sums would not be exact in float64")
            geometry = winograd.polyphase_kernel(conv)
            if geometry is None:
                linear = (lambda conv, kernel: lambda x: conv.linear(x, kernel))(
                    conv, tf.constant(kernel, tf.float64))
            else:
                linear, divisor = winograd.WinogradConv(kernel, geometry), 4.0 * divisor
                bias, rounding = 4.0 * bias, 4.0 * rounding
            self.layers.append((linear, tf.constant(bias + rounding, tf.float64),
                                1.0 / divisor))
            input_max = ACTIVATION_MAX
        _, self.upsampling = tiling.chain_stride(convs)
        self.halo = math.ceil(tiling.chain_reach(convs))
        self.band_elements = BAND_ELEMENTS

    def __call__(self, symbols):
        """int32 indexes in [0, num_indexes) from int32 side symbols (NHWC)."""
        # Pinned to the CPU: its float64 convolutions and matmuls are sums of products (no FFT
        # or float Winograd transforms of their own, whose fractions would not keep integers
        # integral).
        with tf.device("/CPU:0"):
            values = tf.cast(symbols, tf.float64) * 2.0 ** ACTIVATION_BITS + self.input_offset
            values = tf.clip_by_value(values, -float(INPUT_MAX), float(INPUT_MAX))
            return tiling.apply_row_bands(self._run, values, self.band_elements, self.halo,
                                          self.upsampling, tf.int32)

    def _run(self, values):
        """The layers on integer-valued float64 input: int32 indexes."""
        for index, (linear, rounding_bias, inverse) in enumerate(self.layers):
            values = linear(values) + rounding_bias
            if index < len(self.layers) - 1:
                values = tf.minimum(tf.floor(tf.nn.relu(values) * inverse),
                                    float(ACTIVATION_MAX))
            else:
                values = tf.clip_by_value(tf.floor(values * inverse), 0.0,
                                          self.num_indexes - 1.0)
        return tf.cast(values, tf.int32)
