"""One layer's `.tfci` stream file: self-describing and checked.

A stream is the compressed form of one layer of a scalable codec. Layer k is
written to `stream_<name>.tfci`; decoding layer k needs layers 0..k of the
same encoding.

Binary layout (all multi-byte fixed-size integers big-endian; "varint" is an
unsigned LEB128 number: 7 bits per byte, least significant group first, the
high bit set on every byte but the last, at most 8 bytes):

  field            size          meaning
  magic            4 bytes       b"LSIC"
  version          u8            format version, 2
  mode             u8            0 = quality scalability, 1 = spatial scalability
  layer_index      u8            0 = base layer; < num_layers
  num_layers       u8            number of layers of the model, >= 1
  name_length      u8            length n of the layer name, 1..255
  layer_name       n bytes       UTF-8 layer name ("B", "e1", ...)
  config_digest    8 bytes       digest of the model configuration
  weights_digest   8 bytes       digest of the trained weights
  tables_digest    8 bytes       digest of the stored coding tables (range-coding tables
                                 and the integer hyper-synthesis) the encoder used
  parent_digest    8 bytes       stream_digest() of layer layer_index-1's file;
                                 8 zero bytes for the base layer
  height, width    2 varints     size of this layer's original image (before
                                 padding), each 1..2**20
  shape_count      varint        number of shape values, 0..32
  shapes           varints       shape values the decoder needs, each 0..2**20
  string_count     u8            number of payload strings, 1..8
  strings          per string:   varint byte length, the bytes, then 4 bytes:
                                 symbols_checksum() of the int32 symbols the
                                 string codes (checked after entropy decoding)
  crc32            4 bytes       zlib.crc32 of every byte before it

Version 1 (no tables digest, no symbol checksums) is refused with a clear error.

Header overhead (every byte but the payload strings' own bytes):
46 + name bytes + 4 per string + the varints of height, width, shape count,
shapes and string lengths. A hyperprior layer "e1" of a 512x768 image with
shapes (32, 48, 8, 12) and strings of 6000 and 300 bytes has 69 bytes of
overhead (9 fixed + 2 name + 32 digests + 4 size + 5 shape count and values
+ 1 string count + 4 string lengths + 8 symbol checksums + 4 CRC);
tests/test_bitstream.py prints the measured value.
"""
import dataclasses
import hashlib
import os
import zlib

import numpy as np

from codec.image import write_file_atomic
from models.config import MODES, SettingsError

MAGIC = b"LSIC"
FORMAT_VERSION = 2
DIGEST_SIZE = 8
BASE_PARENT_DIGEST = bytes(DIGEST_SIZE)
MAX_IMAGE_SIDE = 1 << 20
MAX_SHAPE_VALUE = 1 << 20
MAX_SHAPES = 32
MAX_STRINGS = 8
MAX_LAYER_NAME_BYTES = 255
_MAX_VARINT_BYTES = 8
_CRC_SIZE = 4


class BitstreamError(SettingsError, ValueError):
    """A stream file that is missing, damaged or does not fit the model / other layers."""


class TruncatedError(BitstreamError):
    """The data end inside a stream (a cut file, or a damaged length that points past it)."""


@dataclasses.dataclass
class LayerStream:
    """The decoded content of one layer's stream file."""
    mode: str              # "quality" or "spatial"
    layer_index: int       # 0 = base
    layer_name: str        # "B", "e1", ...
    num_layers: int        # layers the model has
    config_digest: bytes   # digest of the model configuration
    weights_digest: bytes  # digest of the trained weights
    tables_digest: bytes   # digest of the stored coding tables
    parent_digest: bytes   # stream_digest() of layer index-1's file; zeros for the base layer
    image_size: tuple      # (height, width) of this layer's original image, before padding
    shapes: tuple          # small non-negative ints the decoder needs
    strings: tuple         # bytes payloads (1 for factorized, 2 for hyperprior)
    symbol_crcs: tuple     # per string, symbols_checksum() of the symbols it codes

    @property
    def payload_size(self):
        """Bytes of the range-coded strings: the file less its header."""
        return sum(map(len, self.strings))


def digest(obj_bytes):
    """8-byte digest of some bytes: the first 8 bytes of their SHA-256."""
    if not isinstance(obj_bytes, (bytes, bytearray, memoryview)):
        raise TypeError(f"digest() takes bytes, got {type(obj_bytes).__name__}: encode it first")
    return hashlib.sha256(obj_bytes).digest()[:DIGEST_SIZE]


def stream_digest(data):
    """Digest of an encoded stream file's bytes, stored as the next layer's parent_digest."""
    return digest(data)


def symbols_checksum(symbols):
    """CRC32 of an integer array's values as little-endian int32 (any shape, C order)."""
    return zlib.crc32(np.ascontiguousarray(symbols, dtype="<i4").tobytes())


def stream_filename(layer_name):
    """File name of a layer's stream: stream_<name>.tfci."""
    return f"stream_{layer_name}.tfci"


def _find_problem(stream):
    """Returns the first invalid field of `stream` as a message, or None if all are valid."""
    if stream.mode not in MODES:
        return f"unknown scalability mode {stream.mode!r} (expected one of {', '.join(MODES)})"
    if not 1 <= stream.num_layers <= 255:
        return f"number of layers {stream.num_layers} is outside 1..255"
    if not 0 <= stream.layer_index < stream.num_layers:
        return f"layer index {stream.layer_index} is outside 0..{stream.num_layers - 1}"
    name_size = len(stream.layer_name.encode("utf-8"))
    if not 1 <= name_size <= MAX_LAYER_NAME_BYTES:
        return f"layer name is {name_size} bytes long (expected 1..{MAX_LAYER_NAME_BYTES})"
    for field in ("config_digest", "weights_digest", "tables_digest", "parent_digest"):
        value = getattr(stream, field)
        if not isinstance(value, bytes) or len(value) != DIGEST_SIZE:
            return f"{field} must be {DIGEST_SIZE} bytes"
    if stream.layer_index == 0 and stream.parent_digest != BASE_PARENT_DIGEST:
        return "base layer has a non-zero parent digest"
    if len(stream.image_size) != 2 or not all(
            1 <= side <= MAX_IMAGE_SIDE for side in stream.image_size):
        return f"image size {stream.image_size} is not 2 sides in 1..{MAX_IMAGE_SIDE}"
    if len(stream.shapes) > MAX_SHAPES:
        return f"{len(stream.shapes)} shape values (at most {MAX_SHAPES})"
    if not all(0 <= value <= MAX_SHAPE_VALUE for value in stream.shapes):
        return f"shape values {stream.shapes} are not all in 0..{MAX_SHAPE_VALUE}"
    if not 1 <= len(stream.strings) <= MAX_STRINGS:
        return f"{len(stream.strings)} payload strings (expected 1..{MAX_STRINGS})"
    if not all(isinstance(string, bytes) for string in stream.strings):
        return "payload strings must be bytes"
    if len(stream.symbol_crcs) != len(stream.strings) or not all(
            0 <= crc < 1 << 32 for crc in stream.symbol_crcs):
        return "one 32-bit symbol checksum per payload string is required"
    return None


def _varint(value):
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def encode(stream):
    """Serializes a LayerStream to bytes (layout in the module docstring)."""
    stream = dataclasses.replace(
        stream,
        layer_index=int(stream.layer_index), num_layers=int(stream.num_layers),
        image_size=tuple(int(side) for side in stream.image_size),
        shapes=tuple(int(value) for value in stream.shapes),
        strings=tuple(stream.strings),
        symbol_crcs=tuple(int(crc) for crc in stream.symbol_crcs))
    problem = _find_problem(stream)
    if problem:
        raise BitstreamError(f"cannot encode layer {stream.layer_name!r}: {problem}")
    name = stream.layer_name.encode("utf-8")
    parts = [
        MAGIC,
        bytes([FORMAT_VERSION, MODES.index(stream.mode), stream.layer_index,
               stream.num_layers, len(name)]),
        name, stream.config_digest, stream.weights_digest, stream.tables_digest,
        stream.parent_digest,
        *(_varint(side) for side in stream.image_size),
        _varint(len(stream.shapes)), *(_varint(value) for value in stream.shapes),
        bytes([len(stream.strings)]),
    ]
    for string, crc in zip(stream.strings, stream.symbol_crcs):
        parts += [_varint(len(string)), string, crc.to_bytes(_CRC_SIZE, "big")]
    body = b"".join(parts)
    return body + zlib.crc32(body).to_bytes(_CRC_SIZE, "big")


class _Reader:
    """Reads fields in order from a stream's bytes; running out means truncation."""

    def __init__(self, data, source):
        self.data = data
        self.source = source
        self.position = 0

    def error(self, problem, kind=BitstreamError):
        return kind(f"{self.source}: {problem}")

    def take(self, size, field):
        end = self.position + size
        if end > len(self.data):
            raise self.error(f"truncated (the file ends inside the {field})", TruncatedError)
        chunk = self.data[self.position:end]
        self.position = end
        return chunk

    def u8(self, field):
        return self.take(1, field)[0]

    def varint(self, field):
        value = 0
        for shift in range(0, 7 * _MAX_VARINT_BYTES, 7):
            byte = self.u8(field)
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
        raise self.error(f"corrupt (malformed number in the {field})")


def decode(data, source="<bytes>"):
    """Parses and checks a stream's bytes; any problem raises BitstreamError naming `source`.

    Checks, in order: empty data, magic, version, truncation, CRC, trailing
    bytes, then the values (mode code, UTF-8 name, ranges: _find_problem).
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"decode() takes bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise BitstreamError(f"{source}: empty file")
    stream, end = decode_prefix(data, source)
    if end != len(data):
        raise BitstreamError(f"{source}: {len(data) - end} unexpected bytes after the checksum")
    return stream


def decode_prefix(data, source="<bytes>", start=0):
    """Parses and checks the one stream that starts at data[start:] (a stream carries its own
    length: its fields end with the CRC); returns (LayerStream, the offset where it ends).

    Raises TruncatedError when the data end inside it, BitstreamError for any other problem.
    """
    data = bytes(data)
    reader = _Reader(data, source)
    reader.position = start
    head = data[start:start + len(MAGIC)]
    if head != MAGIC:
        if len(head) < len(MAGIC) and MAGIC.startswith(head):
            raise reader.error("truncated (the file ends inside the magic)", TruncatedError)
        raise reader.error("not a .tfci stream of this codec")
    reader.take(len(MAGIC), "magic")
    version = reader.u8("version")
    if version > FORMAT_VERSION:
        raise reader.error(f"made by a newer format version {version}; this decoder reads "
                           f"version {FORMAT_VERSION}: update the code")
    if version < 1:
        raise reader.error(f"unknown format version {version}")
    if version < FORMAT_VERSION:
        raise reader.error(f"made by format version {version}; this codec reads version "
                           f"{FORMAT_VERSION}: encode the image again with this code")

    mode_code = reader.u8("mode")
    layer_index = reader.u8("layer index")
    num_layers = reader.u8("number of layers")
    name = reader.take(reader.u8("layer name length"), "layer name")
    digests = [reader.take(DIGEST_SIZE, f"{field} digest")
               for field in ("config", "weights", "tables", "parent")]
    image_size = (reader.varint("image height"), reader.varint("image width"))
    shape_count = reader.varint("shape count")
    # Each value takes at least one byte, so a damaged count ends in "truncated".
    shapes = tuple(reader.varint("shapes") for _ in range(shape_count))
    strings, symbol_crcs = [], []
    for _ in range(reader.u8("string count")):
        strings.append(reader.take(reader.varint("string length"), "payload strings"))
        symbol_crcs.append(int.from_bytes(reader.take(_CRC_SIZE, "symbol checksums"), "big"))
    body_end = reader.position
    crc = reader.take(_CRC_SIZE, "checksum")
    if zlib.crc32(data[start:body_end]).to_bytes(_CRC_SIZE, "big") != crc:
        raise reader.error("corrupt (checksum mismatch)")

    if mode_code >= len(MODES):
        raise reader.error(f"unknown scalability mode code {mode_code}")
    try:
        layer_name = name.decode("utf-8")
    except UnicodeDecodeError:
        raise reader.error("layer name is not valid UTF-8") from None
    stream = LayerStream(
        mode=MODES[mode_code], layer_index=layer_index, layer_name=layer_name,
        num_layers=num_layers, config_digest=digests[0], weights_digest=digests[1],
        tables_digest=digests[2], parent_digest=digests[3], image_size=image_size,
        shapes=shapes, strings=tuple(strings), symbol_crcs=tuple(symbol_crcs))
    problem = _find_problem(stream)
    if problem:
        raise reader.error(problem)
    return stream, reader.position


def write_stream(path, stream):
    """Encodes `stream` and writes it to `path` atomically; returns the number of bytes written."""
    data = encode(stream)
    write_file_atomic(path, data)
    return len(data)


def _read_file(path, missing_hint):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BitstreamError(f"{path}: missing stream file ({missing_hint})") from None
    except OSError as error:
        raise BitstreamError(f"{path}: cannot read ({error.strerror or error})") from None


def read_stream(path):
    """Reads and decodes a stream file; returns (LayerStream, raw bytes)."""
    data = _read_file(path, "encode the image first, or give the folder that holds "
                            "the encoder's stream_*.tfci files")
    return decode(data, source=path), data


def _check_digest(path, field, found, expected, what):
    if expected is not None and found != expected:
        raise BitstreamError(
            f"{path}: made with a different {what} ({field} digest {found.hex()}, "
            f"expected {expected.hex()}): decode with the checkpoint that encoded it")


def read_layer_streams(folder, layer_names, num_layers, *, mode,
                       config_digest=None, weights_digest=None, tables_digest=None):
    """Reads and cross-checks stream_<name>.tfci for the first `num_layers` of `layer_names`.

    `layer_names` are all the model's layer names, base first. Each file must
    decode and pass check_layer (mode, layer count, position and name, digests,
    parent). Returns the LayerStreams, base first.
    """
    if mode not in MODES:
        raise ValueError(f"unknown scalability mode {mode!r}: use one of {', '.join(MODES)}")
    if not 1 <= num_layers <= len(layer_names):
        raise ValueError(f"cannot decode {num_layers} layers: the model has layers "
                         f"{', '.join(layer_names)}; pick 1..{len(layer_names)}")
    streams = []
    parent = None
    for index, name in enumerate(layer_names[:num_layers]):
        path = os.path.join(folder, stream_filename(name))
        data = _read_file(path, f"layer {name} is needed to decode {num_layers} layers: "
                                f"put all of {', '.join(layer_names[:num_layers])} in one folder")
        stream = decode(data, source=path)
        check_layer(stream, path, index, parent, layer_names=layer_names, mode=mode,
                    config_digest=config_digest, weights_digest=weights_digest,
                    tables_digest=tables_digest)
        streams.append(stream)
        parent = (stream_filename(name), data)
    return streams


def check_layer(stream, source, index, parent, *, layer_names=None, mode=None,
                config_digest=None, weights_digest=None, tables_digest=None):
    """Check that `stream` (read from `source`) is layer `index` of the model and of the
    encoding whose layer index-1 is parent = (its source, its bytes; None for the base).

    Every expected value given (not None) must match: the mode, the layer names (their count
    and this layer's name), the digests. BitstreamError naming `source` otherwise.
    """
    if mode is not None and stream.mode != mode:
        raise BitstreamError(
            f"{source}: is a {stream.mode}-scalable stream but the model is {mode}-scalable: "
            f"decode with the {stream.mode} model that encoded it")
    if layer_names is not None and stream.num_layers != len(layer_names):
        raise BitstreamError(
            f"{source}: made by a {stream.num_layers}-layer model but this model has "
            f"{len(layer_names)} layers: decode with the checkpoint that encoded it")
    name = stream.layer_name if layer_names is None else layer_names[index]
    if stream.layer_index != index or stream.layer_name != name:
        raise BitstreamError(
            f"{source}: holds layer {stream.layer_name} (index {stream.layer_index}), "
            f"not {name} (index {index}): the file was renamed or misplaced")
    _check_digest(source, "config", stream.config_digest, config_digest,
                  "model configuration")
    _check_digest(source, "weights", stream.weights_digest, weights_digest, "checkpoint")
    _check_digest(source, "tables", stream.tables_digest, tables_digest,
                  "set of coding tables")
    if index > 0 and stream.parent_digest != stream_digest(parent[1]):
        raise BitstreamError(
            f"{source}: does not belong to the same image/encoding as {parent[0]}")
