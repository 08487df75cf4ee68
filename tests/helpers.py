"""Helpers shared by the tests: synthetic images and running the repo's scripts."""
import contextlib
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The tiny trained checkpoints of conftest.py's `tiny_checkpoints` fixture.
TINY_QUALITY_FLAGS = ["--filters", "8,8", "--lmbdas", "250,50", "--patchsize", "64",
                      "--batchsize", "4", "--learning_rate", "1e-3"]
TINY_QUALITY_STEPS = (150, 160)  # first run, then the resumed run
TINY_SPATIAL_FLAGS = ["--filters", "4,4,4", "--lmbdas", "400,300,200", "--patchsize", "64",
                      "--batchsize", "2", "--learning_rate", "3e-3",
                      "--entropy_model", "factorized"]
TINY_SPATIAL_STEPS = 50  # logged every step: test_models.py checks the loss decreases


def smooth_image(height, width, seed=0):
    """A photo-like uint8 HxWx3 image: a few smooth colour waves plus mild noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    image = np.empty((height, width, 3))
    image[:] = rng.uniform(0.3, 0.7, 3)
    for _ in range(5):
        fy, fx = rng.uniform(-1, 1, 2) * 2 * np.pi / rng.uniform(40, 160)
        phase = rng.uniform(0, 2 * np.pi)
        image += rng.uniform(0.03, 0.12, 3) * np.sin(fy * yy + fx * xx + phase)[..., None]
    image += rng.normal(0, 1.5 / 255, image.shape)
    return np.clip(np.round(image * 255), 0, 255).astype(np.uint8)


def write_random_images(folder, count, prefix=""):
    """`count` PNGs of uniform random 80x96 RGB noise in `folder`; their glob pattern."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for k in range(count):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(
            os.path.join(folder, f"{prefix}{k}.png"))
    return os.path.join(str(folder), "*.png")


def write_spatial_tfrecords(path, seeds, size=64, value_range=(0, 255)):
    """A TFRecord file of spatial training examples as create_tfrecords.py makes them: the
    (full, half, quarter) pyramid of smooth_image(size, size, seed) for each seed, its
    values mapped into `value_range`."""
    import tensorflow as tf
    from codec.image import pyramid
    from pipeline.data import make_example
    low, high = value_range
    with tf.io.TFRecordWriter(str(path)) as writer:
        for seed in seeds:
            image = smooth_image(size, size, seed).astype(np.int32) * (high - low) // 255 + low
            quarter, half, full = pyramid(image.astype(np.uint8), 3)
            writer.write(make_example(full, half, quarter))
    return str(path)


# What importing TensorFlow writes into its process's environment. A child that inherits
# TF2_BEHAVIOR=1 starts eager from the first line of TensorFlow's import, which hides what a
# user's shell shows (pipeline/cli.py, _load_tensorflow_before_absl_init_ends).
TENSORFLOW_SET_ENV = ("TF2_BEHAVIOR", "TPU_ML_PLATFORM")


def with_repo_path(environ):
    """A copy of `environ` whose PYTHONPATH starts with the repository root: a subprocess
    (a helper under tests/, python -c) imports the repo's packages without sys.path edits.
    The variables TensorFlow's import set in this process are left out, as in a new shell."""
    env = {name: value for name, value in environ.items() if name not in TENSORFLOW_SET_ENV}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


# TensorFlow's numeric settings: a script run with `numerics` gets exactly those of them.
NUMERIC_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def _script_env(numerics=None):
    # As in a user's shell: the scripts choose TensorFlow's log level themselves (this file
    # sets TF_CPP_MIN_LOG_LEVEL=2 for the test process, which would let TF's start-up
    # noise into the scripts' stderr).
    env = with_repo_path(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    if numerics is not None:
        for name in NUMERIC_ENV:
            env.pop(name, None)
        env.update(numerics)
    return env


def start_script(script, *args, numerics=None):
    """Popen of a repo CLI script (stdout+stderr captured as text); pair with finish().

    numerics: a dict of NUMERIC_ENV variables to run it under (the others unset), or None
    for the test process's own environment.
    """
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_script_env(numerics))


def finish(process, timeout=600):
    """Wait for a start_script() process; a CompletedProcess."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"{process.args} timed out:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def describe(result):
    """The end of a finished process's output, for assertion messages."""
    return (f"{' '.join(map(str, result.args))}\nexit {result.returncode}\n"
            f"--- stdout ---\n{result.stdout[-3000:]}\n--- stderr ---\n{result.stderr[-3000:]}")


def run_script_in_process(script, args):
    """Run `python script args` in this process (its __main__ block); (code, stdout, stderr)."""
    import contextlib
    import io
    import runpy
    from absl import app  # pylint: disable=import-outside-toplevel
    app._register_and_parse_flags_with_usage.done = False  # absl allows one parse per process
    argv, out, err = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [script] + [str(a) for a in args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(os.path.join(ROOT, script), run_name="__main__")
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@contextlib.contextmanager
def functions_run_eagerly():
    """Inside, tf.functions run eagerly in this process (tf.data still traces its own): for
    a few training steps or coding calls on tiny inputs, far cheaper than tracing them
    (seconds of CPU per function). Only where what a test checks is not the tracing."""
    import tensorflow as tf
    tf.config.run_functions_eagerly(True)
    try:
        yield
    finally:
        tf.config.run_functions_eagerly(False)
