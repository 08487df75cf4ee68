"""Integer hyper-synthesis: scale indexes that every IEEE-754 machine computes identically.

After Balle, Johnston, Minnen, "Integer Networks for Data Compression with Latent-Variable
Models" (ICLR 2019). The decoder selects each element's probability table with an index
computed from the decoded side symbols. A float network computes it with rounding errors that
depend on the kernel library, the thread count and the device, and one index in the next bin
desynchronises the range decoder. The integer network below is DERIVED from the trained float
hyper-synthesis (post-training quantization, `quantize_network`; nothing new to train or
store in the checkpoint) and computes the indexes exactly:

- input: the integer side symbols, as x = symbol * 2^A + round(offset * 2^A), clipped;
- per layer: integer kernel W = round(K * 2^s) and bias round(b * 2^(A + s)), v = W * x + bias;
- hidden layers: x' = clip(round_div(v, 2^s), 0, ACT_MAX) (a quantized ReLU, A fractional
  bits); last layer: index = clip(round_div(v, 2^(A + s)), 0, num_scales - 1).

The convolutions run in float64 on integer values. `quantize_network` picks the shift s of
every layer so that max over outputs of (sum |W| * max |x| + |bias|) < 2^52: every partial sum
of every summation order is then an integer below 2^53, which float64 holds exactly, so the
result does not depend on the order (threads, oneDNN, blocking). Rounding division and
clipping are int64 operations. The tables' digest covers these integers, so a decoder that
holds other integers is refused before decoding.
"""

import numpy as np
import tensorflow as tf

ACTIVATION_BITS = 8           # A: fractional bits of every activation
INPUT_MAX = 2 ** 20           # |x| of the input layer (side symbols up to 4096)
ACTIVATION_MAX = 2 ** 20 - 1  # hidden activations: floats up to 4096
WEIGHT_BITS = 15              # |W| <= 2^14
EXACT_BOUND = 2 ** 52         # margin below 2^53, where float64 stops holding every integer


def _magnitude_bound(kernel, bias, input_max, divisor):
    """Largest |partial sum| a layer can reach (plus the rounding term of its division)."""
    per_output = np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(0)
    return float(per_output.max() * input_max + np.abs(bias).max() + divisor)


def quantize_network(convs, input_offset):
    """Integer parameters of a chain of SignalConv2D layers (ReLU between, none after).

    convs: the float layers (their frozen or trainable kernels are read once, here).
    input_offset: per-channel quantization offset of the side symbols (float).
    Returns a dict of integer arrays: kernel_<l> (int16: |W| <= 2^14), bias_<l>, shift_<l>
    and input_offset (int64).
    Raises ValueError when a layer's weights cannot be represented within the bound.
    """
    arrays = dict(input_offset=np.round(
        np.asarray(input_offset, np.float64) * 2.0 ** ACTIVATION_BITS).astype(np.int64))
    input_max = INPUT_MAX
    for index, conv in enumerate(convs):
        kernel = np.asarray(conv.kernel.numpy(), np.float64)
        bias = np.asarray(conv.bias.numpy(), np.float64)
        largest = np.abs(kernel).max()
        shift = WEIGHT_BITS - 1 - (int(np.ceil(np.log2(largest))) if largest > 0 else 0)
        last = index == len(convs) - 1
        while True:
            if shift < 0:
                raise ValueError(f"hyper-synthesis layer {index}: weights too large for the "
                                 "integer network")
            integer_kernel = np.round(kernel * 2.0 ** shift)
            integer_bias = np.round(bias * 2.0 ** (ACTIVATION_BITS + shift))
            divisor = 2 ** (ACTIVATION_BITS + shift if last else shift)
            if _magnitude_bound(integer_kernel, integer_bias, input_max, divisor) < EXACT_BOUND:
                break
            shift -= 1
        arrays[f"kernel_{index}"] = integer_kernel.astype(np.int16)
        arrays[f"bias_{index}"] = integer_bias.astype(np.int64)
        arrays[f"shift_{index}"] = np.array(shift, np.int64)
        input_max = ACTIVATION_MAX
    return arrays


class IntegerNetwork:
    """The integer hyper-synthesis of `quantize_network`'s arrays, run with `convs`' geometry."""

    def __init__(self, arrays, convs, num_indexes):
        self.convs = convs
        self.num_indexes = int(num_indexes)
        self.input_offset = tf.constant(arrays["input_offset"], tf.int64)
        self.layers = []
        input_max = INPUT_MAX
        for index in range(len(convs)):
            kernel = np.asarray(arrays[f"kernel_{index}"], np.int64)
            bias = arrays[f"bias_{index}"]
            shift = int(arrays[f"shift_{index}"])
            last = index == len(convs) - 1
            divisor = 2 ** (ACTIVATION_BITS + shift if last else shift)
            # The exactness proof (module docstring), checked on what will actually run.
            if _magnitude_bound(kernel, bias, input_max, divisor) >= EXACT_BOUND:
                raise ValueError(f"integer hyper-synthesis layer {index} can exceed 2^52: "
                                 "its sums would not be exact in float64")
            self.layers.append((tf.constant(kernel, tf.float64), tf.constant(bias, tf.int64),
                                tf.constant(divisor, tf.int64),
                                self.num_indexes - 1 if last else ACTIVATION_MAX))
            input_max = ACTIVATION_MAX

    def __call__(self, symbols):
        """int32 indexes in [0, num_indexes) from int32 side symbols (NHWC)."""
        # Pinned to the CPU: its float64 convolutions are sums of products (no FFT or
        # Winograd transforms, which would not keep integers integral).
        with tf.device("/CPU:0"):
            values = tf.cast(symbols, tf.int64) * 2 ** ACTIVATION_BITS + self.input_offset
            values = tf.clip_by_value(values, -INPUT_MAX, INPUT_MAX)
            for conv, (kernel, bias, divisor, upper) in zip(self.convs, self.layers):
                summed = conv.linear(tf.cast(values, tf.float64), kernel)
                summed = tf.cast(summed, tf.int64) + bias
                values = tf.math.floordiv(summed + divisor // 2, divisor)
                values = tf.clip_by_value(values, tf.constant(0, tf.int64),
                                          tf.constant(upper, tf.int64))
            return tf.cast(values, tf.int32)
