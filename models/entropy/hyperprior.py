"""The hyperprior entropy model (Balle et al. 2018, as tfc's bmshj2018): side information z,
coded with a factorized prior, sets the Gaussian scale of every element.

Coding is portable: both the side and the main range-coding tables are stored arrays, and the
scale indexes come from the integer hyper-synthesis (models/entropy/integer.py) run on the
integer side symbols, so every machine selects the same table for every element.
"""

import tensorflow as tf
import tensorflow_compression as tfc

from models import tiling
from models.entropy.base import BITS_BAND_ELEMENTS, EntropyModel, register
from models.entropy.coding import ChannelCoder, IndexedCoder, indexed_tables, prior_tables
from models.entropy.integer import IntegerNetwork, fake_quantized_indexes, quantize_network
from models.layers import Sequential, conv, crop_to


def _prefixed(tables, prefix):
    """The arrays of `tables` under `prefix/`, without it."""
    return {key[len(prefix) + 1:]: value for key, value in tables.items()
            if key.startswith(prefix + "/")}


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

        self.hyper_analysis = Sequential([
            sconv(hyper_filters, 3, "1", tf.nn.relu, 0),
            sconv(hyper_filters, 5, "down", tf.nn.relu, 1),
            sconv(hyper_filters, 5, "down", None, 2),
        ], name="hyper_analysis")
        self.hyper_synthesis = Sequential([
            sconv(hyper_filters, 5, "up", tf.nn.relu, 0),
            sconv(hyper_filters, 5, "up", tf.nn.relu, 1),
            sconv(channels, 3, "1", None, 2),
        ], name="hyper_synthesis")
        self.side_prior = tfc.NoisyDeepFactorized(batch_shape=(hyper_filters,))
        self.coder = self.side_coder = self.index_network = None
        # True: scale indexes from the integer network (portable, what the codec uses).
        # False: from the float hyper-synthesis, as tfc does (bench/portable.py compares).
        self.exact_indexes = True
        # True: the training form computes the scale indexes with the integer network's
        # arithmetic (quantization in the loop, integer.fake_quantized_indexes), so training
        # sees the likelihoods that coding will have. False: the float hyper-synthesis.
        self.integer_hyper_synthesis = False

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
        if self.integer_hyper_synthesis:
            indexes = fake_quantized_indexes(self.hyper_synthesis.layers, side_hat,
                                             self.NUM_SCALES)
        else:
            indexes = self.hyper_synthesis(side_hat)
        return crop_to(indexes, tensor_shape)

    def call(self, tensor, training):
        side_latent = self.hyper_analysis(abs(tensor))
        side_hat, side_bits = self._side_model()(side_latent, training=training)
        indexes = self._indexes(side_hat, tf.shape(tensor)[1:3])
        tensor_hat, bits = self._main_model(compression=False)(tensor, indexes, training=training)
        return tensor_hat, bits + side_bits

    def coding_tables(self):
        """Side and main range-coding tables and the integer hyper-synthesis."""
        side = prior_tables(self.side_prior)
        main = indexed_tables(tfc.NoisyNormal, self.NUM_SCALES, self.scale_fn)
        network = quantize_network(self.hyper_synthesis.layers, side["quantization_offset"])
        tables = {}
        for prefix, arrays in (("side", side), ("main", main), ("hyper_synthesis", network)):
            tables.update({f"{prefix}/{key}": value for key, value in arrays.items()})
        return tables

    def load_tables(self, tables):
        self.side_coder = ChannelCoder(_prefixed(tables, "side"))
        self.coder = IndexedCoder(_prefixed(tables, "main"))
        self.index_network = IntegerNetwork(_prefixed(tables, "hyper_synthesis"),
                                            self.hyper_synthesis.layers, self.NUM_SCALES)

    def _coding_indexes(self, side_symbols, shape):
        """int32 scale indexes of the coded elements, from the int32 side symbols."""
        if self.exact_indexes:
            indexes = self.index_network(side_symbols)
        else:
            side_hat = self.side_coder.dequantize(side_symbols)
            indexes = tf.clip_by_value(self.hyper_synthesis(side_hat), 0, self.NUM_SCALES - 1)
            indexes = tf.cast(indexes, tf.int32)  # truncation, as tfc's indexed model
        return crop_to(indexes, shape)

    def compress(self, tensor, estimate_bits=True):
        shape = tf.shape(tensor)[1:3]
        side_latent = self.hyper_analysis(abs(tensor))
        side_symbols = self.side_coder.symbols(side_latent)
        indexes = self._coding_indexes(side_symbols, shape)
        symbols = tf.cast(tf.round(tensor), tf.int32)
        strings = [self.coder.encode(symbols, indexes), self.side_coder.encode(side_symbols)]
        bits = self._estimated_bits(tensor, side_latent, indexes) if estimate_bits else None
        return (strings, [shape, tf.shape(side_latent)[1:3]], tf.cast(symbols, tf.float32),
                bits, [symbols, side_symbols])

    def _estimated_bits(self, tensor, side_latent, indexes):
        _, side_bits = self._side_model(self.side_coder.offset)(side_latent, training=False)
        main_model = self._main_model(compression=False)
        return side_bits + tiling.row_bands_sum(
            lambda rows, row_indexes: main_model(rows, tf.cast(row_indexes, tf.float32),
                                                 training=False)[1],
            [tensor, indexes], BITS_BAND_ELEMENTS)

    def decompress(self, strings, shapes):
        side_symbols = self.side_coder.decode(strings[1], shapes[1])
        symbols = self.coder.decode(strings[0], self._coding_indexes(side_symbols, shapes[0]))
        return tf.cast(symbols, tf.float32), [symbols, side_symbols]
