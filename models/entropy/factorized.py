"""The factorized entropy model of the released code: one learned density per channel."""

import tensorflow as tf
import tensorflow_compression as tfc

from models.entropy.base import EntropyModel, register


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


@register("factorized")
class FactorizedEntropyModel(EntropyModel):
    """A `ContinuousBatchedEntropyModel` with a `NoisyDeepFactorized` prior per channel."""

    num_strings = 1

    def __init__(self, channels, name=None):
        super().__init__(channels, name=name)
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
