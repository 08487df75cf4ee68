"""Shared pytest fixtures; the helpers they use are in tests/helpers.py.

Tiny trained checkpoints, shared by tests/test_models.py, test_cli.py and test_pretrained.py:
training even a toy model costs a process start and a traced training step (tens of seconds
on 2 CPU cores), so one quality and one spatial checkpoint are trained ONCE per test run with
the real train_*.py scripts. They start in the background when the first test runs (never
during collection: `pytest --collect-only` trains nothing) if any selected test uses the
`tiny_checkpoints` fixture, so they overlap with the in-process tests that run first; the
fixture waits for them. Under pytest-xdist (`-n 2`, the README's command) the workers share
one set: whichever worker starts first trains it in the run's common temporary folder while
holding a file lock, and the others wait on that lock and read the result.

  quality: 2 layers, filters 8,8, hyperprior (the default); trained in two runs, the
           second resuming (its output is kept for test_cli.py's resume test).
  spatial: 3 layers (1/4, 1/2, full), filters 4,4,4, factorized entropy model.
"""
import fcntl
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
_OUTPUTS = ("quality", "quality_resumed", "spatial")  # training runs whose stdout tests read


class _TinyCheckpoints:
    """Trains the two tiny checkpoints in a background thread (subprocesses only), once per
    `root`: a file lock in `root` lets several test processes share them."""

    def __init__(self, root, owned):
        self.root = root
        self.owned = owned  # remove `root` at close (no other process reads it)
        self.quality_dir = os.path.join(self.root, "quality")
        self.spatial_dir = os.path.join(self.root, "spatial")
        self.images_dir = os.path.join(self.root, "images")
        self.tfrecords = os.path.join(self.root, "spatial.tfrecords")
        self.processes = []
        self.failure = None
        self._thread = None
        self._lock = None
        os.makedirs(self.root, exist_ok=True)

    def _path(self, name):
        return os.path.join(self.root, name)

    def _write_data(self):
        from PIL import Image
        for folder in (self.images_dir, self.quality_dir, self.spatial_dir):
            shutil.rmtree(folder, ignore_errors=True)  # left by a trainer that died
        os.makedirs(self.images_dir)
        for seed in range(3):
            Image.fromarray(smooth_image(256, 256, seed)).save(
                os.path.join(self.images_dir, f"train{seed}.png"))
        write_spatial_tfrecords(self.tfrecords, range(10, 14))  # 64x64 examples

    def _train(self, key, script, *args):
        process = start_script(script, *args)
        self.processes.append(process)
        result = finish(process, _TRAIN_TIMEOUT)
        with open(self._path(key + ".out"), "w") as f:
            f.write(result.stdout)
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

    def _run_spatial(self):
        self._train("spatial", "train_spatial.py", "--train_tfrecords", self.tfrecords,
                    "--checkpoint_dir", self.spatial_dir, *TINY_SPATIAL_FLAGS,
                    "--preprocess_threads", "2", "--seed", "1", "--log_every", "1",
                    "--last_step", TINY_SPATIAL_STEPS, "--checkpoint_secs", "1000")

    def _guard(self, function):
        try:
            function()
        except BaseException as error:
            self.failure = self.failure or f"{type(error).__name__}: {error}"

    def _run(self):
        """Train both (the lock is held); record the outcome for the other processes."""
        try:
            self._guard(self._write_data)
            if not self.failure:
                spatial = threading.Thread(target=self._guard, args=(self._run_spatial,))
                spatial.start()
                self._guard(self._run_quality)
                spatial.join()
            with open(self._path("failed" if self.failure else "done"), "w") as f:
                f.write(self.failure or "")
        finally:
            self._release()

    def _acquire(self, blocking):
        self._lock = open(self._path(".lock"), "a")  # pylint: disable=consider-using-with
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            return True
        except BlockingIOError:
            self._release()
            return False

    def _release(self):
        if self._lock is not None:
            self._lock.close()  # closing the file drops the lock
            self._lock = None

    def _finished(self):
        return os.path.exists(self._path("done")) or os.path.exists(self._path("failed"))

    def _start_training(self):
        """Train in a background thread; the caller holds the lock, which _run releases."""
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def start(self):
        """Start training unless it is trained, or another process is training it."""
        if self._thread is None and self._acquire(blocking=False):
            if self._finished():
                self._release()
            else:
                self._start_training()

    def wait(self):
        self.start()
        if self._thread is not None:
            self._thread.join()
        else:  # another process trains them: its lock is released when it is done
            self._acquire(blocking=True)
            finished = self._finished()
            self._release()
            if not finished:  # that process died before finishing: train them here
                self._acquire(blocking=True)
                self._start_training()
                self._thread.join()
        if os.path.exists(self._path("failed")):
            with open(self._path("failed")) as f:
                pytest.fail(f.read() or "tiny checkpoint training failed", pytrace=False)
        outputs = {}
        for key in _OUTPUTS:
            with open(self._path(key + ".out")) as f:
                outputs[key] = f.read()
        return types.SimpleNamespace(
            root=self.root, quality_dir=self.quality_dir, spatial_dir=self.spatial_dir,
            images_dir=self.images_dir, quality_steps=TINY_QUALITY_STEPS,
            quality_output=outputs["quality"], resumed_output=outputs["quality_resumed"],
            spatial_output=outputs["spatial"])

    def close(self):
        """At the end of the session. Shared checkpoints are finished for the other workers
        (their training has its own timeout); private ones are stopped and removed."""
        if not self.owned:
            if self._thread is not None:
                self._thread.join()
            return
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()
        if self._thread is not None:
            self._thread.join(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)


_tiny = None


def _tiny_checkpoints(tmp_path_factory):
    """The process's _TinyCheckpoints: private to a plain pytest run; under pytest-xdist, in
    the folder that every worker of the run shares (pytest rotates it away later)."""
    global _tiny
    if _tiny is None:
        if os.environ.get("PYTEST_XDIST_WORKER"):
            root = os.path.join(str(tmp_path_factory.getbasetemp().parent), "tiny_checkpoints")
            _tiny = _TinyCheckpoints(root, owned=False)
        else:
            _tiny = _TinyCheckpoints(tempfile.mkdtemp(prefix="tiny_checkpoints_"), owned=True)
    return _tiny


# The slowest test files (each one to a few minutes of CPU on 2 cores), slowest first: under
# pytest-xdist's --dist loadfile the workers then take the long files first and finish
# together. The other files keep pytest's order after them.
SLOW_TEST_FILES = ("test_distribute.py", "test_portable.py", "test_cli.py",
                   "test_training_faults.py", "test_pretrained.py", "test_models.py",
                   "test_robustness.py", "test_tiling.py")


def pytest_collection_modifyitems(items):
    rank = {name: k for k, name in enumerate(SLOW_TEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # a stable sort


@pytest.fixture(autouse=True)
def _seeded_random_state():
    """Every test starts from the same Python, NumPy and TensorFlow random state, so that an
    untrained model's weights (and what a test sees of them) are the same on every machine."""
    import tensorflow as tf
    tf.keras.utils.set_random_seed(0)


@pytest.fixture(scope="session", autouse=True)
def _start_tiny_checkpoints_early(request, tmp_path_factory):
    """When the first test runs: start training the tiny checkpoints if a selected test
    needs them; at the end of the session, finish or remove them (see close())."""
    if any("tiny_checkpoints" in getattr(item, "fixturenames", ())
           for item in request.session.items):
        _tiny_checkpoints(tmp_path_factory).start()
    yield
    if _tiny is not None:
        _tiny.close()


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory):
    """Paths of the tiny trained checkpoints (see the module docstring)."""
    return _tiny_checkpoints(tmp_path_factory).wait()
