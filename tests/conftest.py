"""Shared pytest setup: quiet TensorFlow, make the repo importable."""
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


# --- Tiny trained checkpoints, shared by tests/test_models.py and tests/test_cli.py -----------
#
# Training even a toy model costs a process start and a traced training step (tens of
# seconds on 2 CPU cores), so one quality and one spatial checkpoint are trained ONCE per
# session with the real train_*.py scripts. The scripts start in the background as soon as
# collection finds a test that uses the `tiny_checkpoints` fixture (so they overlap with the
# in-process tests that run first); the fixture waits for them.
#
#   quality: 2 layers, filters 8,8, hyperprior (the default); trained in two runs, the
#            second resuming (its output is kept for test_cli.py's resume test).
#   spatial: 3 layers (1/4, 1/2, full), filters 4,4,4, factorized entropy model.
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

TINY_QUALITY_FLAGS = ["--filters", "8,8", "--lmbdas", "250,50", "--patchsize", "64",
                      "--batchsize", "4", "--learning_rate", "1e-3"]
TINY_QUALITY_STEPS = (150, 160)  # first run, then the resumed run
TINY_SPATIAL_FLAGS = ["--filters", "4,4,4", "--lmbdas", "400,300,200", "--patchsize", "64",
                      "--batchsize", "2", "--learning_rate", "3e-3",
                      "--entropy_model", "factorized"]
TINY_SPATIAL_STEPS = 50  # logged every step: test_models.py checks the loss decreases
_TRAIN_TIMEOUT = 900


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


def _script_env():
    # As in a user's shell: the scripts choose TensorFlow's log level themselves (this file
    # sets TF_CPP_MIN_LOG_LEVEL=2 for the test process, which would let TF's start-up
    # noise into the scripts' stderr).
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    return env


def start_script(script, *args):
    """Popen of a repo CLI script (stdout+stderr captured as text); pair with finish()."""
    return subprocess.Popen([sys.executable, os.path.join(ROOT, script), *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_script_env())


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


class _TinyCheckpoints:
    """Trains the two tiny checkpoints in a background thread (subprocesses only)."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="tiny_checkpoints_")
        self.quality_dir = os.path.join(self.root, "quality")
        self.spatial_dir = os.path.join(self.root, "spatial")
        self.images_dir = os.path.join(self.root, "images")
        self.tfrecords = os.path.join(self.root, "spatial.tfrecords")
        self.results = {}
        self.processes = []
        self.failure = None
        self._thread = None

    def _write_data(self):
        from PIL import Image
        os.makedirs(self.images_dir)
        for seed in range(3):
            Image.fromarray(smooth_image(256, 256, seed)).save(
                os.path.join(self.images_dir, f"train{seed}.png"))
        # Spatial examples: (full, half, quarter) 64x64 triples, as create_tfrecords.py makes.
        import tensorflow as tf
        from pipeline.data import make_example
        from codec.image import pyramid
        with tf.io.TFRecordWriter(self.tfrecords) as writer:
            for seed in range(4):
                quarter, half, full = pyramid(smooth_image(64, 64, 10 + seed), 3)
                writer.write(make_example(full, half, quarter))

    def _train(self, key, script, *args):
        process = start_script(script, *args)
        self.processes.append(process)
        result = finish(process, _TRAIN_TIMEOUT)
        self.results[key] = result
        if result.returncode != 0:
            raise AssertionError(f"tiny {key} training failed:\n{describe(result)}")

    def _run_quality(self):
        common = ["--train_glob", os.path.join(self.images_dir, "*.png"),
                  "--checkpoint_dir", self.quality_dir, *TINY_QUALITY_FLAGS,
                  "--preprocess_threads", "2", "--seed", "1", "--log_every", "50",
                  "--checkpoint_secs", "1000"]
        self._train("quality", "train_quality.py", *common,
                    "--last_step", TINY_QUALITY_STEPS[0])
        self._train("quality_resumed", "train_quality.py", *common,
                    "--last_step", TINY_QUALITY_STEPS[1])

    def _run(self):
        try:
            spatial = threading.Thread(target=self._guard, args=(self._run_spatial,))
            spatial.start()
            self._guard(self._run_quality)
            spatial.join()
        except BaseException as error:  # pragma: no cover - reported by the fixture
            self.failure = self.failure or f"{type(error).__name__}: {error}"

    def _run_spatial(self):
        self._train("spatial", "train_spatial.py", "--train_tfrecords", self.tfrecords,
                    "--checkpoint_dir", self.spatial_dir, *TINY_SPATIAL_FLAGS,
                    "--preprocess_threads", "2", "--seed", "1", "--log_every", "1",
                    "--last_step", TINY_SPATIAL_STEPS, "--checkpoint_secs", "1000")

    def _guard(self, function):
        try:
            function()
        except BaseException as error:
            self.failure = self.failure or str(error)

    def start(self):
        if self._thread is None:
            self._write_data()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()

    def wait(self):
        self.start()
        self._thread.join()
        if self.failure:
            pytest.fail(self.failure, pytrace=False)
        return types.SimpleNamespace(
            root=self.root, quality_dir=self.quality_dir, spatial_dir=self.spatial_dir,
            images_dir=self.images_dir, quality_steps=TINY_QUALITY_STEPS,
            quality_output=self.results["quality"].stdout,
            resumed_output=self.results["quality_resumed"].stdout,
            spatial_output=self.results["spatial"].stdout)

    def close(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


_tiny = None


def pytest_collection_finish(session):
    """Start training the tiny checkpoints early when a collected test needs them."""
    global _tiny
    if any("tiny_checkpoints" in getattr(item, "fixturenames", ()) for item in session.items):
        _tiny = _TinyCheckpoints()
        _tiny.start()


def pytest_sessionfinish(session, exitstatus):
    if _tiny is not None:
        _tiny.close()


@pytest.fixture(scope="session")
def tiny_checkpoints():
    """Paths of the tiny trained checkpoints (see the comment above _TinyCheckpoints)."""
    global _tiny
    if _tiny is None:
        _tiny = _TinyCheckpoints()
    return _tiny.wait()


def run_script_in_process(script, args):
    """Run `python script args` in this process (its __main__ block); (code, stdout, stderr)."""
    import contextlib
    import io
    import runpy
    from absl import app
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
