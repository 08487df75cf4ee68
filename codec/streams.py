"""A folder of layer streams and the Codec that writes and reads it.

A Codec is a trained model in coding form plus what its streams must carry (the
configuration, weights and coding-tables digests). Per image the encoder writes one stream
per layer (`stream_<name>.tfci`, checked headers, see codec/bitstream.py); the decoder reads
the first k of them back, decodes, checks the entropy-decoded symbols against the checksums
the encoder stored, and only then writes `rec_<name>.png` at each layer's exact size.
"""

import os

from codec import bitstream
from codec.image import pad_to_multiple, write_file_atomic, write_png
from models.config import DEFAULT_TILE, ConfigError
from models.scalable import PAD_MULTIPLE, DecodingError


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
        padded = [pad_to_multiple(level, PAD_MULTIPLE) for level in levels]
        codes = self.model.compress(padded, reconstruct, self.tile)
        os.makedirs(folder, exist_ok=True)
        results, parent = [], bitstream.BASE_PARENT_DIGEST
        for k, (name, level, code) in enumerate(zip(self.config.layer_names, levels, codes)):
            stream = bitstream.LayerStream(
                mode=self.config.mode, layer_index=k, layer_name=name,
                num_layers=self.config.num_layers, config_digest=self.config_digest,
                weights_digest=self.weights_digest, tables_digest=self.tables_digest,
                parent_digest=parent, image_size=tuple(level.shape[:2]),
                shapes=tuple(code["shapes"]), strings=tuple(code["strings"]),
                symbol_crcs=tuple(map(bitstream.symbols_checksum, code["symbols"])))
            data = bitstream.encode(stream)
            write_file_atomic(os.path.join(folder, bitstream.stream_filename(name)), data)
            parent = bitstream.stream_digest(data)
            height, width = level.shape[:2]
            reconstruction = code["reconstruction"]
            results.append((len(data), code["bits"],
                            None if reconstruction is None else reconstruction[:height, :width]))
        return results

    def check_streams(self, folder, num_layers=None):
        """Read and check the first `num_layers` streams in `folder` (BitstreamError if bad)."""
        num_layers = self.check_num_layers(num_layers)
        return bitstream.read_layer_streams(
            folder, self.config.layer_names, num_layers, mode=self.config.mode,
            config_digest=self.config_digest, weights_digest=self.weights_digest,
            tables_digest=self.tables_digest)

    def decode(self, folder, num_layers=None, last_only=False):
        """Read and check the first `num_layers` streams in `folder`, decode, write rec PNGs.

        Every stream is checked before any PNG is written. last_only=True synthesizes and
        writes only the top decoded layer (its entry alone is not None). Returns
        (reconstructions, sizes in bytes of the streams).
        """
        return self.decode_streams(folder, self.check_streams(folder, num_layers), last_only)

    def decode_streams(self, folder, streams, last_only=False):
        """Decode already checked streams (from check_streams) into rec PNGs in `folder`.

        Every layer's entropy-decoded symbols are verified against the checksums in its
        header before any PNG is written; a mismatch, or any TensorFlow error while
        decoding, is a BitstreamError naming the layer's file.
        """
        def path(stream):
            return os.path.join(folder, bitstream.stream_filename(stream.layer_name))

        try:
            decoded = self.model.decode_layers([(s.strings, s.shapes) for s in streams],
                                               last_only, self.tile)
        except DecodingError as error:
            stream = next(s for s in streams if s.layer_name == error.layer_name)
            raise bitstream.BitstreamError(
                f"{path(stream)}: {error}: the file is damaged, or was not made by this "
                "codec's checkpoint") from None
        for stream, layer in zip(streams, decoded):
            found = tuple(map(bitstream.symbols_checksum, layer["symbols"]))
            if found != stream.symbol_crcs:
                raise bitstream.BitstreamError(
                    f"{path(stream)}: layer {stream.layer_name}: the entropy-decoded symbols "
                    "do not match the encoder's checksum (a damaged payload, or a decoder "
                    "out of step with the encoder): nothing written for it")
        reconstructions = []
        for stream, image in zip(streams, (layer["reconstruction"] for layer in decoded)):
            if image is not None:
                height, width = stream.image_size
                image = image[:height, :width]
                write_png(os.path.join(folder, rec_filename(stream.layer_name)), image)
            reconstructions.append(image)
        sizes = [os.path.getsize(os.path.join(folder, bitstream.stream_filename(s.layer_name)))
                 for s in streams]
        return reconstructions, sizes


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
