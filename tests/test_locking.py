"""One writer per directory (issue 14): pipeline/locking.py, and the eval CLIs holding their
--output_folder. Training's lock (two concurrent runs, SIGKILL, SIGINT) and orphan checkpoints
are tested with the other training faults in tests/test_training_faults.py.

Holders are real processes (a `python -c` holding the lock, or a real eval paused with
SIGSTOP while it holds it), so the refusals and takeovers see what users would see.
"""
import json
import os
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

from helpers import run_script_in_process
from codec.streams import Codec, stream_folders
from models.config import ModelConfig
from models.factory import build_model
from pipeline import cli
from pipeline.checkpoints import load_trained_model
from pipeline.locking import LOCK_NAME, DirectoryLock, LockError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()
# The holder sets Python's own SIGINT handling itself: a child inherits an ignored or blocked
# SIGINT from its parent, and the test process is not a shell's foreground job everywhere.
HOLD = ("import signal, sys, time\nfrom pipeline.locking import DirectoryLock\n"
        "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "with DirectoryLock(sys.argv[1], 'trained', '--checkpoint_dir'):\n"
        "    print('held', flush=True)\n    time.sleep(120)\n")


def start_holder(directory):
    """A separate process holding `directory`'s lock until it is signalled."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held", process.stderr.read()
    return process


def lock_info(directory):
    with open(os.path.join(directory, LOCK_NAME)) as f:
        return json.load(f)


def write_lock(directory, **info):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, LOCK_NAME), "w") as f:
        json.dump(info, f)


def test_second_holder_is_refused_with_the_first_named(tmp_path):
    holder = start_holder(tmp_path / "run")
    try:
        info = lock_info(tmp_path / "run")
        assert (info["pid"], info["host"]) == (holder.pid, HOST)
        with pytest.raises(LockError) as refused:
            with DirectoryLock(str(tmp_path / "run"), "trained", "--checkpoint_dir"):
                pytest.fail("entered a directory another process holds")
        message = str(refused.value)
        assert f"'{tmp_path / 'run'}' is being trained by PID {holder.pid}" in message
        assert f"on host {HOST} since {info['since']}" in message
        assert "use another --checkpoint_dir" in message and "\n" not in message
        assert "--break_lock" not in message  # a live holder of this host is never broken
        with pytest.raises(LockError):  # not even when asked to
            with DirectoryLock(str(tmp_path / "run"), break_lock=True):
                pass
        assert lock_info(tmp_path / "run")["pid"] == holder.pid  # the refusals changed nothing
    finally:
        holder.kill()
        holder.wait()


def test_sigkilled_holder_is_taken_over_with_a_message(tmp_path, capsys):
    holder = start_holder(tmp_path)
    holder.kill()
    holder.wait()
    assert lock_info(tmp_path)["pid"] == holder.pid  # SIGKILL leaves the file behind
    with DirectoryLock(str(tmp_path), "trained") as lock:
        assert lock.held and lock_info(tmp_path)["pid"] == os.getpid()
    out = capsys.readouterr().out
    assert f"taking over the lock of '{tmp_path}': PID {holder.pid}" in out
    assert "is no longer running" in out
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("number", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_and_sigterm_release_the_lock(tmp_path, number):
    holder = start_holder(tmp_path)
    holder.send_signal(number)
    _, err = holder.communicate(timeout=60)
    assert "KeyboardInterrupt" in err  # unwound through the with block, not killed
    assert not (tmp_path / LOCK_NAME).exists()


def test_lock_of_another_host_is_broken_only_when_asked(tmp_path, capsys):
    write_lock(tmp_path, pid=4321, host="elsewhere", since="2026-01-02 03:04:05 UTC",
               time=time.time())
    with pytest.raises(LockError) as refused:
        with DirectoryLock(str(tmp_path), "written", "--output_folder"):
            pass
    message = str(refused.value)
    assert "PID 4321 on host elsewhere since 2026-01-02 03:04:05 UTC" in message
    assert f"this host ({HOST}) cannot tell" in message and "--break_lock" in message
    assert lock_info(tmp_path)["host"] == "elsewhere"
    with DirectoryLock(str(tmp_path), break_lock=True):
        assert lock_info(tmp_path)["pid"] == os.getpid()
    assert "breaking the lock" in capsys.readouterr().out


def test_live_pid_is_not_taken_over_but_a_reused_one_is(tmp_path, capsys):
    """A file naming a running process of this host whose flock is free (a file system whose
    locks do not work, or a PID reused since): refused unless that process started after
    the lock was written (then the PID was reused, and the lock is stale)."""
    parent = os.getppid()
    write_lock(tmp_path, pid=parent, host=HOST, since="earlier", time=time.time())
    with pytest.raises(LockError, match=f"if PID {parent} is not that run, rerun with "
                                        "--break_lock"):
        with DirectoryLock(str(tmp_path)):
            pass
    write_lock(tmp_path, pid=parent, host=HOST, since="1970", time=1000.0)
    with DirectoryLock(str(tmp_path)):
        pass
    assert f"PID {parent} on host {HOST} since 1970 is no longer running" in capsys.readouterr().out


def test_threads_never_hold_it_at_once(tmp_path):
    """flock locks belong to open files, so threads with their own DirectoryLock contend as
    processes do: at most one is ever inside, and every one gets in eventually."""
    inside, most, entered, errors = [0], [0], [0], []
    guard = threading.Lock()

    def worker():
        try:
            for _ in range(25):
                while True:
                    try:
                        with DirectoryLock(str(tmp_path / "shared")):
                            with guard:
                                inside[0] += 1
                                most[0] = max(most[0], inside[0])
                            time.sleep(0.001)
                            with guard:
                                inside[0] -= 1
                                entered[0] += 1
                        break
                    except LockError:
                        time.sleep(0.001)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    (tmp_path / "shared").mkdir()
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert (most[0], entered[0]) == (1, 100)
    assert os.listdir(tmp_path / "shared") == []  # the lock file went with the last one


def test_directories_it_created_go_only_when_left_empty(tmp_path):
    with DirectoryLock(str(tmp_path / "a" / "b" / "c")):
        assert (tmp_path / "a" / "b" / "c" / LOCK_NAME).exists()
    assert not (tmp_path / "a").exists()
    with DirectoryLock(str(tmp_path / "a" / "b" / "c")):
        (tmp_path / "a" / "b" / "c" / "results.json").write_text("{}")
    assert sorted(os.listdir(tmp_path / "a" / "b" / "c")) == ["results.json"]
    (tmp_path / "file").write_text("")
    with pytest.raises(LockError, match="cannot use .* as --checkpoint_dir"):
        with DirectoryLock(str(tmp_path / "file" / "run"), flag="--checkpoint_dir"):
            pass


def test_a_non_chief_worker_takes_no_lock_and_creates_nothing(tmp_path):
    holder = start_holder(tmp_path / "held")
    try:
        with DirectoryLock(str(tmp_path / "held"), chief=False) as lock:
            assert not lock.held
        with DirectoryLock(str(tmp_path / "new"), chief=False):
            pass
        assert not (tmp_path / "new").exists()
        assert lock_info(tmp_path / "held")["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait()


# --- the eval CLIs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An untrained 1-layer checkpoint (coding works the same) and a folder of 2 images."""
    root = tmp_path_factory.mktemp("eval_lock")
    config = ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[250.0],
                         entropy_model="factorized")
    tf.train.CheckpointManager(tf.train.Checkpoint(model=build_model(config)),
                               str(root / "ckpt"), 1).save()
    config.save(str(root / "ckpt"))
    (root / "images").mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)).save(
            root / "images" / f"img{k}.png")
    return root


def snapshot(folder):
    return {path: os.stat(path).st_mtime_ns for path in
            (os.path.join(d, name) for d, _, names in os.walk(folder) for name in names)}


def test_two_evals_on_one_folder_the_second_is_refused(setup, tmp_path):
    """Eval A holds --output_folder (paused with SIGSTOP while it holds it, so the overlap is
    certain); eval B on the same folder is refused with one line naming A and writes nothing;
    A then finishes intact, and its lock file is in no listing."""
    out = tmp_path / "out"
    args = ["--input_image", setup / "images", "--output_folder", out,
            "--checkpoint_dir", setup / "ckpt"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    first = subprocess.Popen([sys.executable, "eval_quality.py", *map(str, args)], cwd=ROOT,
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while first.poll() is None and time.monotonic() < deadline:
            try:
                if lock_info(out)["pid"] == first.pid:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None, first.communicate()
        before = snapshot(out)
        for command in (args, args + ["--break_lock"], ["--decompress"] + args[2:]):
            code, _, err = run_script_in_process("eval_quality.py", command)
            assert code == 1 and "Traceback" not in err, err
            lines = err.strip().splitlines()
            assert len(lines) == 1, err
            assert lines[0].startswith(f"error: '{out}' is being written by PID {first.pid} "
                                       f"(eval_quality.py) on host {HOST} since "), lines[0]
            assert snapshot(out) == before  # the refused run wrote nothing
    finally:
        first.send_signal(signal.SIGCONT)
    stdout, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stdout + stderr
    assert "average over 2 image(s)" in stdout
    with open(out / "results.json") as f:
        results = json.load(f)
    assert [os.path.basename(entry["image"]) for entry in results["images"]] == [
        "img0.png", "img1.png"]
    assert sorted(os.listdir(out)) == ["img0", "img1", "results.json"]


def test_a_lock_file_is_in_no_listing(setup, tmp_path, monkeypatch):
    """A lock left by a killed run in an output folder: the stream scan, --decompress and a new
    evaluation's results ignore it (and each run takes the lock over). In-process runs with
    the model loaded once (loading is not what is tested)."""
    codec = Codec(load_trained_model(str(setup / "ckpt"), "quality"))
    monkeypatch.setattr(cli, "load_codec", lambda args, mode: codec)
    out = tmp_path / "out"
    code, _, err = run_script_in_process("eval_quality.py", [
        "--input_image", setup / "images", "--output_folder", out,
        "--checkpoint_dir", setup / "ckpt"])
    assert code == 0, err
    holder = start_holder(out)
    holder.kill()
    holder.wait()
    assert (out / LOCK_NAME).exists()
    assert stream_folders(str(out)) == [str(out / f"img{k}") for k in range(2)]
    single = out / "img0"
    write_lock(single, pid=holder.pid, host=HOST, since="earlier", time=0.0)
    assert stream_folders(str(single)) == [str(single)]
    code, stdout, err = run_script_in_process("eval_quality.py", [
        "--decompress", "--output_folder", out, "--checkpoint_dir", setup / "ckpt"])
    assert code == 0, err
    assert f"taking over the lock of '{out}': PID {holder.pid}" in stdout
    decoded = [line.split(": decoded ")[0] for line in stdout.splitlines() if ": decoded " in line]
    assert decoded == [str(out / f"img{k}") for k in range(2)]
    write_lock(out, pid=holder.pid, host=HOST, since="earlier", time=0.0)
    code, stdout, err = run_script_in_process("eval_quality.py", [
        "--input_image", setup / "images", "--output_folder", out,
        "--checkpoint_dir", setup / "ckpt"])
    assert code == 0, err
    assert f"taking over the lock of '{out}'" in stdout
    with open(out / "results.json") as f:
        text = f.read()
    assert LOCK_NAME not in text and len(json.loads(text)["images"]) == 2
    assert not (out / LOCK_NAME).exists()
    assert sorted(os.listdir(single)) == [LOCK_NAME, "rec_B.png", "stream_B.tfci"]
