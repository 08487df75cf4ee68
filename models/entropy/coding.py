"""Range coding with stored tables: the one coding path of every entropy model.

The tables (quantized CDFs, their offsets, quantization offsets) are computed ONCE from a
trained model's float weights (`prior_tables`, `indexed_tables`) and then stored with the
checkpoint (pipeline/checkpoints.py). Encoder and decoder both build their coders from those
arrays only, so they never depend on how a machine evaluates a density in floating point:
rebuilding tables from the weights on the receiving side is what desynchronises range coders
across CPUs, kernel libraries and GPUs (Balle, Johnston, Minnen, ICLR 2019).

Table layout (tfc's range coder ops): `cdf` is one flat int32 vector holding, per
distribution, [-precision, cdf values...]; `cdf_offset[i]` is the smallest symbol that
distribution i codes (values outside its range go through the coder's overflow code).
"""

import hashlib

import numpy as np
import tensorflow as tf
import tensorflow_compression as tfc
from tensorflow_compression.python.ops import gen_ops

PRECISION = 12  # bits of the range coder's probabilities (tfc's default)
# Version of what the tables hold and how the coder uses them: stored tables of another
# version are computed again (pipeline/checkpoints.py). 2: the integer hyper-synthesis
# truncates its last division (rounding_<l> arrays).
TABLES_VERSION = 2


def prior_tables(prior):
    """Tables of a factorized `prior` (one distribution per channel), as numpy arrays.

    Computed inside a `tf.function`: building them eagerly runs tfc's tail-estimation loop op
    by op and takes ~10x longer. The quantization offset is stored too (zeros when tfc finds
    none), so that coding never evaluates the prior again.
    """
    @tf.function
    def tables():
        model = tfc.ContinuousBatchedEntropyModel(
            prior, coding_rank=3, compression=True, stateless=True,
            range_coder_precision=PRECISION)
        offset = model.quantization_offset
        if offset is None:
            offset = tf.zeros(prior.batch_shape)
        return model.cdf, model.cdf_offset, offset

    cdf, cdf_offset, offset = tables()
    return dict(cdf=cdf.numpy(), cdf_offset=cdf_offset.numpy(),
                quantization_offset=np.asarray(offset.numpy(), np.float32))


def indexed_tables(prior_fn, num_scales, scale_fn):
    """Tables of a location-scale family with `num_scales` indexed scales (tfc's model)."""
    @tf.function
    def tables():
        model = tfc.LocationScaleIndexedEntropyModel(
            prior_fn, num_scales, scale_fn, coding_rank=3, compression=True,
            stateless=True, range_coder_precision=PRECISION)
        return model.cdf, model.cdf_offset

    cdf, cdf_offset = tables()
    return dict(cdf=cdf.numpy(), cdf_offset=cdf_offset.numpy())


def _check_decoded(handle):
    """Finishes a decoder; an OpError when the strings were not consumed exactly."""
    sanity = gen_ops.entropy_decode_finalize(handle)
    return tf.debugging.assert_equal(
        sanity, True, message="range decoder out of step (damaged or desynchronised stream)")


class ChannelCoder:
    """Codes an NHWC tensor with one stored distribution per channel (factorized model)."""

    def __init__(self, tables):
        self.cdf = tf.constant(tables["cdf"], tf.int32)
        self.cdf_offset = tf.constant(tables["cdf_offset"], tf.int32)
        self.offset = tf.constant(tables["quantization_offset"], tf.float32)

    def symbols(self, tensor):
        """The int32 symbols (quantized values) of a float tensor."""
        return tf.cast(tf.round(tensor - self.offset), tf.int32)

    def dequantize(self, symbols):
        return tf.cast(symbols, tf.float32) + self.offset

    def encode(self, symbols):
        """One string per batch element."""
        handle = gen_ops.create_range_encoder(tf.shape(symbols)[:1], self.cdf)
        handle = gen_ops.entropy_encode_channel(handle, symbols - self.cdf_offset)
        return gen_ops.entropy_encode_finalize(handle)

    def decode(self, strings, size):
        """The int32 symbols of shape [batch, height, width, channels]."""
        channels = tf.shape(self.cdf_offset)[0]
        handle = gen_ops.create_range_decoder(strings, self.cdf)
        handle, symbols = gen_ops.entropy_decode_channel(
            handle, tf.concat([size, [channels]], 0), tf.int32)
        with tf.control_dependencies([_check_decoded(handle)]):
            return symbols + self.cdf_offset


class IndexedCoder:
    """Codes integer symbols, each with the stored distribution its int32 index selects."""

    def __init__(self, tables):
        self.cdf = tf.constant(tables["cdf"], tf.int32)
        self.cdf_offset = tf.constant(tables["cdf_offset"], tf.int32)

    def encode(self, symbols, indexes):
        """One string per batch element; `indexes` has the shape of `symbols`."""
        handle = gen_ops.create_range_encoder(tf.shape(symbols)[:1], self.cdf)
        handle = gen_ops.entropy_encode_index(
            handle, indexes, symbols - tf.gather(self.cdf_offset, indexes))
        return gen_ops.entropy_encode_finalize(handle)

    def decode(self, strings, indexes):
        """The int32 symbols, shaped as `indexes`."""
        handle = gen_ops.create_range_decoder(strings, self.cdf)
        handle, symbols = gen_ops.entropy_decode_index(
            handle, indexes, tf.shape(indexes)[1:], tf.int32)
        with tf.control_dependencies([_check_decoded(handle)]):
            return symbols + tf.gather(self.cdf_offset, indexes)


def tables_digest(tables):
    """8-byte digest of a dict of arrays (names, dtypes, shapes and little-endian values)."""
    digest = hashlib.sha256()
    for key in sorted(tables):
        array = np.asarray(tables[key])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{key}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.digest()[:8]
