"""Per-layer entropy models: factorized (as the released code) or hyperprior (bmshj2018-style).

Each model codes one latent tensor (the base latent or an enhancement residual) and has two
forms: the training form, `model(tensor, training)` -> (noisy or quantized tensor, bits per
batch element), and the coding form, built by `prepare_coding()` from the trained weights
with `compression=True` range-coding tables, used by `compress` and `decompress`.
"""

import tensorflow as tf
import tensorflow_compression as tfc

from models.layers import conv, crop_to

ENTROPY_MODELS = ("hyperprior", "factorized")


def factorized_coder(prior):
    """Coding form of a `ContinuousBatchedEntropyModel` over `prior` (coding rank 3).

    The range-coding tables are computed inside a `tf.function`: building them eagerly runs
    tfc's tail-estimation loop op by op and takes ~10x longer. The returned model holds the
    tables but not the prior, so bits are estimated with the training form.
    """
    @tf.function
    def tables():
        model = tfc.ContinuousBatchedEntropyModel(
            prior, coding_rank=3, compression=True, stateless=True)
        return model.cdf, model.cdf_offset, model.quantization_offset

    cdf, cdf_offset, offset = tables()
    return tfc.ContinuousBatchedEntropyModel(
        prior_shape=prior.batch_shape, coding_rank=3, compression=True, stateless=True,
        cdf=cdf, cdf_offset=cdf_offset, quantization_offset=offset)


class FactorizedEntropyModel(tf.keras.layers.Layer):
    """A `ContinuousBatchedEntropyModel` with a `NoisyDeepFactorized` prior per channel."""

    num_strings = 1

    def __init__(self, channels, name=None):
        super().__init__(name=name)
        self.prior = tfc.NoisyDeepFactorized(batch_shape=(channels,))
        self.coder = None

    def call(self, tensor, training, quantization_offset=None):
        model = tfc.ContinuousBatchedEntropyModel(
            self.prior, coding_rank=3, compression=False, quantization_offset=quantization_offset)
        return model(tensor, training=training)

    def prepare_coding(self):
        """Build the range-coding tables from the current weights (eager mode)."""
        self.coder = factorized_coder(self.prior)

    def compress(self, tensor):
        """Returns (strings, shapes, dequantized tensor, estimated bits)."""
        quantized = self.coder.quantize(tensor)
        _, bits = self(tensor, training=False, quantization_offset=self.coder.quantization_offset)
        strings = [self.coder.compress(tensor)]
        return strings, [tf.shape(tensor)[1:3]], quantized, bits

    def decompress(self, strings, shapes):
        return self.coder.decompress(strings[0], shapes[0])


class HyperpriorEntropyModel(tf.keras.layers.Layer):
    """Hyperprior model (Balle et al. 2018): side information z sets a Gaussian scale per element."""

    num_strings = 2
    NUM_SCALES = 64
    SCALE_MIN = 0.11
    SCALE_MAX = 256.0

    def __init__(self, channels, hyper_filters=None, name=None):
        super().__init__(name=name)
        hyper_filters = hyper_filters or channels

        def sconv(filters, kernel, stride, activation, index):
            return conv(filters, stride, activation, name=f"layer_{index}", kernel=kernel)

        self.hyper_analysis = tf.keras.Sequential([
            sconv(hyper_filters, 3, "1", tf.nn.relu, 0),
            sconv(hyper_filters, 5, "down", tf.nn.relu, 1),
            sconv(hyper_filters, 5, "down", None, 2),
        ], name="hyper_analysis")
        self.hyper_synthesis = tf.keras.Sequential([
            sconv(hyper_filters, 5, "up", tf.nn.relu, 0),
            sconv(hyper_filters, 5, "up", tf.nn.relu, 1),
            sconv(channels, 3, "1", None, 2),
        ], name="hyper_synthesis")
        self.side_prior = tfc.NoisyDeepFactorized(batch_shape=(hyper_filters,))
        self.coder = self.side_coder = None

    @classmethod
    def scale_fn(cls, index):
        log_min = tf.math.log(cls.SCALE_MIN)
        step = (tf.math.log(cls.SCALE_MAX) - log_min) / (cls.NUM_SCALES - 1.0)
        return tf.math.exp(log_min + step * index)

    def _main_model(self, compression):
        return tfc.LocationScaleIndexedEntropyModel(
            tfc.NoisyNormal, self.NUM_SCALES, self.scale_fn, coding_rank=3,
            compression=compression, stateless=compression)

    def _side_model(self, quantization_offset=None):
        return tfc.ContinuousBatchedEntropyModel(
            self.side_prior, coding_rank=3, compression=False,
            quantization_offset=quantization_offset)

    def _indexes(self, side_hat, tensor_shape):
        return crop_to(self.hyper_synthesis(side_hat), tensor_shape)

    def call(self, tensor, training):
        side_latent = self.hyper_analysis(abs(tensor))
        side_hat, side_bits = self._side_model()(side_latent, training=training)
        indexes = self._indexes(side_hat, tf.shape(tensor)[1:3])
        tensor_hat, bits = self._main_model(compression=False)(tensor, indexes, training=training)
        return tensor_hat, bits + side_bits

    def prepare_coding(self):
        """Build the range-coding tables from the current weights (eager mode)."""
        self.coder = self._main_model(compression=True)
        self.side_coder = factorized_coder(self.side_prior)

    def compress(self, tensor):
        """Returns (strings, shapes, dequantized tensor, estimated bits)."""
        shape = tf.shape(tensor)[1:3]
        side_latent = self.hyper_analysis(abs(tensor))
        side_hat = self.side_coder.quantize(side_latent)
        _, side_bits = self._side_model(self.side_coder.quantization_offset)(
            side_latent, training=False)
        indexes = self._indexes(side_hat, shape)
        quantized, bits = self.coder(tensor, indexes, training=False)
        strings = [self.coder.compress(tensor, indexes), self.side_coder.compress(side_latent)]
        return strings, [shape, tf.shape(side_latent)[1:3]], quantized, bits + side_bits

    def decompress(self, strings, shapes):
        side_hat = self.side_coder.decompress(strings[1], shapes[1])
        indexes = self._indexes(side_hat, shapes[0])
        return self.coder.decompress(strings[0], indexes)


def make_entropy_model(kind, channels, name=None):
    """The entropy model named `kind` ("hyperprior" or "factorized") for `channels` channels."""
    if kind == "hyperprior":
        return HyperpriorEntropyModel(channels, name=name)
    if kind == "factorized":
        return FactorizedEntropyModel(channels, name=name)
    raise ValueError(f"unknown entropy model {kind!r}: use one of {', '.join(ENTROPY_MODELS)}")
