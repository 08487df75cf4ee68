"""The hyperprior entropy model (Balle et al. 2018, as tfc's bmshj2018): side information z,
coded with a factorized prior, sets the Gaussian scale of every element."""

import tensorflow as tf
import tensorflow_compression as tfc

from models.entropy.base import EntropyModel, register
from models.entropy.factorized import factorized_coder
from models.layers import conv, crop_to


@register("hyperprior")
class HyperpriorEntropyModel(EntropyModel):
    """Hyperprior model (Balle et al. 2018): side information z sets a Gaussian scale per element."""

    num_strings = 2
    NUM_SCALES = 64
    SCALE_MIN = 0.11
    SCALE_MAX = 256.0

    def __init__(self, channels, hyper_filters=None, name=None):
        super().__init__(channels, name=name)
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
