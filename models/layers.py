"""Transforms of the scalable codec: analysis, synthesis, latent prediction, up-transform.

All convolutions are `tfc.SignalConv2D` (our subclass, whose kernel can be frozen for
coding) with a 5x5 kernel, zero "same" padding and a bias, as in the reference design (see
README, "Architecture").
"""

import functools

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc

KERNEL = 5


KERNEL_REBUILDS = ("matmul", "irfft")


@functools.lru_cache(maxsize=None)
def _inverse_rdft_matrix(height, width):
    """The matrix M with kernel = [real, imag] @ M for tfc.RDFTParameter's inverse transform.

    tfc rebuilds a kernel as irfft2d(norm * (real + i imag)), a linear map of (real, imag);
    its matrix (found by transforming the unit vectors) applies it as one small matmul, whose
    gradient is a matmul too, instead of an inverse FFT and its gradient.
    """
    columns = width // 2 + 1
    count = height * columns
    unit = np.eye(count).reshape(count, height, columns) * np.sqrt(height * width)
    real = np.fft.irfft2(unit + 0j, s=(height, width)).reshape(count, height * width)
    imag = np.fft.irfft2(1j * unit, s=(height, width)).reshape(count, height * width)
    return np.concatenate([real, imag]).astype(np.float32)


class SignalConv2D(tfc.SignalConv2D):
    """`tfc.SignalConv2D` whose kernel can be frozen for coding and is rebuilt by a matmul.

    The kernel is trained in tfc's RDFT parameterization, so every call rebuilds it with an
    inverse FFT: about 0.1 s per call for a 196x196 5x5 kernel on a CPU, whatever the image
    size, which dominated the prediction transforms and the hyperprior at coding time.
    `freeze_kernel()` computes it once from the current weights; the variables (and so the
    checkpoints and the weights digest) are unchanged, and `thaw_kernel()` undoes it.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.frozen_kernel = None
        self.kernel_rebuild = "matmul"

    @property
    def kernel(self):
        if self.frozen_kernel is not None:
            return self.frozen_kernel
        parameter = self.kernel_parameter
        if self.kernel_rebuild == "irfft" or not isinstance(parameter, tfc.RDFTParameter):
            return super().kernel
        # The same kernel as tfc's irfft2d (to float rounding), about 50x cheaper to build and
        # differentiate at training sizes; the variables are tfc's own.
        height, width, channels_in, channels_out = parameter.shape
        matrix = _inverse_rdft_matrix(height, width)
        spectrum = tf.concat([tf.reshape(parameter.real, (channels_in * channels_out, -1)),
                              tf.reshape(parameter.imag, (channels_in * channels_out, -1))], 1)
        kernel = tf.transpose(tf.matmul(spectrum, matrix))
        return tf.reshape(kernel, parameter.shape)

    def freeze_kernel(self):
        self.frozen_kernel = None
        self.frozen_kernel = tf.identity(self.kernel)

    def thaw_kernel(self):
        self.frozen_kernel = None

    def linear(self, inputs, kernel):
        """This layer's convolution (same geometry) with another kernel of any dtype, without
        bias or activation (the integer hyper-synthesis, models/entropy/integer.py)."""
        saved = self.frozen_kernel, self._use_bias, self._activation
        # tfc's setters refuse built layers; the private fields are what call() reads.
        self.frozen_kernel, self._use_bias, self._activation = kernel, False, None
        try:
            return tfc.SignalConv2D.call(self, inputs)
        finally:
            self.frozen_kernel, self._use_bias, self._activation = saved


class TensorFlowStateError(RuntimeError):
    """TensorFlow was imported in a state where traced functions compute wrong results."""


@functools.lru_cache(maxsize=None)
def check_traced_functions_compare_tensors():
    """Raise TensorFlowStateError unless `tensor == value` compares values in a tf.function.

    tfc.GDN branches on `self.alpha == 1` while tracing. When TensorFlow 2.14 is first
    imported inside absl's app.run main (not before it, not while it parses flags), traced
    functions see a graph as their outer context and that test is an identity test: False.
    GDN then drops its absolute value and the transforms compute garbage without any error
    (pipeline/cli.py, _load_tensorflow_before_absl_init_ends). Checked once per process.
    """
    compares = tf.function(tf.autograph.experimental.do_not_convert(
        lambda: tf.constant(isinstance(tf.constant(1.0) == 1.0, tf.Tensor))))()
    if not bool(compares):
        raise TensorFlowStateError(
            "TensorFlow was first imported inside absl's app.run main, where its traced "
            "functions compute wrong results: import tensorflow before app.run (or in its "
            "flags parser)")


def conv(filters, stride="1", activation=None, name=None, transposed=False, kernel=KERNEL):
    """One `SignalConv2D` with a kernel x kernel support.

    stride: "down" (correlation, stride 2), "up" (convolution, upsampling by 2) or "1".
    activation: None, "gdn", "igdn" or a callable (e.g. tf.nn.relu). `transposed=True` makes
    a stride-1 convolution (`corr=False`), the reference's transposed conv at stride 1.
    """
    if activation == "gdn":
        activation = tfc.GDN(name=f"{name}_gdn" if name else None)
    elif activation == "igdn":
        activation = tfc.GDN(inverse=True, name=f"{name}_igdn" if name else None)
    elif activation is not None and not callable(activation):
        raise ValueError(f"unknown activation {activation!r}")
    corr = {"down": True, "up": False, "1": not transposed}[stride]
    return SignalConv2D(
        filters, (kernel, kernel), corr=corr,
        strides_down=2 if stride == "down" else 1,
        strides_up=2 if stride == "up" else 1,
        padding="same_zeros", use_bias=True, activation=activation, name=name)


def set_kernels_frozen(module, frozen):
    """Freeze (for coding) or thaw (for training) every SignalConv2D kernel under `module`."""
    for layer in (module, *module.submodules):
        if isinstance(layer, SignalConv2D) and frozen:
            layer.freeze_kernel()
        elif isinstance(layer, SignalConv2D):
            layer.thaw_kernel()


def set_kernel_rebuild(module, method):
    """How every SignalConv2D under `module` rebuilds its kernel (see KERNEL_REBUILDS):
    "matmul" (default, fast) or "irfft" (tfc's own, kept to measure against)."""
    if method not in KERNEL_REBUILDS:
        raise ValueError(f"unknown kernel rebuild {method!r}: use one of "
                         f"{', '.join(KERNEL_REBUILDS)}")
    for layer in (module, *module.submodules):
        if isinstance(layer, SignalConv2D):
            layer.kernel_rebuild = method


def crop_to(tensor, reference):
    """Crop a NHWC tensor's spatial size to that of `reference` (a tensor or an [h, w] shape)."""
    if isinstance(reference, tf.Tensor) and reference.shape.rank == 4:
        reference = tf.shape(reference)[1:3]
    return tensor[:, :reference[0], :reference[1], :]


def zero_pad_to_multiple(tensor, multiple):
    """Zero-pad a NHWC tensor at the bottom/right so its height and width divide `multiple`."""
    shape = tf.shape(tensor)
    pad_h = (-shape[1]) % multiple
    pad_w = (-shape[2]) % multiple
    return tf.pad(tensor, [[0, 0], [0, pad_h], [0, pad_w], [0, 0]])


class Sequential(tf.keras.Sequential):
    """A Keras Sequential that calls its layers in order, as written.

    Keras's Sequential otherwise builds a symbolic graph network on its first call, running
    every layer through autograph: about 8 of the 11 s it took to build the shipped quality
    model. The variables, their order and the checkpoints are the same either way (the
    variables' name scopes differ: pipeline/pretrained.py compares names by suffix).
    """

    def __init__(self, layers=None, name=None):
        super().__init__(layers, name=name)
        # Keras 2.14's switch for the plain in-order call (no inferred-shape graph network).
        self._use_legacy_deferred_behavior = True


class AnalysisTransform(Sequential):
    """A(F): four stride-2 convolutions, GDN after the first three; downsamples by 16."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        for i, act in enumerate(["gdn", "gdn", "gdn", None]):
            self.add(conv(filters, "down", act, name=f"layer_{i}"))


class SynthesisTransform(Sequential):
    """S(F): three upsampling convolutions with IGDN, then one to 3 channels; upsamples by 16."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        for i, act in enumerate(["igdn", "igdn", "igdn"]):
            self.add(conv(filters, "up", act, name=f"layer_{i}"))
        self.add(conv(3, "up", None, name="layer_3"))


class UpTransform(Sequential):
    """U(F) of the spatial model: upsampling conv then two stride-1 transposed convs; linear."""

    def __init__(self, filters, name=None):
        super().__init__(name=name)
        self.add(conv(filters, "up", None, name="layer_0"))
        self.add(conv(filters, "1", None, name="layer_1", transposed=True))
        self.add(conv(filters, "1", None, name="layer_2", transposed=True))


class PredictionTransform(tf.keras.layers.Layer):
    """P(F_in, F_out): predicts a layer's latent from the context of the lower layers.

    Eight convolutions L0..L7 with skips: x5 = L4(x4 + x2), x7 = L6(x6 + x4 + x2).
    variant "quality": output at the input's resolution (L0, L1 down; L6, L7 up).
    variant "spatial": output at twice the input's resolution (L0 down; L6, L7 up).

    The reference code breaks on latents whose size is not a multiple of the path's total
    downsampling; here the input is zero-padded to that multiple and the caller crops the
    output to the target latent's size (`crop_to`).
    """

    ACTIVATIONS = ["gdn", "gdn", "gdn", None, "gdn", None, "igdn", None]
    STRIDES = {
        "quality": ["down", "down", "1", "1", "1", "1", "up", "up"],
        "spatial": ["down", "1", "1", "1", "1", "1", "up", "up"],
    }

    def __init__(self, in_filters, out_filters, variant, name=None):
        super().__init__(name=name)
        if variant not in self.STRIDES:
            raise ValueError(f"unknown prediction variant {variant!r}")
        self.variant = variant
        strides = self.STRIDES[variant]
        self.multiple = 2 ** strides.count("down")
        self.convs = [
            conv(in_filters if i == 0 else out_filters, stride, act, name=f"L{i}")
            for i, (stride, act) in enumerate(zip(strides, self.ACTIVATIONS))]

    def call(self, context):
        l0, l1, l2, l3, l4, l5, l6, l7 = self.convs
        x2 = l1(l0(zero_pad_to_multiple(context, self.multiple)))
        x4 = l3(l2(x2))
        x6 = l5(l4(x4 + x2))
        return l7(l6(x6 + x4 + x2))
