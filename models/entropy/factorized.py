"""The factorized entropy model of the released code: one learned density per channel."""

import tensorflow as tf
import tensorflow_compression as tfc

from models import tiling
from models.entropy.base import BITS_BAND_ELEMENTS, EntropyModel, register
from models.entropy.coding import ChannelCoder, prior_tables


@register("factorized")
class FactorizedEntropyModel(EntropyModel):
    """A `ContinuousBatchedEntropyModel` with a `NoisyDeepFactorized` prior per channel.

    Coding needs only the stored tables (coding.ChannelCoder); the prior is evaluated for the
    estimated bits alone.
    """

    num_strings = 1

    def __init__(self, channels, name=None):
        super().__init__(channels, name=name)
        self.prior = tfc.NoisyDeepFactorized(batch_shape=(channels,))
        self.coder = None

    def call(self, tensor, training, quantization_offset=None):
        model = tfc.ContinuousBatchedEntropyModel(
            self.prior, coding_rank=3, compression=False, quantization_offset=quantization_offset)
        return model(tensor, training=training)

    def coding_tables(self):
        return prior_tables(self.prior)

    def load_tables(self, tables):
        self.coder = ChannelCoder(tables)

    def compress(self, tensor, estimate_bits=True):
        symbols = self.coder.symbols(tensor)
        bits = tiling.row_bands_sum(
            lambda rows: self(rows, training=False, quantization_offset=self.coder.offset)[1],
            [tensor], BITS_BAND_ELEMENTS) if estimate_bits else None
        strings = [self.coder.encode(symbols)]
        return strings, [tf.shape(tensor)[1:3]], self.coder.dequantize(symbols), bits, [symbols]

    def decompress(self, strings, shapes):
        symbols = self.coder.decode(strings[0], shapes[0])
        return self.coder.dequantize(symbols), [symbols]
