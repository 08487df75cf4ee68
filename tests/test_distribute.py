"""tf.distribute training (issue 12): mirrored on 2 logical CPUs equals the default strategy;
multi_worker with 2 local processes trains, resumes, and a dead worker ends the other."""
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
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--filters", "4", "--lmbdas", "250", "--entropy_model", "factorized",
         "--patchsize", "64", "--batchsize", "4", "--preprocess_threads", "1", "--seed", "1",
         "--log_every", "1", "--checkpoint_secs", "1000"]
TIMEOUT = 240


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(
            folder / f"{i}.png")
    return str(folder / "*.png")


def _train(images, checkpoint_dir, *extra, env=None, no_noise=False, **popen):
    command = ([sys.executable, os.path.join(ROOT, "tests", "distribute_runner.py")]
               if no_noise else [sys.executable]) + [
        "train_quality.py", "--train_glob", images, "--checkpoint_dir", str(checkpoint_dir),
        *FLAGS, *extra]
    environment = dict(os.environ, **(env or {}))
    environment.pop("TF_CONFIG", None) if not env or "TF_CONFIG" not in env else None
    return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def _losses(output):
    return [float(v) for v in re.findall(r"loss ([-0-9.e+]+)", output)]


def test_mirrored_on_two_cpus_matches_default(images, tmp_path):
    runs = {}
    for strategy in ("default", "mirrored"):
        process = _train(images, tmp_path / strategy, "--last_step", "20", "--strategy",
                         strategy, "--cpu_replicas", "2", no_noise=True,
                         env={"INITIAL_WEIGHTS": str(tmp_path / "initial.npz")})
        out, err = process.communicate(timeout=TIMEOUT)
        assert process.returncode == 0, err[-2000:]
        runs[strategy] = _losses(out)
    assert len(runs["default"]) == len(runs["mirrored"]) == 20
    np.testing.assert_allclose(runs["mirrored"], runs["default"], rtol=1e-3)
    assert runs["default"][-1] < runs["default"][0]  # it trained


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _cluster(images, checkpoint_dir, *extra):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(_train(images, checkpoint_dir, "--strategy", "multi_worker", *extra,
                                env={"TF_CONFIG": json.dumps(config)}))
    return processes


def test_multi_worker_trains_resumes_and_fails_cleanly(images, tmp_path):
    directory = tmp_path / "run"
    processes = _cluster(images, directory, "--last_step", "4")
    outputs = [p.communicate(timeout=TIMEOUT) for p in processes]
    for process, (out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-2000:]
    assert "done: step 4" in outputs[0][0]
    assert os.path.exists(directory / "ckpt-4.index")  # the chief wrote it

    # The chief's checkpoint resumes, here under the default strategy.
    single = _train(images, directory, "--last_step", "5")
    out, err = single.communicate(timeout=TIMEOUT)
    assert single.returncode == 0, err[-2000:]
    assert "resuming from step 4" in out

    # Killing one worker ends the other with an error, not a hang.
    # A shorter collective timeout than the default 120 s: the survivor gives up sooner.
    processes = _cluster(images, tmp_path / "killed", "--last_step", "100000",
                         "--collective_timeout", "30")
    chief, worker = processes
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(tmp_path / "killed" / "config.json"):
        assert time.monotonic() < deadline and chief.poll() is None
        time.sleep(0.5)
    worker.send_signal(signal.SIGKILL)
    out, err = chief.communicate(timeout=TIMEOUT)
    assert chief.returncode == 1, err[-2000:]
    # TensorFlow's coordination service may still log (C++, timestamped) while shutting down.
    ours = [line for line in err.strip().splitlines()
            if not re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ", line)]
    assert ours[-1].startswith("error: ") and "worker" in ours[-1], err[-2000:]
