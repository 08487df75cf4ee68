"""Shipped models: a trained checkpoint's weights, alone and in float16, with its config.json.

A pretrained folder (e.g. `pretrained/quality`) holds `config.json`, `weights.npz` (one
float16 array per model variable, in `model.weights` order, named by the variable; no
optimizer slots, step or data-iterator state: half the size of a float32 checkpoint and a
sixth of a training one) and `coding_tables.npz`, the range-coding tables and integer
hyper-synthesis computed once from those float16 weights (see pipeline/checkpoints.py).
Loading casts the arrays back to float32 exactly, so every machine holds the same weights,
and the shipped tables make the streams decode alike everywhere.

Export a training run:
  python -m pipeline.pretrained --checkpoint_dir runs/quality --output pretrained/quality
"""

import os
import sys

import numpy as np

from codec.image import write_file_atomic
from models.config import ConfigError, ModelConfig

WEIGHTS_NAME = "weights.npz"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "pretrained")
FLOAT16_MAX = float(np.finfo(np.float16).max)


class PretrainedError(ValueError):
    """A pretrained folder that cannot be written or read."""


def shipped_model_dir(mode):
    """The folder of the model shipped for `mode` (`pretrained/<mode>` in the repo)."""
    return os.path.join(SHIPPED, mode)


def is_pretrained(directory):
    """Whether `directory` holds exported weights rather than a training checkpoint."""
    return os.path.exists(os.path.join(directory, WEIGHTS_NAME))


def _names(model):
    return [variable.name for variable in model.weights]


def _same_variable(saved, name):
    """Whether a saved variable name is `name` up to its outer name scopes, which depend on
    how Keras built the layers (models/layers.Sequential), not on the variable."""
    return saved == name or name.endswith("/" + saved) or saved.endswith("/" + name)


def save_weights(model, directory):
    """Write `model`'s config and weights (float16) into `directory`; returns the npz path."""
    arrays = {}
    for index, variable in enumerate(model.weights):
        values = variable.numpy()
        if np.max(np.abs(values), initial=0.0) > FLOAT16_MAX:
            raise PretrainedError(f"variable {variable.name} exceeds the float16 range")
        arrays[f"w{index:04d}"] = values.astype(np.float16)
    arrays["names"] = np.array(_names(model))
    model.config.save(directory)
    path = os.path.join(directory, WEIGHTS_NAME)
    temporary = path + ".tmp.npz"
    np.savez(temporary, **arrays)
    with open(temporary, "rb") as f:
        write_file_atomic(path, f.read())
    os.remove(temporary)
    return path


def load_weights(model, directory):
    """Assign the float16 weights of `directory` to `model` (built from its config.json)."""
    path = os.path.join(directory, WEIGHTS_NAME)
    try:
        with np.load(path) as arrays:
            names = list(arrays["names"])
            values = [arrays[f"w{index:04d}"] for index in range(len(names))]
    except (OSError, KeyError, ValueError) as error:
        raise PretrainedError(f"'{path}' is not a readable weights file ({error})") from None
    current = _names(model)
    if len(names) != len(current) or not all(map(_same_variable, names, current)) or any(
            v.shape != tuple(w.shape) for v, w in zip(values, model.weights)):
        raise PretrainedError(f"'{path}' does not match the model of its config.json")
    for variable, value in zip(model.weights, values):
        variable.assign(value.astype(np.float32))


def export(checkpoint_dir, output):
    """Export the newest checkpoint of `checkpoint_dir` into the pretrained folder `output`."""
    from pipeline.checkpoints import TABLES_NAME, load_trained_model, restore_trained_model
    mode = ModelConfig.load(checkpoint_dir).mode
    path = save_weights(restore_trained_model(checkpoint_dir, mode), output)
    stale = os.path.join(output, TABLES_NAME)
    if os.path.exists(stale):
        os.remove(stale)
    model = load_trained_model(output, mode)  # computes and stores the tables of these weights
    print(f"{output}: {mode} model, filters {model.config.filters}, "
          f"{os.path.getsize(path) / 2**20:.1f} MiB of float16 weights, "
          f"{os.path.getsize(stale) / 2**20:.2f} MiB of coding tables", flush=True)
    return path


def main(argv):
    import argparse
    parser = argparse.ArgumentParser(description="Export a training run as shipped weights.")
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        export(args.checkpoint_dir, args.output)
    except (ConfigError, PretrainedError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
