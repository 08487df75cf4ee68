"""The codec as a Python API: an RGB image in, one .lsic file's bytes out, and back.

    from pipeline.api import ScalableCodec
    codec = ScalableCodec.load("quality")          # or "spatial", or a model directory
    data = codec.compress(rgb)                     # uint8 (H, W, 3) -> bytes
    images = codec.decompress(data, num_layers=2)  # [layer B, layer e1], uint8 arrays
    images = codec.decompress(data[:1000])         # any prefix: its complete layers

The same encoder and decoder as eval_quality.py and eval_spatial.py (codec.streams.Codec):
the bytes are those scripts' stream files back to back (codec/container.py).
"""

import os

from codec import container
from codec.image import DEFAULT_RESAMPLE, pyramid
from models.config import DEFAULT_TILE, MODES, ConfigError, ModelConfig


class ScalableCodec:
    """A trained scalable model as a bytes-in, bytes-out codec; `load` makes one."""

    def __init__(self, codec, directory=None):
        self.codec = codec          # codec.streams.Codec: the model and its digests
        self.directory = directory  # where the model was loaded from

    @classmethod
    def load(cls, model="quality", tile=DEFAULT_TILE):
        """The shipped model of a mode ("quality", "spatial") or a model directory (a
        training run's --checkpoint_dir or an exported folder). tile: see --tile."""
        from codec.streams import Codec  # TensorFlow loads here, not at import
        from pipeline.checkpoints import load_trained_model
        from pipeline.pretrained import shipped_model_dir
        directory = shipped_model_dir(model) if model in MODES else model
        if not os.path.isdir(directory):
            raise ConfigError(f"no model in '{directory}': give quality, spatial or a "
                              "directory that train_*.py or pipeline.pretrained wrote",
                              ["model"])
        mode = ModelConfig.load(directory).mode
        return cls(Codec(load_trained_model(directory, mode), tile), directory)

    @property
    def mode(self):
        return self.codec.config.mode

    @property
    def layer_names(self):
        return list(self.codec.config.layer_names)

    def levels(self, image, resample=DEFAULT_RESAMPLE):
        """The image each layer codes: the image itself (quality), or its pyramid (spatial:
        ceil(H/4) x ceil(W/4), ceil(H/2) x ceil(W/2), H x W for three layers)."""
        n = self.codec.config.num_layers
        return pyramid(image, n, resample) if self.mode == "spatial" else [image] * n

    def compress(self, image, num_layers=None, resample=DEFAULT_RESAMPLE):
        """The .lsic bytes of a uint8 (H, W, 3) image: its first `num_layers` layers (all
        when None)."""
        num_layers = self.codec.check_num_layers(num_layers)
        levels = self.levels(_checked_image(image), resample)[:num_layers]
        streams = self.codec.encode_streams(levels, reconstruct=False, estimate_bits=False)
        return container.pack(data for data, _, _ in streams)

    def decompress(self, data, num_layers=None, top_only=False, source="<bytes>"):
        """The images of the first `num_layers` layers of .lsic bytes (all complete layers
        when None), base first, each at its layer's size; top_only=True: only the top one
        (a one-element list; the layers below are entropy-decoded, not synthesized).

        Any byte prefix of a file decodes its complete layers. BitstreamError (one line
        naming `source`) for damaged or foreign data, another model's file or too few
        layers; nothing is returned then.
        """
        layers = self.codec.check_container(container.parse(data, source), num_layers)
        images = [image for _, image in self.codec.decoded_images(
            [layer.stream for layer in layers], [layer.source for layer in layers], top_only)]
        return images[-1:] if top_only else images

    @staticmethod
    def info(data, source="<bytes>"):
        """What an .lsic file (or prefix) holds, without a model: container.describe."""
        return container.describe(container.parse(data, source))


def _checked_image(image):
    import numpy as np
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected a uint8 (height, width, 3) RGB image, got {image.dtype} "
                         f"{image.shape}")
    return image
