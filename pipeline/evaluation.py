"""The evaluation driver of both eval scripts: compress, write streams, decode, measure.

Per image the encoder writes one stream per layer (`stream_<name>.tfci`); the decoder then
reads those files back (checked headers, see codec/streams.py), decodes the first k
layers and writes `rec_<name>.png` at each layer's exact size. Metrics compare those PNG
pixels with the input (or the input's pyramid level in spatial mode).
"""

import collections
import hashlib
import json
import math
import os
import time

import numpy as np

from codec.image import ImageError, read_image, write_file_atomic
from codec.streams import rec_filename, stream_folders
from pipeline import metrics
from pipeline.locking import LOCK_NAME

RESULTS_NAME = "results.json"
# Per layer k (README, "Differences from the released code", maps them to the authors' names):
# eval_bpp / actual_bpp: estimated / real bits of layers 0..k over layer k's pixels;
# payload_bpp: the same as actual_bpp without the stream headers (the range-coded strings alone,
# what eval_bpp estimates); bytes and layer_bpp: layer k's own stream; summed_eval_bpp
# (spatial): the sum over layers 0..k of each layer's estimated bits over its own pixels, the
# authors' spatial eval_bpp.
FIELDS = ("eval_bpp", "actual_bpp", "payload_bpp", "bytes", "layer_bpp", "psnr", "ms_ssim")
SPATIAL_FIELDS = ("height", "width", "summed_eval_bpp")
AVERAGED_FIELDS = FIELDS + ("summed_eval_bpp",)  # sizes differ between images: not averaged


def _finite_or_none(value):
    return None if value is None or not math.isfinite(value) else float(value)


def measure(codec, levels, encoded, payload_sizes, reconstructions):
    """Per-layer results (FIELDS): rates of layers 0..k over the pixels of layer k's image,
    layer k's own rate, quality. payload_sizes: per layer, the bytes of its range-coded
    strings; reconstructions: any iterable of the decoded images (read one at a time when it
    is a generator)."""
    spatial = codec.config.mode == "spatial"
    layers, total_bytes, total_payload, total_bits, summed_bpp = [], 0, 0, 0.0, 0.0
    for name, level, (size, bits, _), payload, decoded in zip(
            codec.config.layer_names, levels, encoded, payload_sizes, reconstructions):
        pixels = level.shape[0] * level.shape[1]
        total_bytes += size
        total_payload += payload
        total_bits += bits
        summed_bpp += bits / pixels
        entry = dict(name=name, eval_bpp=total_bits / pixels,
                     actual_bpp=metrics.bpp(total_bytes, pixels),
                     payload_bpp=metrics.bpp(total_payload, pixels), bytes=size,
                     layer_bpp=metrics.bpp(size, pixels),
                     psnr=_finite_or_none(metrics.psnr(level, decoded)),
                     ms_ssim=_finite_or_none(metrics.ms_ssim(level, decoded)))
        del decoded  # before the next one is read
        if spatial:
            entry.update(height=level.shape[0], width=level.shape[1],
                         summed_eval_bpp=summed_bpp)
        layers.append(entry)
    return layers


def _image_digest(image):
    return hashlib.sha256(np.ascontiguousarray(image)).digest()


def average_layers(images):
    """Average each numeric field per layer over the images (None where any is None)."""
    if not images:
        return []
    averaged = []
    for k, first in enumerate(images[0]["layers"]):
        entry = {"name": first["name"]}
        for field in AVERAGED_FIELDS:
            if field not in first:
                continue
            values = [image["layers"][k][field] for image in images if k < len(image["layers"])]
            entry[field] = None if any(v is None for v in values) else float(np.mean(values))
        averaged.append(entry)
    return averaged


def format_table(layers):
    """The per-layer table printed on the console."""
    header = (f"  {'layer':<6}{'eval_bpp':>10}{'actual_bpp':>12}{'payload_bpp':>13}{'bytes':>9}"
              f"{'layer_bpp':>11}"
              f"{'psnr':>8}{'ms_ssim':>9}")
    if layers and "summed_eval_bpp" in layers[0]:
        header += f"{'summed_eval_bpp':>17}"
    if layers and "height" in layers[0]:
        header += f"{'size':>12}"
    lines = [header]
    for entry in layers:
        psnr = "inf" if entry["psnr"] is None else f"{entry['psnr']:.2f}"
        ms_ssim = "n/a" if entry["ms_ssim"] is None else f"{entry['ms_ssim']:.4f}"
        line = (f"  {entry['name']:<6}{entry['eval_bpp']:>10.4f}{entry['actual_bpp']:>12.4f}"
                f"{entry['payload_bpp']:>13.4f}{entry['bytes']:>9.0f}{entry['layer_bpp']:>11.4f}{psnr:>8}{ms_ssim:>9}")
        if "summed_eval_bpp" in entry:
            line += f"{entry['summed_eval_bpp']:>17.4f}"
        if "height" in entry:
            line += f"{entry['height']}x{entry['width']:<}".rjust(12)
        lines.append(line)
    return "\n".join(lines)


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress(done, total, elapsed):
    """'[done/total] elapsed h:mm:ss, ETA h:mm:ss' (the ETA from the mean time per image)."""
    remaining = elapsed / done * (total - done)
    return f"[{done}/{total}] elapsed {_duration(elapsed)}, ETA {_duration(remaining)}"


def output_folders(inputs, output_folder):
    """Where each input's files go: `output_folder` itself for a single input, else
    `output_folder/<stem>`; inputs sharing a stem (photo.png, photo.jpg) keep their whole file
    name (photo.png/, photo.jpg/), and any name still taken (or the folder's lock file's)
    gets a -2, -3, ... suffix, so no image's outputs overwrite another's."""
    if len(inputs) == 1:
        return [output_folder]
    stems = [os.path.splitext(os.path.basename(path))[0] for path in inputs]
    counts = collections.Counter(stems)
    names = [os.path.basename(path) if counts[stem] > 1 else stem
             for path, stem in zip(inputs, stems)]
    taken, folders = {LOCK_NAME}, []
    for name in names:
        unique, suffix = name, 1
        while unique in taken:
            suffix += 1
            unique = f"{name}-{suffix}"
        taken.add(unique)
        folders.append(os.path.join(output_folder, unique))
    return folders


def evaluate_image(codec, path, levels, folder, num_layers):
    """Encode one image's levels into `folder`, decode its first num_layers layers from the
    files, measure them: (per-layer results, encode seconds, decode seconds).

    One image-sized array at a time besides the levels: each layer's encoder-side
    reconstruction is reduced to a digest once made, and the decoded PNGs are read back one
    by one for the metrics (and checked against those digests).
    """
    start = time.monotonic()
    encoded = [(size, bits, _image_digest(reconstruction))
               for size, bits, reconstruction in codec.encode_layers(levels, folder)]
    encode_seconds = time.monotonic() - start
    start = time.monotonic()
    streams = codec.check_streams(folder, num_layers)
    png_paths, _ = codec.decode_streams(folder, streams, keep_images=False)
    decode_seconds = time.monotonic() - start

    def decoded_images():
        for k, png_path in enumerate(png_paths):
            decoded = read_image(png_path)
            if _image_digest(decoded) != encoded[k][2]:
                print(f"warning: {path}: decoded layer {codec.config.layer_names[k]} differs "
                      "from the encoder's reconstruction (non-deterministic kernels?)")
            yield decoded
            del decoded

    payload_sizes = [stream.payload_size for stream in streams]
    layers = measure(codec, levels[:num_layers], encoded[:num_layers], payload_sizes,
                     decoded_images())
    return layers, encode_seconds, decode_seconds


def recorded_names(paths):
    """{path: the name results.json records}: relative to the inputs' common folder (the
    folder given on the command line; a single file: its name), never a machine's path."""
    folders = [os.path.dirname(os.path.abspath(path)) for path in paths]
    base = os.path.commonpath(folders) if folders else ""
    return {path: os.path.relpath(os.path.abspath(path), base) for path in paths}


def evaluate(codec, inputs, output_folder, num_layers=None, make_levels=None):
    """Evaluate every input; write streams, PNGs and results.json; return the results.

    inputs: list of (name, image path). With one input the files go straight into
    `output_folder`, with several into `output_folder/<image stem>/` (see output_folders).
    make_levels(path) -> list of uint8 images, one per layer (quality: the image itself).
    Unreadable images are reported and skipped; the summary counts them. ImageError when the
    only input, or every input, is unreadable.
    """
    num_layers = codec.check_num_layers(num_layers)
    make_levels = make_levels or (lambda path: [read_image(path)] * codec.config.num_layers)
    results, skipped = [], []
    started = time.monotonic()
    for index, (path, folder) in enumerate(zip(inputs, output_folders(inputs, output_folder))):
        try:
            levels = make_levels(path)
        except ImageError as error:
            if len(inputs) == 1:
                raise
            print(f"skipped: {error}", flush=True)
            skipped.append(path)
            continue
        layers, encode_seconds, decode_seconds = evaluate_image(codec, path, levels, folder,
                                                                num_layers)
        height, width = levels[-1].shape[:2]
        results.append(dict(image=path, height=height, width=width, layers=layers))
        print(f"{progress(index + 1, len(inputs), time.monotonic() - started)} {path} "
              f"({width}x{height}) -> {folder}  encode {encode_seconds:.2f} s, "
              f"decode {decode_seconds:.2f} s", flush=True)
        print(format_table(layers), flush=True)
    if not results:
        raise ImageError(f"none of the {len(inputs)} images could be read (see the 'skipped' "
                         "lines): nothing evaluated")
    names = recorded_names(inputs)
    for entry in results:
        entry["image"] = names[entry["image"]]
    summary = dict(images=results, average=dict(layers=average_layers(results)))
    if skipped:
        summary["skipped"] = [names[path] for path in skipped]
    if results:
        write_file_atomic(os.path.join(output_folder, RESULTS_NAME),
                          (json.dumps(summary, indent=2) + "\n").encode())
    print(f"average over {len(results)} image(s)"
          + (f"; {len(skipped)} skipped (unreadable)" if skipped else ""), flush=True)
    if results:
        print(format_table(summary["average"]["layers"]), flush=True)
    return summary


def decompress_folders(codec, output_folder, num_layers=None, last_only=False):
    """Receiver side: decode the streams under `output_folder` into rec PNGs (no input image).

    last_only=True writes only the top decoded layer's PNG (the lower layers are decoded but
    not synthesized).
    """
    num_layers = codec.check_num_layers(num_layers)
    folders = stream_folders(output_folder)
    # Check every folder's streams first: one bad file anywhere and no PNG is written.
    checked = [codec.check_streams(folder, num_layers) for folder in folders]
    for folder, streams in zip(folders, checked):
        png_paths, sizes = codec.decode_streams(folder, streams, last_only, keep_images=False)
        described = ", ".join(
            f"{rec_filename(stream.layer_name)} {stream.image_size[1]}x{stream.image_size[0]} "
            f"({size} bytes)"
            for stream, png_path, size in zip(streams, png_paths, sizes) if png_path is not None)
        print(f"{folder}: decoded {described}", flush=True)
    return folders
