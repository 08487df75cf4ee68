"""The entropy-model contract: a third model joins by registration alone (models/entropy/base.py).

The test double below codes the rounded tensor as raw int8 bytes: no probability model, but
it honours the whole contract (training form, coding form, strings and shape specs), so a
scalable model built with it goes through compress -> stream files -> decompress.
"""
import numpy as np
import pytest
import tensorflow as tf

from codec.streams import Codec
from models import config as config_lib
from models.config import ModelConfig
from models.entropy import EntropyModel, register, unregister
from models.factory import build_model

from helpers import smooth_image

NAME = "raw_int8_test_double"


class RawInt8EntropyModel(EntropyModel):
    """Rounds and stores each element as one signed byte; 8 bits per element."""

    num_strings = 1

    def call(self, tensor, training):
        noisy = tensor + tf.random.uniform(tf.shape(tensor), -0.5, 0.5) if training else \
            tf.round(tensor)
        bits = 8.0 * tf.cast(tf.reduce_prod(tf.shape(tensor)[1:]), tf.float32)
        return noisy, tf.fill(tf.shape(tensor)[:1], bits)

    def coding_tables(self):
        return {}

    def load_tables(self, tables):
        assert tables == {}

    def compress(self, tensor, estimate_bits=True):
        symbols = tf.cast(tf.clip_by_value(tf.round(tensor), -128, 127), tf.int8)
        string = tf.io.encode_base64(tf.io.serialize_tensor(symbols[0]))
        bits = self(tensor, training=False)[1] if estimate_bits else None
        return [tf.reshape(string, (1,))], [tf.shape(tensor)[1:3]], \
            tf.cast(symbols, tf.float32), bits, [tf.cast(symbols, tf.int32)]

    def decompress(self, strings, shapes):
        symbols = tf.io.parse_tensor(tf.io.decode_base64(strings[0][0]), tf.int8)
        symbols = tf.reshape(symbols, tf.concat([[1], shapes[0], [self.channels]], 0))
        return tf.cast(symbols, tf.float32), [tf.cast(symbols, tf.int32)]


@pytest.fixture
def registered():
    register(NAME)(RawInt8EntropyModel)
    yield NAME
    unregister(NAME)


def test_unknown_name_is_rejected_until_registered(registered):
    ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[1.0],
                entropy_model=registered)
    unregister(registered)
    assert registered not in config_lib.ENTROPY_MODELS
    with pytest.raises(config_lib.ConfigError, match="unknown entropy model"):
        ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[1.0],
                    entropy_model=registered)


@pytest.mark.parametrize("mode", ["quality", "spatial"])
def test_registered_model_codes_through_stream_files(registered, mode, tmp_path):
    names = ["B", "e1"]
    config = ModelConfig(mode=mode, layer_names=names, filters=[4, 6], lmbdas=[1.0, 1.0],
                         entropy_model=registered)
    model = build_model(config)
    assert all(isinstance(e, RawInt8EntropyModel) for e in model.entropy)
    model.prepare_coding()
    codec = Codec(model)
    image = smooth_image(48, 40)
    levels = [image[::2, ::2], image] if mode == "spatial" else [image, image]
    encoded = codec.encode(levels, str(tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stream_B.tfci", "stream_e1.tfci"]
    receiver = build_model(config)
    receiver.set_weights(model.get_weights())
    receiver.prepare_coding()
    decoded, _ = Codec(receiver).decode(str(tmp_path))
    for (_, _, sent), received, level in zip(encoded, decoded, levels):
        assert received.shape == level.shape
        np.testing.assert_array_equal(received, sent)
