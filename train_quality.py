"""Train a quality-scalable model (layers B, e1, e2, e3 at full resolution).

Example (toy size, a couple of minutes on a CPU):
  python train_quality.py --train_glob 'photos/*.png' --checkpoint_dir runs/quality \
      --filters 16,16 --lmbdas 250,50 --patchsize 64 --batchsize 4 --last_step 200
"""

from pipeline import cli
from models.config import SettingsError
from pipeline.locking import LockError


def parse_args(argv):
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--train_glob", default="images/*.png",
                        help="Glob (or folder) of training images (PNG/JPEG/BMP).")
    parser.add_argument("--checkpoint_dir", default="train",
                        help="Where checkpoints, config.json and TensorBoard logs go.")
    cli.add_layer_flags(parser, "quality")
    parser.add_argument("--batchsize", type=int, default=8, help="Patches per batch.")
    parser.add_argument("--patchsize", type=int, default=256, help="Side of the random crops.")
    cli.add_training_flags(parser)
    cli.add_downscale_flags(parser)
    return parser.parse_args(argv[1:])


def main(args):
    from pipeline import data
    config = cli.config_from_flags(args, "quality")
    cli.check_training_flags(args)
    files = data.training_images(args.train_glob, args.patchsize)
    cli.train_from_flags(args, config, lambda seed: data.patch_dataset(
        files, args.patchsize, args.batchsize, args.preprocess_threads, seed=seed,
        downscale=args.downscale, downscale_sources=args.downscale_sources))


if __name__ == "__main__":
    cli.run(main, parse_args, (SettingsError, LockError))
