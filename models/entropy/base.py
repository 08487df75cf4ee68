"""The contract between the layer loop (models/scalable.py) and one layer's entropy model,
and the name -> class registry.

An entropy model codes one latent tensor (the base latent or an enhancement residual, NHWC)
and has two forms:
- training form: `model(tensor, training)` -> (noisy (training) or quantized tensor, estimated
  bits per batch element);
- coding tables: `coding_tables()` computes, once, from the final float weights every array
  the coder needs (range-coding tables, quantization offsets, integer networks) as a dict of
  numpy arrays; these are stored beside the checkpoint (pipeline/checkpoints.py).
- coding form, made by `load_tables(tables)` from those arrays alone (never from the float
  weights, so that every machine codes with the same integers): `compress(tensor,
  estimate_bits=True)` -> (strings, shapes, dequantized tensor, estimated bits per batch
  element or None when estimate_bits=False, symbols), and
  `decompress(strings, shapes)` -> (the same dequantized tensor, the same symbols), from what
  the streams carry. `num_strings` strings, one int32 vector per string whose static shape
  is given by `shape_specs()` (the first is the latent's [height, width]), and per string
  the int32 tensor of symbols it codes (the stream header carries their checksums).

Adding an entropy model: one module with a subclass decorated `@register("name")`, and its
name -> module line in `models.config.ENTROPY_MODELS` (TensorFlow-free, for the flags).
"""

import importlib

import tensorflow as tf

from models import config

# Values per row band over which `compress` evaluates the estimated bits (tiling.row_bands_sum):
# the likelihoods take about 14 float32 copies of the tensor, about 1 GiB for a 24 MP image's
# latent at once.
BITS_BAND_ELEMENTS = 2 ** 20

_CLASSES = {}


def register(name):
    """Class decorator: `ModelConfig(entropy_model=name)` builds this class."""
    def decorate(cls):
        _CLASSES[name] = cls
        config.ENTROPY_MODELS.setdefault(name, cls.__module__)
        return cls
    return decorate


def unregister(name):
    """Forget a model registered at run time (tests)."""
    _CLASSES.pop(name, None)
    config.ENTROPY_MODELS.pop(name, None)


def entropy_model_class(name):
    """The class registered as `name` (its module is imported on first use)."""
    if name not in config.ENTROPY_MODELS:
        raise ValueError(f"unknown entropy model {name!r}: use one of "
                         f"{', '.join(config.ENTROPY_MODELS)}")
    if name not in _CLASSES:
        importlib.import_module(config.ENTROPY_MODELS[name])
    return _CLASSES[name]


def make_entropy_model(kind, channels, name=None):
    """The entropy model registered as `kind`, for `channels` channels."""
    return entropy_model_class(kind)(channels, name=name)


class EntropyModel(tf.keras.layers.Layer):
    """Base class of the per-layer entropy models (see the module docstring)."""

    num_strings = 1

    def __init__(self, channels, name=None):
        super().__init__(name=name)
        self.channels = channels

    def shape_specs(self):
        """Static specs of the shape vectors `decompress` takes, one per string."""
        return [tf.TensorSpec((2,), tf.int32)] * self.num_strings

    def call(self, tensor, training):
        raise NotImplementedError

    def coding_tables(self):
        """Every array the coding form needs, computed from the current weights."""
        raise NotImplementedError

    def load_tables(self, tables):
        """Build the coding form from `coding_tables()`'s arrays (possibly read from disk)."""
        raise NotImplementedError

    def prepare_coding(self):
        """Build the coding form from the current weights (tables computed in memory)."""
        self.load_tables(self.coding_tables())

    def compress(self, tensor, estimate_bits=True):
        """(strings, shapes, dequantized tensor, estimated bits or None, symbols per string).
        The estimate (the likelihoods of every element) is about a third of the eager
        coding time, and a sender needs only the strings."""
        raise NotImplementedError

    def decompress(self, strings, shapes):
        """(dequantized tensor, symbols per string) from `compress`'s strings and shapes."""
        raise NotImplementedError
