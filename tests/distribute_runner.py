"""Test helper: run a train script with the entropy models' uniform noise disabled and a
the same initial weights in every run: the first run saves them to $INITIAL_WEIGHTS (.npz),
later runs load them.

`python tests/distribute_runner.py SCRIPT ARGS...` — the training noise is random per replica
(as it must be), so equivalence of strategies can only be checked without it.
"""
import os
import runpy
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from tensorflow_compression.python.ops import math_ops  # noqa: E402


def _no_noise(f, x, *args, **kwargs):
    return f(x, *args), x


math_ops.perturb_and_apply = _no_noise


def _same_initial_weights(build_model):
    def build(config):
        model = build_model(config)
        path = os.environ["INITIAL_WEIGHTS"]
        if os.path.exists(path):
            with np.load(path) as saved:
                model.set_weights([saved[f"w{i}"] for i in range(len(saved.files))])
        else:
            np.savez(path, **{f"w{i}": w for i, w in enumerate(model.get_weights())})
        return model
    return build


if os.environ.get("INITIAL_WEIGHTS"):
    from pipeline import training  # noqa: E402
    training.build_model = _same_initial_weights(training.build_model)
script = os.path.join(ROOT, sys.argv[1])
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
