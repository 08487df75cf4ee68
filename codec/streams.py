"""A folder of layer streams and the Codec that writes and reads it.

A Codec is a trained model in coding form plus what its streams must carry (the
configuration, weights and coding-tables digests). Per image the encoder writes one stream
per layer (`stream_<name>.tfci`, checked headers, see codec/bitstream.py); the decoder reads
the first k of them back, decodes, checks the entropy-decoded symbols against the checksums
the encoder stored, and only then writes `rec_<name>.png` at each layer's exact size.
"""

import ctypes
import os

# TensorFlow's oneDNN CPU allocator serves large tensors from a BFC pool that never returns
# memory to the system, so coding's big short-lived tensors (transform tiles, the networks
# over the whole latent) leave the process at the highest total it ever reached, ratcheting
# up layer after layer. Its system allocator frees them (bench/memory_stages.py measured the
# difference: README, "Large images"). TensorFlow reads the variable at its first tensor
# allocation, so it is set here, before a Codec can run anything; an explicit setting wins.
os.environ.setdefault("TF_ONEDNN_USE_SYSTEM_ALLOCATOR", "1")

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number
MMAP_THRESHOLD = 1 << 20


def _fix_malloc_mmap_threshold():
    """Make glibc map and unmap every allocation of MMAP_THRESHOLD bytes or more.

    With the system allocator, glibc's malloc serves the tensors. Above its mmap threshold an
    allocation is mapped and unmapped when freed, but the threshold rises to the size of every
    freed mapping (up to 32 MiB), after which tensors come from the heaps of its per-thread
    arenas, which keep freed memory in fragments: the resident size crept up stage after
    stage. A threshold set once does not rise. MALLOC_MMAP_THRESHOLD_ in the environment
    wins; not glibc: nothing to do.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


_fix_malloc_mmap_threshold()

from codec import bitstream  # noqa: E402
from codec import container as container_module  # noqa: E402
from codec.image import pad_to_multiple, write_file_atomic, write_png  # noqa: E402
from models.config import DEFAULT_TILE, ConfigError  # noqa: E402
from models.scalable import PAD_MULTIPLE, DecodingError  # noqa: E402


def rec_filename(layer_name):
    return f"rec_{layer_name}.png"


class Codec:
    """A trained model plus what its streams must carry (digests), for one mode."""

    def __init__(self, model, tile=DEFAULT_TILE):
        self.model = model
        self.tile = tile  # tile side in pixels of the transforms (models/tiling.py); 0: off
        self.config = model.config
        self.config_digest = self.config.digest()
        self.weights_digest = model.weights_digest()
        self.tables_digest = model.tables_digest()

    def check_num_layers(self, num_layers):
        """The number of layers to decode: all when None; a clear error when out of range."""
        n = self.config.num_layers
        if num_layers is None:
            return n
        if not 1 <= num_layers <= n:
            raise ConfigError(f"num_layers {num_layers} is out of range: this model has "
                              f"{n} layers ({', '.join(self.config.layer_names)})",
                              ["num_layers"])
        return num_layers

    def encode(self, levels, folder, reconstruct=True):
        """Code the image's levels (one uint8 array per layer) into stream files in `folder`.

        Returns per layer (bytes written, estimated bits, encoder-side reconstruction; None
        with reconstruct=False, which skips the synthesis transforms).
        """
        return list(self.encode_layers(levels, folder, reconstruct))

    def encode_layers(self, levels, folder, reconstruct=True):
        """As encode, but yields each layer's (bytes, bits, reconstruction) once its stream
        file is written, so that a caller dropping each reconstruction holds one at a time."""
        os.makedirs(folder, exist_ok=True)
        for name, (data, bits, reconstruction) in zip(
                self.config.layer_names, self.encode_streams(levels, reconstruct)):
            write_file_atomic(os.path.join(folder, bitstream.stream_filename(name)), data)
            yield len(data), bits, reconstruction
            del reconstruction

    def encode_streams(self, levels, reconstruct=True, estimate_bits=True):
        """Code the first len(levels) layers: yields per layer (its stream's bytes, estimated
        bits or None with estimate_bits=False, encoder-side reconstruction at the level's
        size or None with reconstruct=False).
        The one encoder of the eval scripts (files), the .lsic container and the API."""
        parent = bitstream.BASE_PARENT_DIGEST
        codes = self.model.compress_layers(_padded_once(levels), reconstruct, self.tile,
                                           estimate_bits)
        for k, (name, level, code) in enumerate(zip(self.config.layer_names, levels, codes)):
            stream = bitstream.LayerStream(
                mode=self.config.mode, layer_index=k, layer_name=name,
                num_layers=self.config.num_layers, config_digest=self.config_digest,
                weights_digest=self.weights_digest, tables_digest=self.tables_digest,
                parent_digest=parent, image_size=tuple(level.shape[:2]),
                shapes=tuple(code["shapes"]), strings=tuple(code["strings"]),
                symbol_crcs=tuple(map(bitstream.symbols_checksum, code["symbols"])))
            data = bitstream.encode(stream)
            parent = bitstream.stream_digest(data)
            height, width = level.shape[:2]
            bits, reconstruction = code["bits"], code["reconstruction"]
            del code, stream
            yield (data, bits,
                   None if reconstruction is None else reconstruction[:height, :width])
            del reconstruction

    def check_container(self, container, num_layers=None):
        """The first `num_layers` (all complete ones when None) layers of a parsed .lsic
        file (codec/container.py), checked against this model: their streams."""
        def check(index, parent):
            layer = container.layers[index]
            bitstream.check_layer(
                layer.stream, layer.source, index, parent, layer_names=self.config.layer_names,
                mode=self.config.mode, config_digest=self.config_digest,
                weights_digest=self.weights_digest, tables_digest=self.tables_digest)
            return f"layer {layer.stream.layer_name}", layer.data

        check(0, None)  # another mode or model: said before any count
        num_layers = self.check_num_layers(
            len(container.layers) if num_layers is None else num_layers)
        container_module.check_available(container, num_layers)
        parent = None
        for index in range(num_layers):
            parent = check(index, parent)
        return container.layers[:num_layers]

    def check_streams(self, folder, num_layers=None):
        """Read and check the first `num_layers` streams in `folder` (BitstreamError if bad)."""
        num_layers = self.check_num_layers(num_layers)
        return bitstream.read_layer_streams(
            folder, self.config.layer_names, num_layers, mode=self.config.mode,
            config_digest=self.config_digest, weights_digest=self.weights_digest,
            tables_digest=self.tables_digest)

    def decode(self, folder, num_layers=None, last_only=False, keep_images=True):
        """Read and check the first `num_layers` streams in `folder`, decode, write rec PNGs.

        Every stream is checked before any PNG is written. last_only=True synthesizes and
        writes only the top decoded layer (its entry alone is not None). Returns
        (reconstructions, sizes in bytes of the streams); keep_images: see decode_streams.
        """
        return self.decode_streams(folder, self.check_streams(folder, num_layers), last_only,
                                   keep_images)

    def decode_streams(self, folder, streams, last_only=False, keep_images=True):
        """Decode already checked streams (from check_streams) into rec PNGs in `folder`.

        Each layer's PNG is written to a hidden pending file as soon as it is synthesized
        (decoded_images verifies its symbols first) and renamed into place once every layer
        is verified (removed on an error), so one reconstruction is held at a time. Returns
        (reconstructions, sizes in bytes of the streams); with keep_images=False the
        reconstructions are dropped and their entries are the PNGs' paths instead (None
        where last_only skipped a layer).
        """
        pending, images = [], []
        sources = [os.path.join(folder, bitstream.stream_filename(s.layer_name))
                   for s in streams]
        try:
            for stream, image in self.decoded_images(streams, sources, last_only):
                if image is None:
                    images.append(None)
                    continue
                final = os.path.join(folder, rec_filename(stream.layer_name))
                pending.append((os.path.join(folder, f".{rec_filename(stream.layer_name)}"
                                                     ".pending"), final))
                write_png(pending[-1][0], image)
                images.append(image if keep_images else final)
                del image
        except BaseException:
            _remove(name for name, _ in pending)
            raise
        for name, final in pending:
            os.replace(name, final)
        return images, [os.path.getsize(path) for path in sources]

    def decoded_images(self, streams, sources, last_only=False):
        """Decode checked streams (base first): yields per layer (stream, its uint8 image at
        the layer's size; None where last_only skips it).

        Each layer's entropy-decoded symbols are verified against the checksums in its
        header before its image is yielded; a mismatch, or any TensorFlow error while
        decoding, is a BitstreamError naming the layer's source (sources[k]).
        """
        decoded = self.model.iter_decode([(s.strings, s.shapes) for s in streams],
                                         last_only, self.tile)
        index = 0
        try:
            for index, (stream, layer) in enumerate(zip(streams, decoded)):
                found = tuple(map(bitstream.symbols_checksum, layer["symbols"]))
                if found != stream.symbol_crcs:
                    raise bitstream.BitstreamError(
                        f"{sources[index]}: layer {stream.layer_name}: the entropy-decoded "
                        "symbols do not match the encoder's checksum (a damaged payload, or a "
                        "decoder out of step with the encoder): nothing written for it")
                image = layer.pop("reconstruction")
                del layer
                if image is not None:
                    height, width = stream.image_size
                    image = image[:height, :width]
                yield stream, image
                del image
        except DecodingError as error:
            index = next(k for k, s in enumerate(streams) if s.layer_name == error.layer_name)
            raise bitstream.BitstreamError(
                f"{sources[index]}: {error}: the file is damaged, or was not made by this "
                "codec's checkpoint") from None


def _remove(paths):
    for name in paths:
        try:
            os.remove(name)
        except OSError:
            pass


def _padded_once(levels):
    """Each level padded to a multiple of PAD_MULTIPLE, lazily; a level equal (the same
    array) to the one before reuses its padded copy, and one already of such sides is
    not copied (the quality mode codes one image in every layer)."""
    source = padded = None
    for level in levels:
        if level is not source:
            source, padded = level, None  # drop the previous copy before making the next
            height, width = level.shape[:2]
            padded = (level if height % PAD_MULTIPLE == 0 and width % PAD_MULTIPLE == 0
                      else pad_to_multiple(level, PAD_MULTIPLE))
        yield padded


def _holds_streams(folder):
    return any(name.startswith("stream_") and name.endswith(".tfci")
               for name in os.listdir(folder))


def stream_folders(output_folder):
    """`output_folder` if it holds stream files, else its subfolders that do (sorted).

    A folder with any stream_*.tfci counts, so that a missing base layer next to an
    enhancement layer is reported by name when its streams are read.
    """
    if not os.path.isdir(output_folder):
        raise bitstream.BitstreamError(f"{output_folder}: no such folder of streams")
    if _holds_streams(output_folder):
        return [output_folder]
    folders = sorted(os.path.join(output_folder, d) for d in os.listdir(output_folder)
                     if os.path.isdir(os.path.join(output_folder, d))
                     and _holds_streams(os.path.join(output_folder, d)))
    if not folders:
        raise bitstream.BitstreamError(
            f"{output_folder}: no stream_*.tfci here or in its subfolders: "
            "point output_folder at the streams eval wrote", ["output_folder"])
    return folders
