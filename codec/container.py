"""One file per image (`.lsic`): its layer streams back to back, base layer first.

A layer stream (codec/bitstream.py) carries its own length (its fields end with its CRC32),
its checks (CRC32, symbol checksums) and its links (the model's digests, the digest of the
layer below), so the container adds no header of its own: an .lsic file is
stream_B.tfci + stream_e1.tfci + ... as eval_*.py write them. Any byte prefix of a file is
a file too: it holds every layer that ends within it, and `parse` says which layer is cut
and where. A prefix is made by cutting bytes, never by coding again (`prefix`).

No TensorFlow here: parsing, `info` and truncation are instant.
"""

import dataclasses

from codec import bitstream
from codec.bitstream import BitstreamError, TruncatedError

SUFFIX = ".lsic"


@dataclasses.dataclass
class Layer:
    """One complete layer of a file: its stream, its bytes and where they lie in the file."""
    stream: bitstream.LayerStream
    data: bytes
    start: int
    end: int
    source: str  # how errors name it: "<file>: layer <name> (bytes a..b)"


@dataclasses.dataclass
class Container:
    """A parsed .lsic file (or prefix): its complete layers, base first, and the cut."""
    layers: list
    size: int          # bytes of the file
    cut_index: int     # index of the layer the file ends inside; None when it ends between
    cut_start: int     # where that layer starts in the file (None: no cut)
    source: str = "<bytes>"  # how errors name the file

    @property
    def mode(self):
        return self.layers[0].stream.mode

    @property
    def num_layers(self):
        """Layers of the model that wrote the file (complete ones: len(layers))."""
        return self.layers[0].stream.num_layers

    @property
    def streams(self):
        return [layer.stream for layer in self.layers]

    def cut_message(self):
        """'layer 3 of 4 is cut: the file ends 1200 bytes into it (byte 9000)', or None."""
        if self.cut_index is None:
            return None
        return (f"layer {self.cut_index + 1} of {self.num_layers} is cut: the file ends "
                f"{self.size - self.cut_start} bytes into it (at byte {self.size}); "
                f"{len(self.layers)} complete layer(s) decode")

    def end(self, num_layers):
        """Bytes of the prefix holding the first `num_layers` layers."""
        return self.layers[num_layers - 1].end


def pack(streams):
    """The .lsic bytes of encoded layer streams (bytes each), base first."""
    return b"".join(streams)


def parse(data, source="<bytes>"):
    """Parse and check an .lsic file or any byte prefix of one.

    Every complete layer is checked (CRC, field values) and chained to the one below (same
    mode, model digests and layer count; consecutive indexes; parent digest). A layer the
    data end inside is the cut (Container.cut_message), not an error; BitstreamError
    (one line naming `source`) for anything else, and when not one layer is complete.
    """
    data = bytes(data)
    if not data:
        raise BitstreamError(f"{source}: empty file")
    head = data[:len(bitstream.MAGIC)]
    if not bitstream.MAGIC.startswith(head):
        raise BitstreamError(f"{source}: not an {SUFFIX} file of this codec")
    layers, start, parent = [], 0, None
    while start < len(data):
        index = len(layers)
        where = f"{source}: layer {index + 1} (from byte {start})"
        if layers and index >= layers[0].stream.num_layers:
            raise BitstreamError(f"{where}: {len(data) - start} bytes follow the last of "
                                 f"the model's {index} layers")
        try:
            stream, end = bitstream.decode_prefix(data, where, start)
        except TruncatedError:
            break
        named = f"{source}: layer {stream.layer_name} (bytes {start}..{end - 1})"
        if layers:
            first = layers[0].stream
            if stream.num_layers != first.num_layers:
                raise BitstreamError(f"{named}: made by a {stream.num_layers}-layer model, "
                                     f"layer 1 by a {first.num_layers}-layer one")
            bitstream.check_layer(stream, named, index, parent, mode=first.mode,
                                  config_digest=first.config_digest,
                                  weights_digest=first.weights_digest,
                                  tables_digest=first.tables_digest)
        else:
            bitstream.check_layer(stream, named, 0, None)
        layers.append(Layer(stream, data[start:end], start, end, named))
        parent = (f"layer {stream.layer_name}", layers[-1].data)
        start = end
    container = Container(layers, len(data), None, None, source)
    if start < len(data):
        container.cut_index, container.cut_start = len(layers), start
    if not layers:
        raise BitstreamError(f"{source}: no complete layer: the file ends {len(data)} bytes "
                             "into its base layer (cut or truncated)")
    return container


def prefix(data, num_layers, source="<bytes>"):
    """The first `num_layers` layers of an .lsic file (or prefix), as a byte prefix."""
    container = parse(data, source)
    check_available(container, num_layers)
    return bytes(data[:container.end(num_layers)])


def check_available(container, num_layers):
    """BitstreamError unless the file holds `num_layers` (1..) complete layers."""
    source = container.source
    held = len(container.layers)
    if num_layers < 1 or num_layers > container.num_layers:
        raise BitstreamError(f"{source}: cannot take {num_layers} layers: the model that "
                             f"wrote it has {container.num_layers} (pick 1..{held})")
    if num_layers > held:
        cut = container.cut_message()
        raise BitstreamError(
            f"{source}: holds {held} complete layer(s), {num_layers} requested"
            + (f" ({cut})" if cut else "") + ": ask for fewer, or get more of the file")


def describe(container):
    """A JSON-ready summary: mode, model digests, image size and per layer its bytes,
    cumulative bytes and bpp (bytes of layers 1..k over layer k's pixels), size."""
    first = container.streams[0]
    layers, total = [], 0
    for layer in container.layers:
        height, width = layer.stream.image_size
        total += len(layer.data)
        layers.append(dict(name=layer.stream.layer_name, bytes=len(layer.data),
                           cumulative_bytes=total,
                           cumulative_bpp=total * 8 / (height * width),
                           height=height, width=width))
    top = container.streams[-1].image_size
    return dict(
        mode=container.mode, num_layers=container.num_layers,
        complete_layers=len(container.layers), bytes=container.size,
        height=top[0], width=top[1],
        model=dict(config_digest=first.config_digest.hex(),
                   weights_digest=first.weights_digest.hex(),
                   tables_digest=first.tables_digest.hex()),
        layers=layers,
        cut=None if container.cut_index is None else dict(
            layer=container.cut_index + 1, start=container.cut_start,
            bytes_present=container.size - container.cut_start))
