"""The model configuration, saved as JSON beside the checkpoint so evaluation needs no flags.

TensorFlow-free: the scripts parse their flags with it before TensorFlow loads. It also holds
the names every layer agrees on: the modes, the entropy models and the layer names.
"""

import dataclasses
import hashlib
import json
import os
import re

CONFIG_NAME = "config.json"
# The analysis transform's total stride (four stride-2 convolutions): coded images and training
# patches are multiples of it.
DOWNSAMPLING = 16
# Tile side (full-resolution pixels) when none is given. With the paper's filters the peak
# memory grows with the tile's area (one tile's activations: hundreds of channels at half
# resolution): a 12 MP encode + decode peaked at 4.7 GiB with 1024-pixel tiles and 3.0 GiB
# with 768 (bench/large_images.py); smaller tiles cost more halo overhead.
DEFAULT_TILE = 768
MODES = ("quality", "spatial")
# Entropy model name -> module that registers it (models/entropy/base.py); first = default.
ENTROPY_MODELS = {
    "hyperprior": "models.entropy.hyperprior",
    "factorized": "models.entropy.factorized",
}

# The paper's settings (see README, "Architecture").
DEFAULTS = {
    "quality": dict(layer_names=["B", "e1", "e2", "e3"], filters=[96, 120, 144, 196],
                    lmbdas=[250.0, 100.0, 50.0, 25.0]),
    "spatial": dict(layer_names=["B", "e1", "e2"], filters=[96, 96, 96],
                    lmbdas=[400.0, 300.0, 200.0]),
}


def layer_names(count):
    """B, e1, e2, ... for `count` layers."""
    return ["B"] + [f"e{k}" for k in range(1, count)]


class SettingsError(Exception):
    """Base of the errors whose message names settings (`settings`: field and argument names
    such as `num_layers`, written as whole words in the message).

    The library speaks of fields; a command line shows the same message with its flags in
    their place (`naming`, used by pipeline/cli.py). Combine with a built-in error type.
    """

    def __init__(self, message, settings=()):
        super().__init__(message)
        self.settings = tuple(settings)

    def naming(self, rename):
        """The message with each named setting replaced by rename(setting); quoted text
        (paths, values) is left alone."""
        parts = re.split(r"('[^']*')", str(self))
        for name in self.settings:
            pattern = re.compile(rf"(?<![\w-]){re.escape(name)}(?![\w-])")
            parts = [part if part.startswith("'") else pattern.sub(rename(name), part)
                     for part in parts]
        return "".join(parts)


class ConfigError(SettingsError, ValueError):
    """A configuration that is missing, unreadable or disagrees with what was asked for."""


@dataclasses.dataclass
class ModelConfig:
    """What defines a trained scalable model: its mode, layers and entropy model."""

    mode: str
    layer_names: list
    filters: list
    lmbdas: list
    entropy_model: str = "hyperprior"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.entropy_model not in ENTROPY_MODELS:
            raise ConfigError(f"unknown entropy model {self.entropy_model!r}: "
                              f"use one of {', '.join(ENTROPY_MODELS)}")
        n = len(self.layer_names)
        if n < 1 or len(self.filters) != n or len(self.lmbdas) != n:
            raise ConfigError("layer_names, filters and lmbdas must have one entry per layer "
                              f"(got {n}, {len(self.filters)}, {len(self.lmbdas)})")
        if any(int(f) < 1 for f in self.filters):
            raise ConfigError(f"filters must be positive integers (got {self.filters})")
        if any(float(l) < 0 for l in self.lmbdas):
            raise ConfigError(f"lambdas must be non-negative (got {self.lmbdas})")
        self.layer_names = [str(n) for n in self.layer_names]
        self.filters = [int(f) for f in self.filters]
        self.lmbdas = [float(l) for l in self.lmbdas]

    @classmethod
    def default(cls, mode, **overrides):
        """The paper's configuration for `mode`, with some fields replaced."""
        fields = dict(DEFAULTS[mode], mode=mode)
        fields.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**fields)

    @property
    def num_layers(self):
        return len(self.layer_names)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    def digest(self):
        """8-byte digest of what the decoder depends on (not the training lambdas)."""
        decoder_fields = dict(dataclasses.asdict(self))
        decoder_fields.pop("lmbdas")
        text = json.dumps(decoder_fields, sort_keys=True).encode()
        return hashlib.sha256(text).digest()[:8]

    def save(self, directory):
        """Write config.json into `directory` atomically."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        temporary = path + ".tmp"
        with open(temporary, "w") as f:
            f.write(self.to_json() + "\n")
        os.replace(temporary, path)

    @classmethod
    def load(cls, directory):
        """Read config.json from a checkpoint directory; ConfigError when absent or invalid."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isdir(directory):
            raise ConfigError(f"checkpoint_dir '{directory}' does not exist: pass a "
                              "directory that a training run wrote", ["checkpoint_dir"])
        if not os.path.exists(path):
            raise ConfigError(f"'{directory}' holds no {CONFIG_NAME}: it is not a checkpoint "
                              "directory of this project (train a model into it first)")
        try:
            with open(path) as f:
                fields = json.load(f)
            return cls(**fields)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"'{path}' is not a valid model configuration ({error})") from None

    def check_matches(self, source, **requested):
        """Raise ConfigError naming both values when an explicitly requested field differs."""
        for name, value in requested.items():
            if value is None:
                continue
            saved = getattr(self, name)
            if saved != value:
                raise ConfigError(f"{name}: the checkpoint in '{source}' was trained with "
                                  f"{saved}, but {value} was requested: drop the flag or use "
                                  "a matching checkpoint")
