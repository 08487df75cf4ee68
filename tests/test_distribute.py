"""tf.distribute training (issue 12): mirrored on 2 logical CPUs equals the default strategy;
the spatial model's TFRecords train and resume under mirrored, with independent crops and
noise per replica; multi_worker with 2 local processes trains, resumes, stops together on
SIGTERM to the chief, and a dead worker ends the other at once."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import (finish, functions_run_eagerly, run_script_in_process, with_repo_path,
                     write_random_images, write_spatial_tfrecords)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--filters", "4", "--lmbdas", "250", "--entropy_model", "factorized",
         "--patchsize", "64", "--batchsize", "4", "--preprocess_threads", "1", "--seed", "1",
         "--log_every", "1"]
SPATIAL_FLAGS = ["--filters", "4,4", "--lmbdas", "400,200", "--entropy_model", "factorized",
                 "--patchsize", "64", "--batchsize", "4", "--preprocess_threads", "1",
                 "--seed", "1", "--log_every", "1"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_random_images(tmp_path_factory.mktemp("images"), 6)


def _start(script, args, hooks=None, tf_config=None):
    """Popen of a train script; with `hooks` (environment variables of
    tests/distribute_runner.py) through that runner."""
    runner = [os.path.join(ROOT, "tests", "distribute_runner.py")] if hooks else []
    environment = with_repo_path(dict(os.environ, **(hooks or {})))
    environment.pop("TF_CONFIG", None)
    if tf_config:
        environment["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen([sys.executable, *runner, script, *map(str, args)], cwd=ROOT,
                            env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _train(images, checkpoint_dir, *extra, hooks=None, tf_config=None):
    return _start("train_quality.py", ["--train_glob", images, "--checkpoint_dir",
                                       checkpoint_dir, *FLAGS, *extra], hooks, tf_config)


def _ok(process):
    result = finish(process, TIMEOUT)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def _losses(output):
    return [float(v) for v in re.findall(r"loss ([-0-9.e+]+)", output)]


def test_mirrored_on_two_cpus_matches_default(images, tmp_path):
    # Both runs at once (half the wall time): the second waits for the first's initial weights.
    hooks = {"RUNNER_NO_NOISE": "1", "INITIAL_WEIGHTS": str(tmp_path / "initial.npz")}
    args = ["--last_step", "20", "--checkpoint_secs", "1000", "--cpu_replicas", "2"]
    default = _train(images, tmp_path / "default", *args, hooks=hooks)
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(hooks["INITIAL_WEIGHTS"]):
        assert time.monotonic() < deadline and default.poll() is None
        time.sleep(0.2)
    mirrored = _train(images, tmp_path / "mirrored", *args, "--strategy", "mirrored",
                      hooks=hooks)
    outputs = {"default": _ok(default), "mirrored": _ok(mirrored)}
    assert "; 2 replicas" in outputs["mirrored"]
    runs = {name: _losses(output) for name, output in outputs.items()}
    assert len(runs["default"]) == len(runs["mirrored"]) == 20
    np.testing.assert_allclose(runs["mirrored"], runs["default"], rtol=1e-3)
    assert runs["default"][-1] < runs["default"][0]  # it trained


@pytest.fixture(scope="module")
def spatial_mirrored(tmp_path_factory):
    """train_spatial.py under mirrored on 2 logical CPUs, from two TFRecord files: 2 steps
    recording each replica's crops and noise (tests/distribute_runner.py), then a rerun to
    step 3. (record lines, first output, resumed output, checkpoint dir)."""
    root = tmp_path_factory.mktemp("spatial")
    files = ",".join(write_spatial_tfrecords(root / f"part{k}.tfrecords", seeds, size=96)
                     for k, seeds in enumerate(((0, 1, 2), (3, 4, 5))))
    record = root / "replicas.txt"
    args = ["--train_tfrecords", files, "--checkpoint_dir", root / "run", *SPATIAL_FLAGS,
            "--checkpoint_secs", "1000", "--strategy", "mirrored", "--cpu_replicas", "2"]
    first = _ok(_start("train_spatial.py", [*args, "--last_step", "2"],
                       hooks={"RECORD_REPLICAS": str(record)}))
    resumed = _ok(_start("train_spatial.py", [*args, "--last_step", "3"]))
    return record.read_text().splitlines(), first, resumed, root / "run"


def test_spatial_tfrecords_train_checkpoint_and_resume_under_mirrored(spatial_mirrored):
    _, first, resumed, directory = spatial_mirrored
    assert len(_losses(first)) == 2 and "done: step 2" in first
    assert "resuming from step 2" in resumed and "done: step 3" in resumed
    assert os.path.exists(directory / "ckpt-3.index")


def _per_replica(lines, kind):
    """{replica: [values of each record of `kind`, in order]} from the runner's record."""
    found = {}
    for line in lines:
        match = re.fullmatch(rf"{kind} (\d+) (.*)", line)
        if match:
            values = np.array([float(v) for v in re.findall(r"[-0-9.e+]+", match.group(2))])
            found.setdefault(int(match.group(1)), []).append(values)
    return found


def test_replicas_draw_independent_crops_and_noise(spatial_mirrored):
    lines = spatial_mirrored[0]
    crops, noise = _per_replica(lines, "crops"), _per_replica(lines, "noise")
    assert sorted(crops) == sorted(noise) == [0, 1], lines[:4]
    # Each step gives each replica its own 2 examples (x 2 levels) of the global batch of 4.
    assert len(crops[0]) == len(crops[1]) == 2
    for a, b in zip(crops[0], crops[1]):
        assert a.size == b.size == 4 and not np.allclose(a, b), (a, b)
    # Every entropy model call of every step: uniform noise in [-0.5, 0.5), a different draw
    # on each replica (and on each step).
    assert len(noise[0]) == len(noise[1]) >= 4
    for a, b in zip(noise[0], noise[1]):
        assert a.size == b.size == 8 and np.all(np.abs(np.concatenate([a, b])) <= 0.5 + 1e-3)
        assert not np.allclose(a, b), (a, b)
    assert not np.allclose(noise[0][0], noise[0][len(noise[0]) // 2])


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster(images, checkpoint_dir, *extra):
    """Chief and worker of a 2-worker local cluster training the quality model."""
    return _cluster_of("train_quality.py", ["--train_glob", images, "--checkpoint_dir",
                                            checkpoint_dir, *FLAGS, *extra])


def _cluster_of(script, args, hooks=lambda index: None):
    """Chief and worker of a 2-worker local cluster running `script` with `args` (and the
    runner's `hooks(index)` for worker `index`)."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    return [_start(script, [*args, "--strategy", "multi_worker"], hooks(index),
                   {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})
            for index in range(2)]


def _wait_for(path, processes):
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no {path} after {TIMEOUT} s"
        for process in processes:
            assert process.poll() is None, finish(process).stderr[-2000:]
        time.sleep(0.2)


def _our_lines(text):
    """`text` without TensorFlow's C++ log lines (timestamped), which its coordination
    service may print while shutting down."""
    return [line for line in text.strip().splitlines()
            if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", line)]


def test_multi_worker_trains_resumes_stops_together_and_fails_cleanly(images, tmp_path):
    directory = tmp_path / "run"
    outputs = [_ok(p) for p in _cluster(images, directory, "--last_step", "3",
                                        "--checkpoint_secs", "1000")]
    assert "done: step 3" in outputs[0] and os.path.exists(directory / "ckpt-3.index")
    # The other worker saved into a temporary directory, deleted at its exit.
    temporary = re.search(r"done: step 3, checkpoint (\S+)", outputs[1]).group(1)
    assert not temporary.startswith(str(directory)) and not os.path.exists(
        os.path.dirname(temporary))

    # Resumed under multi_worker; SIGTERM to the chief: both save after the same step, exit 130.
    chief, worker = _cluster(images, directory, "--last_step", "100000",
                             "--checkpoint_secs", "0")
    _wait_for(directory / "ckpt-5.index", (chief, worker))
    chief.send_signal(signal.SIGTERM)
    results = [finish(p, TIMEOUT) for p in (chief, worker)]
    stopped = []
    for result in results:
        assert result.returncode == 130, result.stderr[-2000:]
        assert "resuming from step 3" in result.stdout
        stopped.append(int(re.search(r"stopped by SIGTERM at step (\d+)",
                                     result.stdout).group(1)))
    assert stopped[0] == stopped[1] >= 5
    assert os.path.exists(directory / f"ckpt-{stopped[0]}.index")

    # The chief's checkpoint resumes under the default strategy: here, in this process (the
    # script's own __main__ block), its one step run eagerly (no process start, no tracing).
    with functions_run_eagerly():
        code, single, err = run_script_in_process("train_quality.py", [
            "--train_glob", images, "--checkpoint_dir", directory, *FLAGS,
            "--last_step", stopped[0] + 1])
    assert code == 0, err[-2000:]
    assert f"resuming from step {stopped[0]}" in single
    assert f"done: step {stopped[0] + 1}" in single

    # The spatial model on two TFRecord files, one of dark and one of bright images: the
    # files are sharded, each worker's crops come from its own file. Then killing one worker
    # ends the other at once with a one-line error, not a hang. (The collective timeout
    # bounds it where a dead peer is not detected at once.)
    files = [write_spatial_tfrecords(tmp_path / f"{name}.tfrecords", seeds, 96, values)
             for name, seeds, values in (("dark", (0, 1, 2), (0, 80)),
                                         ("bright", (3, 4, 5), (175, 255)))]
    records = [tmp_path / f"worker{index}.txt" for index in range(2)]
    chief, worker = _cluster_of(
        "train_spatial.py", ["--train_tfrecords", ",".join(files), "--checkpoint_dir",
                             tmp_path / "killed", *SPATIAL_FLAGS, "--last_step", "100000",
                             "--checkpoint_secs", "0", "--collective_timeout", "30"],
        hooks=lambda index: {"RECORD_REPLICAS": str(records[index])})
    _wait_for(tmp_path / "killed" / "ckpt-2.index", (chief, worker))
    worker.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    result = finish(chief, TIMEOUT)
    assert result.returncode == 1, result.stderr[-2000:]
    assert time.monotonic() - killed < 60, result.stderr[-2000:]
    ours = _our_lines(result.stderr)
    assert ours[-1].startswith("error: training step ") and "worker" in ours[-1], ours
    worker.wait()
    brightness = []
    for index, path in enumerate(records):
        crops = _per_replica(path.read_text().splitlines(), "crops")
        assert list(crops) == [index] and len(crops[index]) >= 2  # its replica, 2+ steps
        brightness.append({bool(value > 0.5) for step in crops[index] for value in step})
    assert sorted(brightness, key=str) == [{False}, {True}], brightness
