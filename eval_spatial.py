"""Evaluate a spatial-scalable model: one stream per resolution layer, decode, measure.

Layer k is compared with the input's pyramid level k: sizes ceil(H/4) x ceil(W/4),
ceil(H/2) x ceil(W/2) and H x W, made with the --resample filter (default Lanczos, as
create_tfrecords.py) unless --input_image_half and --input_image_quater give them.
Example:
  python eval_spatial.py --input_image kodak/ --output_folder out --checkpoint_dir runs/spatial
  python eval_spatial.py --decompress --num_layers 2 --last_layer_only --output_folder out \
      --checkpoint_dir runs/spatial   # only the half-resolution image
"""

import os

from pipeline import cli
from models.config import ConfigError, SettingsError
from codec.image import ImageError
from pipeline.locking import LockError


def parse_args(argv):
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--input_image", default=None,
                        help="An image file, a folder of images or a glob (full resolution).")
    parser.add_argument("--input_image_half", default=None,
                        help="The half-resolution image (or a folder of same-named images).")
    parser.add_argument("--input_image_quater", default=None,
                        help="The quarter-resolution image (or a folder of same-named images).")
    cli.add_eval_flags(parser, "spatial")
    cli.add_resample_flag(parser)
    return parser.parse_args(argv[1:])


def level_reader(args, num_layers):
    """path -> pyramid (lowest first): derived, or read from the given half/quarter inputs."""
    from codec.image import pyramid, pyramid_sizes, read_image
    given = [args.input_image_quater, args.input_image_half]
    if not any(given):
        return lambda path: pyramid(read_image(path), num_layers, args.resample)
    if not all(given) or num_layers != 3:
        raise ConfigError("give both --input_image_half and --input_image_quater (3-layer "
                          "models only), or neither to derive them")

    def companion(spec, path):
        return os.path.join(spec, os.path.basename(path)) if os.path.isdir(spec) else spec

    def read_levels(path):
        full = read_image(path)
        levels = [read_image(companion(spec, path)) for spec in given] + [full]
        expected = pyramid_sizes(*full.shape[:2], num_layers)
        for level, size, flag in zip(levels, expected, ("quater", "half")):
            if level.shape[:2] != size:
                raise ImageError(f"--input_image_{flag} for '{path}' is {level.shape[1]}x"
                                 f"{level.shape[0]}, expected {size[1]}x{size[0]} (ceil of "
                                 "the full size / 4 and / 2): resize it or omit the flag")
        return levels
    return read_levels


def main(args):
    cli.evaluate_from_flags(args, "spatial", lambda num_layers: level_reader(args, num_layers))


if __name__ == "__main__":
    cli.run(main, parse_args, (SettingsError, ImageError, LockError))
