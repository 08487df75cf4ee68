"""Compress an image into one scalable .lsic file; decode any prefix of it.

  python lsic.py compress photo.png photo.lsic [--model quality|spatial|DIR] [--num_layers K]
  python lsic.py decompress photo.lsic photo.png [--num_layers K] [--all_layers]
  python lsic.py truncate photo.lsic small.lsic --num_layers K   # a byte prefix
  python lsic.py info photo.lsic [--json]

A file holds the layers in order (B, e1, ...); any byte prefix of it decodes its complete
layers. decompress uses the shipped model of the file's mode unless --model is given.
"""

import argparse
import json
import os
import sys

from pipeline import cli
from codec import container
from codec.bitstream import BitstreamError
from codec.image import ImageError, write_file_atomic
from models.config import ConfigError, SettingsError


def parse_args(argv):
    parser = cli.parser(__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True,
                                     parser_class=argparse.ArgumentParser)
    compress = commands.add_parser("compress", help="An image -> an .lsic file.")
    compress.add_argument("input", help="Image file (PNG, JPEG, ...).")
    compress.add_argument("output", help="The .lsic file to write.")
    compress.add_argument("--num_layers", type=int, default=None,
                          help="Code only the first K layers (default: all).")
    decompress = commands.add_parser("decompress", help="An .lsic file (or prefix) -> PNG.")
    decompress.add_argument("input", help="The .lsic file, or any byte prefix of one.")
    decompress.add_argument("output", help="The PNG of the top decoded layer.")
    decompress.add_argument("--num_layers", type=int, default=None,
                            help="Decode the first K layers (default: every complete one).")
    decompress.add_argument("--all_layers", action="store_true",
                            help="Write one PNG per decoded layer beside OUTPUT, named "
                                 "<stem>_<layer>.png, instead of OUTPUT alone.")
    for command in (compress, decompress):
        command.add_argument("--model", default=None,
                             help="quality, spatial (the shipped models) or a model "
                                  "directory; default: compress quality, decompress the "
                                  "shipped model of the file's mode.")
        command.add_argument("--tile", type=int, default=None,
                             help="Tile side of the transforms (see eval_quality.py).")
        if command is compress:
            cli.add_resample_flag(command)
    truncate = commands.add_parser("truncate", help="The first K layers, as a byte prefix.")
    truncate.add_argument("input")
    truncate.add_argument("output")
    truncate.add_argument("--num_layers", type=int, required=True)
    info = commands.add_parser("info", help="Mode, model, size and layers of a file.")
    info.add_argument("input")
    info.add_argument("--json", action="store_true", help="As JSON.")
    return parser.parse_args(argv[1:])


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise BitstreamError(f"{path}: cannot read ({error.strerror or error})") from None


def _write(path, data):
    try:
        write_file_atomic(path, data)
    except OSError as error:
        raise ConfigError(f"cannot write '{path}' ({error.strerror or error})") from None


def _load(model, tile):
    from pipeline.api import ScalableCodec
    from models.config import DEFAULT_TILE
    if tile is not None and tile < 0:
        raise ConfigError(f"--tile {tile} must be 0 (no tiling) or a tile side in pixels")
    return ScalableCodec.load(model, DEFAULT_TILE if tile is None else tile)


def compress(args):
    from codec.image import read_image
    image = read_image(args.input)
    codec = _load(args.model or "quality", args.tile)
    data = codec.compress(image, args.num_layers, args.resample)
    _write(args.output, data)
    summary = container.describe(container.parse(data, args.output))
    print(f"{args.output}: {len(data)} bytes, {summary['mode']}, layers "
          + ", ".join(f"{l['name']} {l['cumulative_bytes']} B ({l['cumulative_bpp']:.3f} bpp)"
                      for l in summary["layers"]), flush=True)


def _png_paths(output, names):
    stem, suffix = os.path.splitext(output)
    return [f"{stem}_{name}{suffix or '.png'}" for name in names]


def decompress(args):
    import io
    from PIL import Image
    data = _read(args.input)
    parsed = container.parse(data, args.input)  # before loading a model: fail fast
    container.check_available(parsed, args.num_layers or len(parsed.layers))
    codec = _load(args.model or parsed.mode, args.tile)
    images = codec.decompress(data, args.num_layers, top_only=not args.all_layers,
                              source=args.input)
    names = codec.layer_names[:len(parsed.layers) if args.num_layers is None
                              else args.num_layers]
    paths = _png_paths(args.output, names) if args.all_layers else [args.output]
    encoded = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    for path, png in zip(paths, encoded):  # all encoded first: an error writes nothing
        _write(path, png)
    note = parsed.cut_message()
    if note and args.num_layers is None:
        print(f"note: {args.input}: {note}", file=sys.stderr, flush=True)
    print(", ".join(f"{path} {image.shape[1]}x{image.shape[0]}"
                    for path, image in zip(paths, images)), flush=True)


def truncate(args):
    data = _read(args.input)
    _write(args.output, container.prefix(data, args.num_layers, args.input))
    print(f"{args.output}: {args.num_layers} layer(s), "
          f"{container.parse(data, args.input).end(args.num_layers)} bytes", flush=True)


def info(args):
    summary = container.describe(container.parse(_read(args.input), args.input))
    if args.json:
        print(json.dumps(summary, indent=2), flush=True)
        return
    model = summary["model"]
    print(f"{args.input}: {summary['mode']}-scalable, {summary['complete_layers']} of "
          f"{summary['num_layers']} layers, {summary['width']}x{summary['height']}, "
          f"{summary['bytes']} bytes\nmodel digests: config {model['config_digest']} weights "
          f"{model['weights_digest']} tables {model['tables_digest']}")
    print(f"  {'layer':<6}{'bytes':>9}{'cumulative':>12}{'bpp':>9}{'size':>12}")
    for l in summary["layers"]:
        print(f"  {l['name']:<6}{l['bytes']:>9}{l['cumulative_bytes']:>12}"
              f"{l['cumulative_bpp']:>9.4f}{str(l['width']) + 'x' + str(l['height']):>12}")
    cut = summary["cut"]
    if cut:
        print(f"  layer {cut['layer']} is cut: {cut['bytes_present']} bytes of it from byte "
              f"{cut['start']}")


def main(args):
    {"compress": compress, "decompress": decompress, "truncate": truncate,
     "info": info}[args.command](args)


if __name__ == "__main__":
    # SettingsError: every codec, model and checkpoint error (one line each). info and
    # truncate never load TensorFlow: instant.
    cli.run(main, parse_args, (SettingsError, ImageError),
            needs_tensorflow=lambda args: args.command in ("compress", "decompress"))
