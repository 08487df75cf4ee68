"""Tests for codec/bitstream.py: layout round trip, every decode check, fuzzing, layer chains."""
import dataclasses
import os
import random
import shutil
import zlib

import pytest

from codec import bitstream
from codec.bitstream import BitstreamError, LayerStream

CONFIG = bitstream.digest(b"model configuration")
WEIGHTS = bitstream.digest(b"trained weights")
TABLES = bitstream.digest(b"coding tables")
LAYER_NAMES = ("B", "e1", "e2")


def make_stream(**changes):
    """A valid hyperprior enhancement-layer stream; keyword arguments replace fields (one
    symbol checksum per string unless given)."""
    stream = LayerStream(
        mode="quality", layer_index=1, layer_name="e1", num_layers=3,
        config_digest=CONFIG, weights_digest=WEIGHTS, tables_digest=TABLES,
        parent_digest=bitstream.digest(b"B"), image_size=(512, 768), shapes=(32, 48, 8, 12),
        strings=(bytes(range(256)) * 24, b"\x01\x02" * 150),
        symbol_crcs=(0x12345678, 0xFEDCBA98))
    if "strings" in changes and "symbol_crcs" not in changes:
        changes["symbol_crcs"] = tuple(range(7, 7 + len(changes["strings"])))
    return dataclasses.replace(stream, **changes)


def rechecksum(data):
    """Replaces the CRC at the end of `data` by the right one for its body."""
    body = data[:-4]
    return body + zlib.crc32(body).to_bytes(4, "big")


def encode_unchecked(stream, monkeypatch):
    """Encodes without the value checks, to build streams only a broken encoder would write."""
    with monkeypatch.context() as patch:
        patch.setattr(bitstream, "_find_problem", lambda _: None)
        return bitstream.encode(stream)


def decode_error(data, source="s.tfci"):
    with pytest.raises(BitstreamError) as caught:
        bitstream.decode(data, source=source)
    message = str(caught.value)
    assert message.startswith(f"{source}: "), message
    assert "\n" not in message
    return message


# --- round trip and layout --------------------------------------------------------------------

@pytest.mark.parametrize("changes", [
    {},
    {"mode": "spatial", "layer_index": 0, "layer_name": "B", "num_layers": 1,
     "parent_digest": bytes(8), "image_size": (1, 1 << 20), "shapes": (), "strings": (b"",)},
    {"layer_name": "couche-é", "layer_index": 254, "num_layers": 255,
     "shapes": (0, 1 << 20) * 16, "strings": (b"x",) * 8},
])
def test_round_trip_keeps_every_field(changes):
    stream = make_stream(**changes)
    data = bitstream.encode(stream)
    decoded = bitstream.decode(data)
    assert decoded == stream
    assert isinstance(decoded.image_size, tuple) and isinstance(decoded.shapes, tuple)
    assert isinstance(decoded.strings, tuple) and all(type(s) is bytes for s in decoded.strings)
    assert bitstream.encode(decoded) == data


def test_layout_and_header_overhead():
    stream = make_stream()
    data = bitstream.encode(stream)
    payload = sum(len(string) for string in stream.strings)
    overhead = len(data) - payload
    print(f"\nheader overhead: {overhead} bytes (layer e1, 512x768, 4 shapes, "
          f"2 strings of {[len(s) for s in stream.strings]} bytes)")
    assert overhead == 69  # the example worked out in the module docstring
    assert data[:4] == bitstream.MAGIC
    assert data[4:9] == bytes([bitstream.FORMAT_VERSION, 0, 1, 3, 2])
    assert data[9:11] == b"e1"
    assert data[11:43] == CONFIG + WEIGHTS + TABLES + stream.parent_digest
    assert data[43:47] == bytes([0x80, 0x04, 0x80, 0x06])  # varints 512, 768
    assert data[-4:] == zlib.crc32(data[:-4]).to_bytes(4, "big")
    base = make_stream(layer_index=0, layer_name="B", parent_digest=bytes(8), image_size=(64, 64),
                       shapes=(), strings=(b"z" * 100,))
    assert len(bitstream.encode(base)) - 100 == 55  # smallest common case


def test_digests():
    assert bitstream.digest(b"abc") == bytes.fromhex("ba7816bf8f01cfea")
    assert bitstream.stream_digest(b"abc") == bitstream.digest(b"abc")
    with pytest.raises(TypeError, match="takes bytes"):
        bitstream.digest("abc")


@pytest.mark.parametrize("changes, problem", [
    ({"mode": "temporal"}, "unknown scalability mode 'temporal'"),
    ({"layer_index": 3}, "layer index 3 is outside 0..2"),
    ({"layer_name": ""}, "layer name is 0 bytes long"),
    ({"config_digest": b"short"}, "config_digest must be 8 bytes"),
    ({"layer_index": 0}, "base layer has a non-zero parent digest"),
    ({"image_size": (0, 5)}, "image size"),
    ({"shapes": (-1,)}, "shape values"),
    ({"strings": ()}, "0 payload strings"),
    ({"strings": ("text",)}, "payload strings must be bytes"),
    ({"tables_digest": b""}, "tables_digest must be 8 bytes"),
    ({"symbol_crcs": (1,)}, "one 32-bit symbol checksum per payload string"),
    ({"symbol_crcs": (1, 1 << 32)}, "one 32-bit symbol checksum per payload string"),
])
def test_encode_rejects_invalid_fields(changes, problem):
    with pytest.raises(BitstreamError, match=f"^cannot encode layer .*: {problem}"):
        bitstream.encode(make_stream(**changes))


# --- each decode check ------------------------------------------------------------------------

def test_empty():
    assert decode_error(b"") == "s.tfci: empty file"


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n", b"LSIX" + bytes(60), b"x"])
def test_wrong_magic(data):
    assert decode_error(data) == "s.tfci: not a .tfci stream of this codec"


def test_newer_version():
    data = bytearray(bitstream.encode(make_stream()))
    data[4] = 3
    assert decode_error(bytes(data)) == (
        "s.tfci: made by a newer format version 3; this decoder reads version 2: update the code")


def test_older_version_is_refused_by_name():
    """Version 1 streams had no coding-tables digest and no symbol checksums."""
    data = bytearray(bitstream.encode(make_stream()))
    data[4] = 1
    assert decode_error(bytes(data)) == (
        "s.tfci: made by format version 1; this codec reads version 2: encode the image again "
        "with this code")


def test_symbols_checksum_is_crc32_of_little_endian_int32():
    import numpy as np
    symbols = np.array([[1, -2], [300, 0]], np.int64)
    expected = zlib.crc32(np.array([1, -2, 300, 0], "<i4").tobytes())
    assert bitstream.symbols_checksum(symbols) == expected
    assert bitstream.symbols_checksum(symbols.T) != expected  # order matters


@pytest.mark.parametrize("keep", [1, 3, 4, 5, 10, 30, 37, 45, 53, -305, -7, -1])
def test_truncated(keep):
    data = bitstream.encode(make_stream())
    assert decode_error(data[:keep]).startswith("s.tfci: truncated")


def test_checksum_mismatch():
    data = bytearray(bitstream.encode(make_stream()))
    data[100] ^= 0x10  # inside the first payload string
    assert decode_error(bytes(data)) == "s.tfci: corrupt (checksum mismatch)"


def test_trailing_bytes():
    data = bitstream.encode(make_stream())
    assert "unexpected bytes after the checksum" in decode_error(data + b"\x00\x00")


def test_bad_mode_code():
    data = bytearray(bitstream.encode(make_stream()))
    data[5] = 7
    assert decode_error(rechecksum(bytes(data))) == "s.tfci: unknown scalability mode code 7"


def test_invalid_utf8_name():
    data = bitstream.encode(make_stream())
    data = rechecksum(data[:9] + b"\xff\xfe" + data[11:])
    assert decode_error(data) == "s.tfci: layer name is not valid UTF-8"


@pytest.mark.parametrize("changes, problem", [
    ({"layer_index": 3}, "layer index 3 is outside 0..2"),
    ({"num_layers": 0, "layer_index": 0}, "number of layers 0 is outside 1..255"),
    ({"image_size": (0, 10)}, "image size (0, 10) is not 2 sides in 1..1048576"),
    ({"image_size": (10, (1 << 20) + 1)}, "image size"),
    ({"shapes": (1 << 21,)}, "shape values"),
    ({"shapes": (1,) * 33}, "33 shape values (at most 32)"),
    ({"strings": (b"a",) * 9}, "9 payload strings (expected 1..8)"),
    ({"strings": ()}, "0 payload strings"),
    ({"layer_index": 0}, "base layer has a non-zero parent digest"),
])
def test_absurd_values(changes, problem, monkeypatch):
    data = encode_unchecked(make_stream(**changes), monkeypatch)
    assert decode_error(data).startswith(f"s.tfci: {problem}")


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError, match="takes bytes"):
        bitstream.decode("LSIC")


# --- fuzzing ----------------------------------------------------------------------------------

def test_fuzz_never_raises_anything_but_bitstream_error():
    """400 damaged streams: each raises BitstreamError or decodes to one of its source streams."""
    rng = random.Random(20210601)
    sources = [
        make_stream(),
        make_stream(mode="spatial", layer_index=0, layer_name="B", parent_digest=bytes(8),
                    image_size=(333, 517), shapes=(21, 33), strings=(b"\x05" * 700,)),
        make_stream(layer_index=2, layer_name="e2", shapes=(1,) * 32, strings=(b"", b"q", b"")),
    ]
    encoded = [bitstream.encode(stream) for stream in sources]
    kinds = ["bit flips", "truncation", "splice", "garbage", "appended", "rechecksummed flips"]
    outcomes = {kind: {"error": 0, "original": 0, "other valid": 0} for kind in kinds}

    def flip_bits(data, count):
        data = bytearray(data)
        for _ in range(count):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(data)

    for trial in range(400):
        kind = kinds[trial % len(kinds)]
        first, second = rng.sample(range(len(encoded)), 2)
        data, originals = encoded[first], [sources[first]]
        if kind == "bit flips":
            data = flip_bits(data, rng.randint(1, 4))
        elif kind == "truncation":
            data = data[:rng.randrange(len(data))]
        elif kind == "splice":
            other = encoded[second]
            data = data[:rng.randrange(len(data) + 1)] + other[rng.randrange(len(other) + 1):]
            originals.append(sources[second])
        elif kind == "garbage":
            prefix = rng.choice([b"", bitstream.MAGIC, bitstream.MAGIC + b"\x01"])
            data = prefix + bytes(rng.getrandbits(8) for _ in range(rng.randrange(120)))
        elif kind == "appended":
            data += bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 20)))
        else:  # the checksum is right, so the structure and value checks must catch it
            data = rechecksum(flip_bits(data[:60], rng.randint(1, 3)) + data[60:])
        try:
            decoded = bitstream.decode(data)
        except BitstreamError:
            outcomes[kind]["error"] += 1
            continue
        if decoded in originals:
            outcomes[kind]["original"] += 1
        else:
            assert kind == "rechecksummed flips", (kind, data)
            bitstream.encode(decoded)  # a stream that passes decode is a valid stream
            outcomes[kind]["other valid"] += 1
    print("\nfuzz outcomes:", outcomes)
    assert sum(o["error"] for o in outcomes.values()) > 300


# --- files ------------------------------------------------------------------------------------

def test_write_and_read_stream(tmp_path):
    path = str(tmp_path / "stream_e1.tfci")
    stream = make_stream()
    written = bitstream.write_stream(path, stream)
    assert written == os.path.getsize(path)
    assert os.listdir(tmp_path) == ["stream_e1.tfci"]
    decoded, data = bitstream.read_stream(path)
    assert decoded == stream and data == bitstream.encode(stream)


def test_read_stream_missing_and_damaged(tmp_path):
    path = str(tmp_path / "stream_B.tfci")
    with pytest.raises(BitstreamError, match=r"stream_B\.tfci: missing stream file \(encode"):
        bitstream.read_stream(path)
    with open(path, "wb") as f:
        f.write(bitstream.encode(make_stream())[:-1])
    with pytest.raises(BitstreamError, match=r"stream_B\.tfci: truncated"):
        bitstream.read_stream(path)


def test_write_stream_rejects_invalid_without_leaving_a_file(tmp_path):
    with pytest.raises(BitstreamError, match="cannot encode"):
        bitstream.write_stream(str(tmp_path / "s.tfci"), make_stream(layer_index=9))
    assert not os.listdir(tmp_path)


# --- layer chains -----------------------------------------------------------------------------

def write_encoding(folder, image_tag, config=CONFIG, weights=WEIGHTS, mode="quality",
                   tables=TABLES):
    """Writes a chained 3-layer encoding of a fake image into `folder`; returns its streams."""
    os.makedirs(folder, exist_ok=True)
    streams, parent = [], bitstream.BASE_PARENT_DIGEST
    for index, name in enumerate(LAYER_NAMES):
        stream = make_stream(
            mode=mode, layer_index=index, layer_name=name, config_digest=config,
            weights_digest=weights, tables_digest=tables, parent_digest=parent,
            strings=(f"{image_tag} {name}".encode(), b"side"))
        path = os.path.join(folder, bitstream.stream_filename(name))
        bitstream.write_stream(path, stream)
        with open(path, "rb") as f:
            parent = bitstream.stream_digest(f.read())
        streams.append(stream)
    return streams


def read_chain(folder, num_layers=3, **kwargs):
    kwargs.setdefault("mode", "quality")
    return bitstream.read_layer_streams(str(folder), LAYER_NAMES, num_layers, **kwargs)


def test_chain_reads_all_or_fewer_layers(tmp_path):
    streams = write_encoding(tmp_path, "kodim01")
    assert read_chain(tmp_path, config_digest=CONFIG, weights_digest=WEIGHTS) == streams
    os.remove(tmp_path / "stream_e2.tfci")  # not needed for 2 layers
    assert read_chain(tmp_path, 2) == streams[:2]


def test_chain_renamed_layer(tmp_path):
    write_encoding(tmp_path, "kodim01")
    os.replace(tmp_path / "stream_e2.tfci", tmp_path / "stream_e1.tfci")
    with pytest.raises(BitstreamError, match=r"stream_e1\.tfci: holds layer e2 \(index 2\), "
                                             r"not e1 \(index 1\): the file was renamed"):
        read_chain(tmp_path)


def test_chain_mixed_images(tmp_path):
    write_encoding(tmp_path / "a", "kodim01")
    write_encoding(tmp_path / "b", "kodim02")
    shutil.copy(tmp_path / "b" / "stream_e2.tfci", tmp_path / "a" / "stream_e2.tfci")
    with pytest.raises(BitstreamError, match=r"stream_e2\.tfci: does not belong to the same "
                                             r"image/encoding as stream_e1\.tfci$"):
        read_chain(tmp_path / "a")
    assert len(read_chain(tmp_path / "a", 2)) == 2


def test_chain_missing_lower_layer(tmp_path):
    write_encoding(tmp_path, "kodim01")
    os.remove(tmp_path / "stream_B.tfci")
    with pytest.raises(BitstreamError, match=r"stream_B\.tfci: missing stream file \(layer B is "
                                             r"needed to decode 3 layers"):
        read_chain(tmp_path)


@pytest.mark.parametrize("kwargs, problem", [
    ({"config_digest": bitstream.digest(b"other config")},
     r"different model configuration \(config digest [0-9a-f]{16}, expected [0-9a-f]{16}\)"),
    ({"weights_digest": bitstream.digest(b"other weights")},
     r"different checkpoint \(weights digest [0-9a-f]{16}, expected [0-9a-f]{16}\)"),
    ({"tables_digest": bitstream.digest(b"other tables")},
     r"different set of coding tables \(tables digest [0-9a-f]{16}, expected [0-9a-f]{16}\)"),
])
def test_chain_other_model(tmp_path, kwargs, problem):
    write_encoding(tmp_path, "kodim01")
    with pytest.raises(BitstreamError, match=rf"stream_B\.tfci: made with a {problem}: "
                                             r"decode with the checkpoint that encoded it"):
        read_chain(tmp_path, **kwargs)


def test_chain_mode_mismatch(tmp_path):
    write_encoding(tmp_path, "kodim01", mode="spatial")
    with pytest.raises(BitstreamError, match="is a spatial-scalable stream but the model is "
                                             "quality-scalable"):
        read_chain(tmp_path, mode="quality")


def test_chain_layer_count_mismatch(tmp_path):
    write_encoding(tmp_path, "kodim01")
    with pytest.raises(BitstreamError, match="made by a 3-layer model but this model has 4"):
        bitstream.read_layer_streams(str(tmp_path), LAYER_NAMES + ("e3",), 3, mode="quality")


def test_chain_corrupt_middle_layer(tmp_path):
    write_encoding(tmp_path, "kodim01")
    path = tmp_path / "stream_e1.tfci"
    path.write_bytes(path.read_bytes()[:-2] + b"\x00\x00")
    with pytest.raises(BitstreamError, match=r"stream_e1\.tfci: corrupt \(checksum mismatch\)"):
        read_chain(tmp_path)


@pytest.mark.parametrize("num_layers", [0, 4])
def test_chain_bad_layer_count_argument(tmp_path, num_layers):
    with pytest.raises(ValueError, match=r"cannot decode \d layers: the model has layers B, e1"):
        read_chain(tmp_path, num_layers)
