"""Steps/s and images/s of training on 1 vs 2 replicas (tf.distribute mirrored on logical CPU
devices, or all GPUs where there are some): the overhead of distribution.

  python -m bench.distribute [--steps 30] [--batchsize 4] [--filters 16]
Writes bench/results/distribute.json. Each replica count runs train_quality.py in its own
process (logical devices are fixed at TensorFlow start-up) on synthetic images.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def measure(replicas, images, steps, batchsize, filters, patchsize):
    with tempfile.TemporaryDirectory() as checkpoints:
        out = subprocess.run(
            [sys.executable, "train_quality.py", "--train_glob", images, "--checkpoint_dir",
             checkpoints, "--filters", str(filters), "--lmbdas", "250", "--patchsize",
             str(patchsize), "--batchsize", str(batchsize), "--last_step", str(steps),
             "--log_every", str(steps // 2), "--strategy", "mirrored", "--cpu_replicas",
             str(replicas), "--checkpoint_secs", "100000", "--seed", "1"],
            cwd=ROOT, capture_output=True, text=True, check=True).stdout
    # The driver names the replica count it really got (a failed CPU split once gave 1).
    assert f"; {replicas} replicas" in out, out
    # The second window excludes tracing and the first batches.
    seconds = float(re.findall(r"([0-9.]+) s/step", out)[-1])
    return dict(replicas=replicas, steps_per_s=1 / seconds, images_per_s=batchsize / seconds)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batchsize", type=int, default=4)
    parser.add_argument("--filters", type=int, default=16)
    parser.add_argument("--patchsize", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rng = np.random.default_rng(0)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(
                os.path.join(folder, f"{i}.png"))
        results = [measure(r, os.path.join(folder, "*.png"), args.steps, args.batchsize,
                           args.filters, args.patchsize) for r in (1, 2)]
    for r in results:
        print(f"{r['replicas']} replica(s): {r['steps_per_s']:.2f} steps/s, "
              f"{r['images_per_s']:.1f} images/s")
    os.makedirs(os.path.join(ROOT, "bench", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "bench", "results", "distribute.json"), "w") as f:
        json.dump(dict(vars(args), results=results), f, indent=2)


if __name__ == "__main__":
    main()
