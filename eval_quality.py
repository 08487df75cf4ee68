"""Evaluate a quality-scalable model: compress, write one stream per layer, decode, measure.

Example:
  python eval_quality.py --input_image kodak/ --output_folder out --checkpoint_dir runs/quality
  python eval_quality.py --decompress --num_layers 1 --output_folder out --checkpoint_dir runs/quality
  python eval_quality.py --decompress --num_layers 3 --last_layer_only --output_folder out \
      --checkpoint_dir runs/quality
"""

from pipeline import cli
from models.config import SettingsError
from codec.image import ImageError
from pipeline.locking import LockError


def parse_args(argv):
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--input_image", default=None,
                        help="An image file, a folder of images or a glob.")
    cli.add_eval_flags(parser, "quality")
    return parser.parse_args(argv[1:])


def main(args):
    cli.evaluate_from_flags(args, "quality")


if __name__ == "__main__":
    cli.run(main, parse_args, (SettingsError, ImageError, LockError))
