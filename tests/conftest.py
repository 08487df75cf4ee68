"""Shared pytest fixtures; the helpers they use are in tests/helpers.py.

Tiny trained checkpoints, shared by tests/test_models.py, test_cli.py and test_robustness.py:
training even a toy model costs a process start and a traced training step (tens of seconds
on 2 CPU cores), so one quality and one spatial checkpoint are trained ONCE per session with
the real train_*.py scripts. They start in the background when the first test runs (never
during collection: `pytest --collect-only` trains nothing) if any selected test uses the
`tiny_checkpoints` fixture, so they overlap with the in-process tests that run first; the
fixture waits for them.

  quality: 2 layers, filters 8,8, hyperprior (the default); trained in two runs, the
           second resuming (its output is kept for test_cli.py's resume test).
  spatial: 3 layers (1/4, 1/2, full), filters 4,4,4, factorized entropy model.
"""
import os
import shutil
import tempfile
import threading
import types

import pytest

from helpers import (TINY_QUALITY_FLAGS, TINY_QUALITY_STEPS, TINY_SPATIAL_FLAGS,
                     TINY_SPATIAL_STEPS, describe, finish, smooth_image, start_script,
                     write_spatial_tfrecords)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_TRAIN_TIMEOUT = 900


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
        write_spatial_tfrecords(self.tfrecords, range(10, 14))  # 64x64 examples

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


@pytest.fixture(autouse=True)
def _seeded_random_state():
    """Every test starts from the same Python, NumPy and TensorFlow random state, so that an
    untrained model's weights (and what a test sees of them) are the same on every machine."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _start_tiny_checkpoints_early(request):
    """When the first test runs: start training the tiny checkpoints if a selected test
    needs them; stop and remove them at the end of the session."""
    global _tiny
    if any("tiny_checkpoints" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        _tiny = _tiny or _TinyCheckpoints()
        _tiny.start()
    yield
    if _tiny is not None:
        _tiny.close()


@pytest.fixture(scope="session")
def tiny_checkpoints():
    """Paths of the tiny trained checkpoints (see the module docstring)."""
    global _tiny
    if _tiny is None:
        _tiny = _TinyCheckpoints()
    return _tiny.wait()
