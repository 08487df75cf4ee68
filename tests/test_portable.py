"""Portable coding: exact integer scale indexes, and the symbol checksum of decoded streams."""
import os
import zlib

import numpy as np
import pytest
import tensorflow as tf

from codec import bitstream
from codec.streams import Codec
from models.config import ModelConfig
from models.entropy import make_entropy_model
from models.entropy.integer import IntegerNetwork
from models.factory import build_model

from conftest import smooth_image


def test_integer_indexes_do_not_depend_on_summation_order():
    """Permuting the input channels (and the kernel's input axis) reorders every sum: the
    integer network gives the same indexes bit for bit."""
    model = make_entropy_model("hyperprior", 8)
    model(tf.zeros((1, 32, 32, 8)), training=True)
    for layer in model.hyper_synthesis.layers:
        layer.kernel_parameter.real.assign(layer.kernel_parameter.real * 3.0)
        layer.kernel_parameter.imag.assign(layer.kernel_parameter.imag * 3.0)
    last = model.hyper_synthesis.layers[-1]
    last.bias_parameter.assign(np.linspace(5, 50, 8).astype(np.float32))
    tables = model.coding_tables()
    arrays = {k[len("hyper_synthesis/"):]: v for k, v in tables.items()
              if k.startswith("hyper_synthesis/")}
    symbols = np.random.default_rng(0).integers(-20, 21, (1, 8, 8, 8)).astype(np.int32)
    indexes = IntegerNetwork(arrays, model.hyper_synthesis.layers, 64)(symbols).numpy()
    assert len(np.unique(indexes)) > 10  # spread over the table range, not saturated
    order = np.random.default_rng(1).permutation(8)
    permuted = dict(arrays, kernel_0=arrays["kernel_0"][:, :, order, :],
                    input_offset=arrays["input_offset"][order])
    again = IntegerNetwork(permuted, model.hyper_synthesis.layers, 64)(symbols[..., order])
    np.testing.assert_array_equal(again.numpy(), indexes)


@pytest.mark.parametrize("entropy_model", ["hyperprior", "factorized"])
def test_symbol_checksum_catches_a_payload_change_under_a_valid_file_crc(entropy_model,
                                                                         tmp_path):
    config = ModelConfig(mode="quality", layer_names=["B"], filters=[8], lmbdas=[1.0],
                         entropy_model=entropy_model)
    model = build_model(config)
    model.prepare_coding()
    codec = Codec(model)
    codec.encode([smooth_image(64, 64)], str(tmp_path / "good"))
    path = tmp_path / "good" / "stream_B.tfci"
    stream = bitstream.decode(path.read_bytes())
    caught = []
    main = stream.strings[0]
    for position in range(len(main)):
        damaged = bytearray(main)
        damaged[position] ^= 0x01
        folder = tmp_path / f"bad{position}"
        os.makedirs(folder)
        # bitstream.encode computes a valid file CRC over the damaged payload.
        bitstream.write_stream(str(folder / "stream_B.tfci"), bitstream.LayerStream(
            **dict(vars(stream), strings=(bytes(damaged),) + stream.strings[1:])))
        with pytest.raises(bitstream.BitstreamError) as error:
            codec.decode(str(folder))
        message = str(error.value)
        assert "\n" not in message and "stream_B.tfci" in message
        assert not (folder / "rec_B.png").exists()
        caught.append("do not match the encoder's checksum" in message)
    print(f"\n{entropy_model}: {sum(caught)} of {len(caught)} one-bit payload changes caught by "
          "the symbol checksum, the rest by the range decoder's own check")
    # A payload that is a valid range code of other symbols (another image's, same shapes)
    # under this header's checksums and a valid file CRC: only the symbol checksum sees it.
    codec.encode([smooth_image(64, 64, seed=7)], str(tmp_path / "other"))
    other = bitstream.decode((tmp_path / "other" / "stream_B.tfci").read_bytes())
    assert other.strings != stream.strings
    folder = tmp_path / "swapped"
    os.makedirs(folder)
    bitstream.write_stream(str(folder / "stream_B.tfci"), bitstream.LayerStream(
        **dict(vars(stream), strings=other.strings)))
    with pytest.raises(bitstream.BitstreamError, match="do not match the encoder's checksum"):
        codec.decode(str(folder))
    assert not (folder / "rec_B.png").exists()
