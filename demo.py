"""Demo: code a real photo with the shipped quality-scalable model, or train a tiny one first.

  python demo.py            evaluate pretrained/quality on a held-out photo (no training)
  python demo.py --train    train a tiny model for ~2 minutes on eight photos, then evaluate it

The photos are real ones bundled with scikit-image (installed by requirements.txt): eight for
training, a held-out one (NASA's rocket) for evaluation. Everything goes to --workdir.
"""

import os
import subprocess
import sys

from absl import app
from absl.flags import argparse_flags

from pipeline import sample_photos

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv):
    parser = argparse_flags.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="demo_run", help="Where photos, checkpoints and "
                        "outputs go.")
    parser.add_argument("--train", action="store_true",
                        help="Train a tiny model first instead of using the shipped one.")
    parser.add_argument("--last_step", type=int, default=300, help="Training steps (--train).")
    return parser.parse_args(argv[1:])


def run(script, *flags):
    command = [sys.executable, os.path.join(HERE, script), *flags]
    print("$ " + " ".join(command[1:]), flush=True)
    subprocess.run(command, check=True)


def main(args):
    test_image, = sample_photos.export(os.path.join(args.workdir, "test"), sample_photos.HELD_OUT)
    model = []  # the shipped model: eval_quality.py's default
    if args.train:
        photos = os.path.join(args.workdir, "photos")
        sample_photos.export(photos)
        checkpoints = os.path.join(args.workdir, "quality_model")
        run("train_quality.py", "--train_glob", os.path.join(photos, "*"), "--checkpoint_dir",
            checkpoints, "--filters", "16,16,16,16", "--patchsize", "64", "--batchsize", "8",
            "--last_step", str(args.last_step), "--learning_rate", "1e-3", "--log_every", "50")
        model = ["--checkpoint_dir", checkpoints]
    run("eval_quality.py", "--input_image", test_image, "--output_folder",
        os.path.join(args.workdir, "output"), *model)


if __name__ == "__main__":
    try:
        app.run(main, flags_parser=parse_args)
    except subprocess.CalledProcessError as error:
        sys.exit(error.returncode)
