"""Test helper: run a train script with test-only hooks, chosen by environment variables.

`python tests/distribute_runner.py SCRIPT ARGS...` (from the repository root, with it on
PYTHONPATH, as tests/test_distribute.py runs it)
  RUNNER_NO_NOISE=1     the entropy models' uniform training noise is disabled (it is random per
                        replica, as it must be, so equivalence of strategies can only be checked
                        without it).
  INITIAL_WEIGHTS=PATH  the same initial weights in every run: the first run saves them to PATH
                        (.npz), later runs load them.
  RECORD_REPLICAS=PATH  every training step appends to PATH, per replica, one line with the
                        replica's crops (the mean of each example at each level) and one with the first
                        values of the uniform noise each entropy model drew; the training itself
                        is unchanged.
"""
import os
import runpy
import sys

import numpy as np
from tensorflow_compression.python.ops import math_ops

NOISE_VALUES = 8  # noise values recorded per entropy model call


def _no_noise(f, x, *args, **kwargs):
    return f(x, *args), x


def _replica_id():
    """This replica's index; -1 outside a replica (building the model under a strategy)."""
    import tensorflow as tf
    context = tf.distribute.get_replica_context()
    return -1 if context is None else context.replica_id_in_sync_group


def _recording_noise(perturb_and_apply, path):
    import tensorflow as tf

    def perturb(f, x, *args, **kwargs):
        y, perturbed = perturb_and_apply(f, x, *args, **kwargs)
        noise = tf.reshape(perturbed - x, [-1])[:NOISE_VALUES]
        tf.print("noise", _replica_id(), noise, summarize=-1, output_stream=f"file://{path}")
        return y, perturbed
    return perturb


def _same_initial_weights(model):
    path = os.environ["INITIAL_WEIGHTS"]
    if os.path.exists(path):
        with np.load(path) as saved:
            model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
    else:
        np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})


def _record_crops(model, path):
    """model.train_step (the function the driver distributes) first logs its batch."""
    import tensorflow as tf
    train_step = model.train_step

    def recording_step(batch):
        digests = [tf.reduce_mean(level, axis=[1, 2, 3]) for level in tf.nest.flatten(batch)]
        tf.print("crops", _replica_id(), tf.reshape(tf.stack(digests, axis=1), [-1]),
                 summarize=-1, output_stream=f"file://{path}")
        return train_step(batch)
    model.train_step = recording_step


def _hooked(build_model):
    def build(config):
        model = build_model(config)
        if os.environ.get("INITIAL_WEIGHTS"):
            _same_initial_weights(model)
        if os.environ.get("RECORD_REPLICAS"):
            _record_crops(model, os.environ["RECORD_REPLICAS"])
        return model
    return build


if os.environ.get("RUNNER_NO_NOISE"):
    math_ops.perturb_and_apply = _no_noise
elif os.environ.get("RECORD_REPLICAS"):
    math_ops.perturb_and_apply = _recording_noise(math_ops.perturb_and_apply,
                                                  os.environ["RECORD_REPLICAS"])
from pipeline import training  # noqa: E402
training.build_model = _hooked(training.build_model)
script = os.path.abspath(sys.argv[1])
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
