"""Shipped models: a trained checkpoint's weights, alone and in float16, with its config.json.

A pretrained folder (e.g. `pretrained/quality`) holds `config.json`, `weights.npz` (one
float16 array per model variable, in `model.weights` order, named by the variable; no
optimizer slots, step or data-iterator state: half the size of a float32 checkpoint and a
sixth of a training one) and `coding_tables.npz`, the range-coding tables and integer
hyper-synthesis computed once from those float16 weights. The format (save_weights,
load_weights) is in pipeline/checkpoints.py.
Loading casts the arrays back to float32 exactly, so every machine holds the same weights,
and the shipped tables make the streams decode alike everywhere.

Export a training run:
  python -m pipeline.pretrained --checkpoint_dir runs/quality --output pretrained/quality
"""

import os
import sys

from models.config import ConfigError, ModelConfig
# The folder's weights format lives with the other trained-model files (one-way imports).
from pipeline.checkpoints import (TABLES_NAME, WEIGHTS_NAME, PretrainedError,  # noqa: F401
                                  is_pretrained, load_trained_model, load_weights,
                                  restore_trained_model, save_weights)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(REPO, "pretrained")


def shipped_model_dir(mode):
    """The folder of the model shipped for `mode` (`pretrained/<mode>` in the repo)."""
    return os.path.join(SHIPPED, mode)


def export(checkpoint_dir, output):
    """Export the newest checkpoint of `checkpoint_dir` into the pretrained folder `output`."""
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
