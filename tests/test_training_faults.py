"""Training survives faults (issue 4): SIGKILL, Ctrl-C, NaN, unreadable data, bad data sets.

Tiny 1-layer factorized models on 64-px patches of synthetic images: the layer count does not
matter for any of these protections. The CLI runs are real subprocesses where a signal or the
exit code matters, and in-process (runpy, same __main__ block) where only the error matters.
"""
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import functions_run_eagerly, run_script_in_process, write_random_images
from pipeline import data, training
from pipeline.checkpoints import orphan_checkpoints
from pipeline.locking import LOCK_NAME
from models.config import ModelConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[250.0],
                     entropy_model="factorized")
PATCH = 64
CLI_FLAGS = ["--filters", "4", "--lmbdas", "250", "--entropy_model", "factorized",
             "--patchsize", str(PATCH), "--batchsize", "1", "--preprocess_threads", "1",
             "--seed", "1", "--checkpoint_secs", "0", "--log_every", "1"]
STARTUP_TIMEOUT = 300  # seconds to the first checkpoint on a loaded 2-core machine


def eager(function):
    """make_step for the driver: run the train step eagerly (no tracing: cheap for a few steps)."""
    return function


def recording(seen, spy=None):
    """make_step that records every batch it is given, then runs the step eagerly.

    With a dict `spy`: spy["optimizer"] is the model's optimizer and spy["before"] the values
    of all its variables (step counter, Adam moments) just before the first step.
    """
    def make(function):
        optimizer = function.__self__.optimizer  # function is model.train_step
        if spy is not None:
            spy["optimizer"] = optimizer

        def step(batch):
            if spy is not None and "before" not in spy:
                spy["before"] = [v.numpy().copy() for v in optimizer.variables]
            seen.append(batch.numpy().copy())
            return function(batch)
        return step
    return make


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_random_images(tmp_path_factory.mktemp("images"), 3, prefix="img")


def patches(glob_pattern, seed=1):
    """The dataset train_quality.py builds from CLI_FLAGS."""
    files = data.training_images(glob_pattern, PATCH)
    return data.patch_dataset(files, PATCH, 1, 1, seed=seed)


def step_of(path):
    return int(path.rsplit("-", 1)[1])


def latest_step(directory):
    path = tf.train.latest_checkpoint(directory)
    return None if path is None else step_of(path)


def listed_step(directory):
    """The step of the state file's newest checkpoint, read without TensorFlow (fast)."""
    try:
        with open(os.path.join(directory, "checkpoint")) as f:
            return int(re.search(r'model_checkpoint_path: ".*-(\d+)"', f.read()).group(1))
    except (OSError, AttributeError):
        return 0


def tensor_keys(reader):
    """A checkpoint's keys except the tf.data iterator state (a variant Python cannot read)."""
    return [key for key, dtype in reader.get_variable_to_dtype_map().items()
            if dtype != tf.variant]


def assert_checkpoints_complete(directory):
    """Every checkpoint the state file lists exists and reads back (TF checks each tensor's CRC)."""
    state = tf.train.get_checkpoint_state(directory)
    assert state is not None and state.all_model_checkpoint_paths
    for path in state.all_model_checkpoint_paths:
        path = os.path.join(directory, os.path.basename(path))
        assert os.path.exists(path + ".index"), path
        reader = tf.train.load_checkpoint(path)
        for key in tensor_keys(reader):
            reader.get_tensor(key)
    return step_of(state.model_checkpoint_path)


def run_script(script, args, capsys):
    """Run a CLI in this process exactly as `python script args` does; (code, stdout, stderr)."""
    return run_script_in_process(script, args)


def assert_one_line_error(code, err, *needles):
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


class Training:
    """A train_quality.py subprocess whose output lines are collected as they come."""

    def __init__(self, args):
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
        self.process = subprocess.Popen(
            [sys.executable, "train_quality.py"] + args, cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.process.stdout, self.out),
                                              (self.process.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def text(self):
        return "\n".join(self.out) + "\n--- stderr ---\n" + "\n".join(self.err)

    def wait_until(self, condition, timeout, what, poll=0.05):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            if self.process.poll() is not None:
                break
            time.sleep(poll)
        self.stop(signal.SIGKILL)
        pytest.fail(f"{what} did not happen (exit {self.process.returncode}):\n{self.text()}")

    def resumed_step(self):
        match = next((m for m in map(re.compile(r"resuming from step (\d+)").search, self.out)
                      if m), None)
        return int(match.group(1)) if match else None

    def stop(self, number=None):
        """Send signal `number` (None: none, wait for the end); the exit code."""
        if number is not None and self.process.poll() is None:
            os.kill(self.process.pid, number)
        code = self.process.wait(timeout=120)
        for reader in self.readers:
            reader.join(timeout=10)
        return code


def kill_mid_save(run, directory, after_step):
    """SIGKILL `run` while a checkpoint beyond `after_step` is being written, if caught.

    TF writes a checkpoint into `<prefix>_temp/` and then renames it into place; the state
    file `checkpoint` is updated last. Polling catches the temp folder or a new .index not
    yet listed in the state file most of the time; otherwise the kill lands right after.
    """
    run.wait_until(lambda: (latest_step(directory) or 0) > after_step, STARTUP_TIMEOUT,
                   f"a checkpoint after step {after_step}")
    deadline = time.monotonic() + 20
    caught = "nothing caught mid-save: killed 20 s after"
    while time.monotonic() < deadline and run.process.poll() is None:
        names = os.listdir(directory)
        if any(name.endswith("_temp") for name in names):
            caught = "a checkpoint's temporary files being written"
            break
        indexes = [int(n[5:-6]) for n in names if re.fullmatch(r"ckpt-\d+\.index", n)]
        if indexes and max(indexes) > listed_step(directory):
            caught = "a checkpoint renamed into place but not yet listed"
            break
        time.sleep(0.001)
    assert run.stop(signal.SIGKILL) == -signal.SIGKILL, run.text()
    return caught


def test_resume_continues_data_position_and_optimizer_state(images, tmp_path, capsys):
    """(e) A run stopped after step 1 and resumed sees batches 2 and 3 of an uninterrupted run,
    and starts its first step with the optimizer exactly as the first run left it (step counter
    and Adam moments). The final weights are not compared: the entropy models' training noise
    comes from TensorFlow's stateful RNG, which no checkpoint holds."""
    straight, resumed, first_run, second_run = [], [], {}, {}
    training.train(CONFIG, patches(images), str(tmp_path / "straight"), 3,
                   checkpoint_secs=1e9, make_step=recording(straight))
    training.train(CONFIG, patches(images), str(tmp_path / "resumed"), 1,
                   checkpoint_secs=1e9, make_step=recording([], first_run))
    left = [v.numpy() for v in first_run["optimizer"].variables]
    capsys.readouterr()
    training.train(CONFIG, patches(images), str(tmp_path / "resumed"), 3,
                   checkpoint_secs=1e9, make_step=recording(resumed, second_run))
    assert "resuming from step 1\n" in capsys.readouterr().out

    assert len(straight) == 3 and len(resumed) == 2
    assert not np.array_equal(straight[0], straight[1])  # a fresh iterator would differ
    np.testing.assert_array_equal(resumed[0], straight[1])
    np.testing.assert_array_equal(resumed[1], straight[2])

    found = second_run["before"]
    assert len(found) == len(left) > 1 and int(found[0]) == 1  # iterations, then the moments
    assert any(np.any(value != 0) for value in left[1:])
    for saved, restored in zip(left, found):
        np.testing.assert_array_equal(saved, restored)


def _synthetic(fail_at, how):
    """Batches of random 64-px images; element `fail_at` (0-based) is NaN or unreadable."""
    png = tf.io.encode_png(tf.zeros((PATCH, PATCH, 3), tf.uint8))

    def element(i):
        image = tf.random.stateless_uniform((PATCH, PATCH, 3), seed=tf.stack([i, 0]))
        if how == "nan":
            return tf.where(i == fail_at, tf.constant(np.nan), image)
        content = tf.where(i == fail_at, tf.constant(b"not a png"), png)
        return image + tf.cast(tf.io.decode_png(content, channels=3), tf.float32)

    return tf.data.Dataset.range(1000).map(element).batch(1)


@pytest.mark.parametrize("how, message", [
    ("nan", "loss is nan at step 3: training stopped"),
    ("unreadable", "cannot read the training data for step 3"),
])
def test_bad_step_stops_and_keeps_last_good_checkpoint(tmp_path, how, message):
    """(c) NaN loss at step 3 (and a batch that fails to decode): a clear error naming the step,
    checkpoints 1 and 2 kept and readable, nothing saved for step 3."""
    directory = str(tmp_path / "run")
    with pytest.raises(training.TrainingError, match=re.escape(message)) as caught:
        training.train(CONFIG, _synthetic(2, how), directory, 10, checkpoint_secs=0,
                       log_every=1, make_step=eager)
    assert "ckpt-2" in str(caught.value) and "\n" not in str(caught.value)
    assert latest_step(directory) == 2
    assert not [n for n in os.listdir(directory) if n.startswith("ckpt-3")]
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(directory))
    for key in tensor_keys(reader):
        value = reader.get_tensor(key)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.all(np.isfinite(value)), key


def _png(path, height, width):
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)


def _write_records(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)


@pytest.fixture(scope="module")
def bad_data(tmp_path_factory):
    """One folder or file per kind of unusable training data."""
    root = tmp_path_factory.mktemp("bad")
    for name in ("not_images", "small", "damaged", "records"):
        (root / name).mkdir()
    (root / "not_images" / "a.png").write_bytes(b"this is not a PNG")
    (root / "not_images" / "notes.txt").write_text("hello")
    _png(root / "small" / "a.png", 40, 90)
    _png(root / "small" / "b.png", 63, 63)
    # Valid header (Pillow reports the size), damaged pixel data: only decoding finds it.
    _png(root / "damaged" / "a.png", 80, 96)
    whole = (root / "damaged" / "a.png").read_bytes()
    (root / "damaged" / "a.png").write_bytes(whole[:len(whole) // 2])
    (root / "records" / "garbage.tfrecords").write_bytes(os.urandom(300))
    (root / "records" / "empty.tfrecords").write_bytes(b"")
    other = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"]))}))
    _write_records(root / "records" / "other_kind.tfrecords", [other.SerializeToString()])
    _write_records(root / "records" / "not_examples.tfrecords", [b"\xff\x00 plain bytes"])
    return root


QUALITY_CASES = {
    "empty glob": ("nothing/*.png", "matches no files"),
    "no readable image": ("not_images/*", "matches no readable images"),
    "all smaller than the patch": ("small/*.png", f"no training image is at least {PATCH}x{PATCH}"),
    "damaged pixel data": ("damaged/*.png", "cannot read the training data"),
}
SPATIAL_CASES = {
    "missing TFRecord": ("records/missing.tfrecords", "matches no files"),
    "corrupt TFRecord": ("records/garbage.tfrecords", "not a readable TFRecord"),
    "empty TFRecord": ("records/empty.tfrecords", "holds no records"),
    "TFRecord of another kind": ("records/other_kind.tfrecords", "not a spatial training TFRecord"),
    "records that are not Examples": ("records/not_examples.tfrecords",
                                      "not a spatial training TFRecord"),
}


@pytest.mark.parametrize("case", sorted(QUALITY_CASES) + sorted(SPATIAL_CASES))
def test_bad_training_data_fails_before_anything_is_written(bad_data, tmp_path, capsys, case):
    """(d) One 'error: ...' line, exit 1, and the checkpoint directory is never created."""
    directory = tmp_path / "ckpt"
    if case in QUALITY_CASES:
        spec, message = QUALITY_CASES[case]
        code, _, err = run_script("train_quality.py", [
            "--train_glob", bad_data / spec, "--checkpoint_dir", directory, "--last_step", 2,
            *CLI_FLAGS], capsys)
    else:
        spec, message = SPATIAL_CASES[case]
        code, _, err = run_script("train_spatial.py", [
            "--train_tfrecords", bad_data / spec, "--checkpoint_dir", directory,
            "--filters", "4,4", "--lmbdas", "1,1", "--patchsize", 32, "--batchsize", 1,
            "--last_step", 2], capsys)
    line = assert_one_line_error(code, err, message)
    if "TFRecord" in case:
        assert os.path.basename(spec) in line
    assert not directory.exists(), sorted(os.listdir(directory))


def assert_took_over(run, directory, killed):
    """`run` took over the lock that the SIGKILLed run `killed` left, saying so."""
    line = next((line for line in run.out if line.startswith("taking over the lock")), "")
    assert line.startswith(f"taking over the lock of '{directory}': PID {killed.process.pid} "
                           f"(train_quality.py) on host {socket.gethostname()} since "), run.text()
    assert line.endswith("is no longer running"), line


def rerun_and_resume(command, directory, complete):
    """Rerun training; it must resume from step `complete` and then save a later checkpoint."""
    run = Training(command)
    run.wait_until(run.resumed_step, STARTUP_TIMEOUT, "'resuming from step N'")
    assert run.resumed_step() == complete, run.text()
    run.wait_until(lambda: latest_step(directory) > complete, STARTUP_TIMEOUT,
                   "a checkpoint after the resume")
    return run


def lock_holder(directory):
    """The PID the lock file of `directory` names, or None."""
    try:
        with open(os.path.join(directory, LOCK_NAME)) as f:
            return json.load(f)["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_two_trainings_on_one_directory_the_second_is_refused(images, tmp_path):
    """The double launch of issue 14. Run A holds the directory (paused with SIGSTOP while it
    holds it, so the overlap is certain); run B, the same command, is refused with one line
    naming A, exit 1, and writes nothing; A then trains to its last step with every checkpoint
    its own and nothing unlisted left behind."""
    directory = str(tmp_path / "run")
    command = ["--train_glob", images, "--checkpoint_dir", directory, "--last_step", "3"]
    command += CLI_FLAGS
    first = Training(command)
    first.wait_until(lambda: lock_holder(directory) == first.process.pid, STARTUP_TIMEOUT,
                     "the first run's lock")
    os.kill(first.process.pid, signal.SIGSTOP)
    try:
        before = sorted(os.listdir(directory))
        code, _, err = run_script_in_process("train_quality.py", command)
        line = assert_one_line_error(
            code, err, f"'{directory}' is being trained by PID {first.process.pid} "
                       f"(train_quality.py) on host {socket.gethostname()} since ")
        assert line.endswith("wait for it to end or use another --checkpoint_dir"), line
        assert sorted(os.listdir(directory)) == before
    finally:
        os.kill(first.process.pid, signal.SIGCONT)
    assert first.stop() == 0, first.text()
    assert "done: step 3," in first.text()
    assert assert_checkpoints_complete(directory) == 3
    assert orphan_checkpoints(directory) == []
    assert not os.path.exists(os.path.join(directory, LOCK_NAME))


def test_orphan_checkpoints_are_reported_and_removed_only_when_asked(images, tmp_path):
    """Checkpoints the state file does not list (another run's, an unfinished save) are named
    at the start of training; --clean_orphans deletes them and nothing else."""
    directory = str(tmp_path / "run")
    training.train(CONFIG, patches(images), directory, 3, checkpoint_secs=0, make_step=eager)
    for name in os.listdir(directory):
        if name.startswith("ckpt-2."):
            shutil.copyfile(os.path.join(directory, name),
                            os.path.join(directory, name.replace("ckpt-2.", "ckpt-7.")))
    os.makedirs(os.path.join(directory, "ckpt-9_temp"))
    open(os.path.join(directory, "ckpt-9_temp", "part-00000-of-00001.index"), "wb").close()
    orphans = orphan_checkpoints(directory)
    assert "ckpt-7.index" in orphans and "ckpt-9_temp" in orphans
    assert not [name for name in orphans if name.startswith(("ckpt-1", "ckpt-2", "ckpt-3"))]

    command = ["--train_glob", images, "--checkpoint_dir", directory, "--last_step", "3",
               *CLI_FLAGS]
    code, out, err = run_script_in_process("train_quality.py", command)
    assert code == 0, err
    assert f"note: '{os.path.join(directory, 'checkpoint')}' does not list these checkpoints" in out
    assert "ckpt-7, ckpt-9_temp. They are kept: --clean_orphans removes them" in out
    assert orphan_checkpoints(directory) == orphans  # reported, not deleted

    code, out, err = run_script_in_process("train_quality.py", command + ["--clean_orphans"])
    assert code == 0, err
    assert "does not list: ckpt-7, ckpt-9_temp" in out and "removed" in out
    assert orphan_checkpoints(directory) == []
    assert assert_checkpoints_complete(directory) == 3  # the listed ones untouched


# Last: the slowest (three real training processes).
def test_sigkill_mid_save_and_at_random_then_sigint_resume_cleanly(images, tmp_path, capsys):
    """(a) kill -9 twice (mid-save, random moment), (b) SIGINT -> 130; every rerun resumes."""
    directory = str(tmp_path / "run")
    command = ["--train_glob", images, "--checkpoint_dir", directory, "--last_step", "100000"]
    command += CLI_FLAGS

    first = Training(command)
    caught = kill_mid_save(first, directory, after_step=1)
    assert "resuming" not in first.text()
    complete = assert_checkpoints_complete(directory)

    second = rerun_and_resume(command, directory, complete)
    assert_took_over(second, directory, first)
    time.sleep(random.Random().uniform(0.0, 1.0))
    assert second.stop(signal.SIGKILL) == -signal.SIGKILL
    assert "cannot resume" not in second.text()
    complete = assert_checkpoints_complete(directory)

    third = rerun_and_resume(command, directory, complete)
    assert_took_over(third, directory, second)
    code = third.stop(signal.SIGINT)
    text = third.text()
    assert code == 130, text
    match = re.search(r"stopped by SIGINT at step (\d+); checkpoint saved", text)
    assert match, text
    interrupted_at = int(match.group(1))
    assert "Traceback" not in text
    assert assert_checkpoints_complete(directory) == interrupted_at
    assert not os.path.exists(os.path.join(directory, LOCK_NAME))  # SIGINT released the lock

    # The rerun (here the same driver in-process, eager steps: no second tracing) resumes there.
    capsys.readouterr()
    final = training.train(CONFIG, patches(images), directory, interrupted_at + 1,
                           checkpoint_secs=0, log_every=1, make_step=eager)
    assert f"resuming from step {interrupted_at}\n" in capsys.readouterr().out
    assert final == interrupted_at + 1 == latest_step(directory)
    print(f"first SIGKILL landed during: {caught}")


def test_train_spatial_trains_on_the_authors_tfrecords(tmp_path, capsys):
    """TFRecords written the authors' way (raw RGB squares, no size features) train."""
    rng = np.random.default_rng(0)
    path = tmp_path / "authors.tfrecords"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for _ in range(2):
            images = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in (64, 32, 16)]
            writer.write(tf.train.Example(features=tf.train.Features(feature={
                key: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()]))
                for key, image in zip(("img_raw_org", "img_raw_half", "img_raw_quater"),
                                      images)})).SerializeToString())
    directory = tmp_path / "ckpt"
    # The training step runs eagerly (the data pipeline, under test, is traced by tf.data
    # as always): tracing a 3-layer step costs ~15 CPU-s, two eager steps a fraction of it.
    with functions_run_eagerly():
        code, out, err = run_script("train_spatial.py", [
            "--train_tfrecords", path, "--checkpoint_dir", directory, "--filters", "4,4,4",
            "--lmbdas", "1,1,1", "--patchsize", 64, "--batchsize", 1, "--last_step", 2,
            "--entropy_model", "factorized"], capsys)
    assert code == 0, err
    assert "step 2/2  loss" in out, out
    assert latest_step(str(directory)) == 2


def test_a_kill_while_old_checkpoints_are_deleted_never_leaves_a_listed_checkpoint_missing(
        tmp_path, monkeypatch):
    """The state file drops a checkpoint before its files go (TF 2.14 deletes first): a
    process dying between the two leaves an unlisted orphan, not a listed missing file."""
    from pipeline.checkpoints import CheckpointManager

    class Killed(BaseException):
        pass

    directory = str(tmp_path)
    checkpoint = tf.train.Checkpoint(v=tf.Variable(1.0))
    manager = CheckpointManager(checkpoint, directory, 2)
    manager.save(checkpoint_number=1)
    manager.save(checkpoint_number=2)

    def die(path):
        raise Killed(path)
    monkeypatch.setattr(tf.io.gfile, "remove", die)
    with pytest.raises(Killed):
        manager.save(checkpoint_number=3)  # must delete ckpt-1: dies on its first file
    assert assert_checkpoints_complete(directory) == 3
    assert [step_of(p) for p in tf.train.get_checkpoint_state(directory)
            .all_model_checkpoint_paths] == [2, 3]
    assert "ckpt-1.index" in orphan_checkpoints(directory)
