"""Makes TFRecord files for training spatial scalability.

Every example holds one image at three resolutions: full (H x W), half
(ceil(H/2) x ceil(W/2)) and quarter (ceil(H/4) x ceil(W/4)), as raw uint8 RGB
bytes in the features img_raw_org, img_raw_half, img_raw_quater, with int64
height and width of the full image (see pipeline/data.py).

Two ways in:

1. Three folders, as in the authors' README:
     --input_image FULL_DIR --input_image_half HALF_DIR
     --input_image_quater QUARTER_DIR
   Files are paired by name (or, failing that, by name without extension).
   Every full image must be exactly 4x its quarter and the half exactly 2x
   its quarter on both sides; images missing from the half or quarter folder
   or with another size ratio are reported by name and skipped. A triple no
   larger than --patchsize is written whole as one example; a larger one is
   cut into aligned non-overlapping patches (full patch at offset (y, x),
   half at (y/2, x/2), quarter at (y/4, x/4)), the remainder at the right and
   bottom edges being dropped.

2. Only --input_image FOLDER (or a glob or a file): the half and quarter
   images are made with Pillow's anti-aliased --resample filter (lanczos by
   default, or bicubic or bilinear; codec.image.pyramid). Each image is cut into non-overlapping
   --patchsize x --patchsize patches from the top-left corner (the remainder
   is dropped), so a large photo gives several examples; the half and quarter
   of each patch are downsampled from that full patch itself, so the three
   align exactly. Images smaller than the patch are skipped and reported.
   With --whole_images, each image is written whole instead (its right and
   bottom edges cut to a multiple of 4, so the pyramid is exactly 4:2:1),
   its half and quarter made from the whole image as eval_spatial.py makes
   them; train_spatial.py then takes a random aligned crop of its
   --patchsize from a whole photo on every visit. Images smaller than
   --patchsize are skipped, so every example holds a crop of that size.

Output: with --num_shards 1 (default) one file, OUT. With --num_shards N > 1,
N files OUT-00000-of-0000N ... OUT-0000(N-1)-of-0000N (5 digits each),
examples spread round-robin; train on them with the glob 'OUT-*'. Files are
written under temporary names and renamed only when all are complete; on an
error or an interruption the temporary files are removed and nothing is
written.

Example:
  python create_tfrecords.py --train_tfrecords data/train.tfrecords \\
      --input_image photos/ --patchsize 512 --num_shards 4
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TF 2.14 prints cuDNN/cuFFT "E" lines at import

from absl import app  # pylint: disable=g-import-not-at-top
from absl.flags import argparse_flags

from pipeline.cli import add_resample_flag, error_message
from pipeline.data import DataError, make_example
from codec.image import ImageError, list_images, pyramid, read_image


def parse_args(argv):
    """Parses the command line (argv[0] is the program name)."""
    parser = argparse_flags.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--train_tfrecords", required=True, metavar="OUT",
        help="Output TFRecord file (with --num_shards N > 1: OUT-0000i-of-0000N).")
    parser.add_argument(
        "--input_image", metavar="DIR",
        help="Full-resolution images: a folder, a glob or a file.")
    parser.add_argument(
        "--input_image_half", metavar="DIR",
        help="Folder of the half-resolution images (with --input_image_quater).")
    parser.add_argument(
        "--input_image_quater", metavar="DIR",
        help="Folder of the quarter-resolution images (with --input_image_half).")
    parser.add_argument(
        "--patchsize", type=int, default=512,
        help="Full-resolution patch side, a multiple of 4, at least 16. "
        "Without half/quarter folders, images are cut into patches of this "
        "size; with them, triples larger than this are cut.")
    parser.add_argument(
        "--whole_images", action="store_true",
        help="Without half/quarter folders: write each image whole (sides cut to a "
        "multiple of 4) rather than cut into patches; --patchsize is then the smallest "
        "side kept (the training crop).")
    parser.add_argument(
        "--num_shards", type=int, default=1,
        help="Number of output files.")
    add_resample_flag(parser)
    parser.add_argument(
        "--verbose", action="store_true",
        help="Print a line per image.")
    return parser.parse_args(argv[1:])


# ----------------------------------------------------------------------------
# Examples.


def cut_aligned(full, half, quarter, patchsize):
    """Non-overlapping aligned patches of a 4:2:1 triple (patchsize % 4 == 0)."""
    p = patchsize
    height, width = full.shape[:2]
    for y in range(0, height - p + 1, p):
        for x in range(0, width - p + 1, p):
            yield (full[y:y + p, x:x + p],
                   half[y // 2:(y + p) // 2, x // 2:(x + p) // 2],
                   quarter[y // 4:(y + p) // 4, x // 4:(x + p) // 4])


def cut_patches(image, patchsize, resample):
    """Mode 2: non-overlapping patches, each with its own downsampled pyramid."""
    p = patchsize
    height, width = image.shape[:2]
    for y in range(0, height - p + 1, p):
        for x in range(0, width - p + 1, p):
            quarter, half, full = pyramid(image[y:y + p, x:x + p], 3, resample)
            yield full, half, quarter


def whole_example(image, resample):
    """Mode 2 with --whole_images: the image cut to sides that are multiples of 4, and its
    pyramid."""
    height, width = image.shape[:2]
    quarter, half, full = pyramid(image[:height - height % 4, :width - width % 4], 3, resample)
    return full, half, quarter


def triple_examples(full, half, quarter, patchsize):
    """Mode 1: the triple whole, or cut when larger than the patch (and able to)."""
    height, width = full.shape[:2]
    larger = height > patchsize or width > patchsize
    if larger and height >= patchsize and width >= patchsize:
        return list(cut_aligned(full, half, quarter, patchsize))
    return [(full, half, quarter)]


def _match(name, names_by_file, names_by_stem):
    if name in names_by_file:
        return names_by_file[name]
    candidates = names_by_stem.get(os.path.splitext(name)[0], [])
    return candidates[0] if len(candidates) == 1 else None


def _index(folder):
    files = list_images(folder)
    by_file = {os.path.basename(f): f for f in files}
    by_stem = {}
    for f in files:
        by_stem.setdefault(os.path.splitext(os.path.basename(f))[0], []).append(f)
    return by_file, by_stem


def _folder(flag, path):
    if not os.path.isdir(path):
        raise DataError(f"{flag} '{path}' is not a folder")
    return path


# ----------------------------------------------------------------------------
# Output.


def shard_names(out, num_shards):
    """Output file names: OUT, or OUT-00000-of-0000N ... for N > 1 shards."""
    if num_shards == 1:
        return [out]
    return [f"{out}-{i:05d}-of-{num_shards:05d}" for i in range(num_shards)]


class ShardedWriter:
    """Writes examples round-robin to temporary files; `commit` renames them.

    Leaving the `with` block without `commit` (an error, an interruption)
    removes the temporary files.
    """

    def __init__(self, out, num_shards):
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        self.names = shard_names(out, num_shards)
        self.temps = []
        self.writers = []
        self.count = 0
        self.committed = False
        try:
            for name in self.names:
                folder, base = os.path.split(os.path.abspath(name))
                temp = os.path.join(folder, f".{base}.tmp-{os.getpid()}")
                self.temps.append(temp)
                self.writers.append(tf.io.TFRecordWriter(temp))
        except BaseException:
            self._discard()
            raise

    def write(self, record):
        self.writers[self.count % len(self.writers)].write(record)
        self.count += 1

    def commit(self):
        for writer in self.writers:
            writer.close()
        self.writers = []
        for temp, name in zip(self.temps, self.names):
            os.replace(temp, name)
        self.committed = True

    def _discard(self):
        for writer in self.writers:
            try:
                writer.close()
            except Exception:  # pylint: disable=broad-except
                pass
        self.writers = []
        for temp in self.temps:
            if os.path.exists(temp):
                os.remove(temp)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self._discard()
        return False


class Progress:
    """Images done / total and examples written, on one line on a terminal."""

    def __init__(self, total, verbose):
        self.total = total
        self.verbose = verbose
        self.tty = sys.stdout.isatty()
        self.every = max(1, total // 10)

    def update(self, done, examples, name=None, new=0):
        if self.verbose and name is not None:
            print(f"[{done}/{self.total}] {name}: {new} examples", flush=True)
        elif self.tty:
            end = "\n" if done == self.total else ""
            print(f"\rimages {done}/{self.total}, examples {examples}", end=end,
                  flush=True)
        elif done % self.every == 0 or done == self.total:
            print(f"images {done}/{self.total}, examples {examples}", flush=True)


def _names(items, limit=5):
    shown = ", ".join(items[:limit])
    return shown + (", ..." if len(items) > limit else "")


# ----------------------------------------------------------------------------
# Main.


def _check_args(args):
    if not args.input_image:
        raise DataError("give --input_image (and optionally --input_image_half "
                        "with --input_image_quater)")
    if bool(args.input_image_half) != bool(args.input_image_quater):
        raise DataError("give both --input_image_half and --input_image_quater, "
                        "or neither (then they are made by downsampling)")
    if args.patchsize < 16 or args.patchsize % 4:
        raise DataError(f"--patchsize {args.patchsize} must be a multiple of 4 "
                        "and at least 16")
    if args.whole_images and args.input_image_half:
        raise DataError("--whole_images makes the half and quarter images itself: give "
                        "it without --input_image_half and --input_image_quater")
    if args.num_shards < 1:
        raise DataError(f"--num_shards {args.num_shards} must be at least 1")
    if os.path.isdir(args.train_tfrecords):
        raise DataError(f"--train_tfrecords '{args.train_tfrecords}' is a folder: "
                        "give a file name")


def _sources(args):
    """(name, reader) pairs to process and skips known up front (mode 1)."""
    skipped = []  # (name, reason)
    if not args.input_image_half:
        try:
            files = list_images(args.input_image)
        except ImageError as e:
            raise DataError(f"--input_image: {e}") from None
        return [(os.path.basename(f), f, None, None) for f in files], skipped
    full_files = list_images(_folder("--input_image", args.input_image))
    half_index = _index(_folder("--input_image_half", args.input_image_half))
    quarter_index = _index(
        _folder("--input_image_quater", args.input_image_quater))
    sources = []
    for path in full_files:
        name = os.path.basename(path)
        half = _match(name, *half_index)
        quarter = _match(name, *quarter_index)
        missing = [flag for flag, f in (("--input_image_half", half),
                                        ("--input_image_quater", quarter)) if not f]
        if missing:
            reason = "missing from " + " and ".join(missing)
            print(f"skipped '{name}': {reason}", file=sys.stderr, flush=True)
            skipped.append((name, "missing half/quarter"))
            continue
        sources.append((name, path, half, quarter))
    return sources, skipped


def _examples(source, patchsize, resample, whole_images=False):
    """Examples of one source, or raises DataError/ImageError with the reason."""
    name, full_path, half_path, quarter_path = source
    full = read_image(full_path)
    height, width = full.shape[:2]
    if half_path is None:
        if height < patchsize or width < patchsize:
            raise _Skip("smaller than patch",
                        f"{width}x{height} is smaller than the {patchsize}x"
                        f"{patchsize} patch")
        if whole_images:
            return [whole_example(full, resample)]
        return list(cut_patches(full, patchsize, resample))
    half = read_image(half_path)
    quarter = read_image(quarter_path)
    qh, qw = quarter.shape[:2]
    if (full.shape[:2] != (4 * qh, 4 * qw) or half.shape[:2] != (2 * qh, 2 * qw)):
        raise _Skip("wrong size ratio",
                    f"sizes {width}x{height}, {half.shape[1]}x{half.shape[0]}, "
                    f"{qw}x{qh} are not exactly 4:2:1")
    return triple_examples(full, half, quarter, patchsize)


class _Skip(Exception):

    def __init__(self, kind, message):
        super().__init__(message)
        self.kind = kind


def create(args):
    """Writes the TFRecords; returns a summary dict. Raises DataError."""
    _check_args(args)
    sources, skipped = _sources(args)
    if not sources:
        raise DataError(f"no usable image: all {len(skipped)} images skipped "
                        f"({_names([n for n, _ in skipped])}): nothing written")
    out = args.train_tfrecords
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    progress = Progress(len(sources), args.verbose)
    used = 0
    sizes = set()
    with ShardedWriter(out, args.num_shards) as writer:
        for done, source in enumerate(sources, 1):
            name = source[0]
            try:
                examples = _examples(source, args.patchsize, args.resample,
                                     args.whole_images)
            except _Skip as e:
                print(f"skipped '{name}': {e}", file=sys.stderr, flush=True)
                skipped.append((name, e.kind))
                examples = None
            except ImageError as e:
                print(f"skipped '{name}': {e}", file=sys.stderr, flush=True)
                skipped.append((name, "unreadable"))
                examples = None
            if examples:
                used += 1
                for full, half, quarter in examples:
                    sizes.add(full.shape[:2])
                    writer.write(make_example(full, half, quarter))
            progress.update(done, writer.count, name, len(examples or []))
        if writer.count == 0:
            raise DataError(f"no usable image: all {len(skipped)} images skipped "
                            f"({_summary(skipped)}): nothing written")
        if writer.count < args.num_shards:
            raise DataError(f"--num_shards {args.num_shards} is more than the "
                            f"{writer.count} examples: use fewer shards; nothing "
                            "written")
        writer.commit()
    return {"examples": writer.count, "images": used, "skipped": skipped,
            "files": writer.names, "sizes": sorted(sizes)}


def _summary(skipped):
    kinds = {}
    for name, kind in skipped:
        kinds.setdefault(kind, []).append(name)
    return "; ".join(f"{len(names)} {kind}: {_names(names)}"
                     for kind, names in kinds.items())


def main(args):
    try:
        result = create(args)
    except (DataError, ImageError, OSError) as e:
        message = error_message(e).splitlines()[0] if str(e) else type(e).__name__
        raise SystemExit(f"error: {message}") from None
    except KeyboardInterrupt:
        raise SystemExit("error: interrupted: nothing written") from None
    print(f"wrote {result['examples']} examples from {result['images']} images")
    if result["skipped"]:
        print(f"skipped {len(result['skipped'])} images: "
              f"{_summary(result['skipped'])}")
    sizes = result["sizes"]
    if len(sizes) > 1:
        smallest = min(sizes, key=lambda s: s[0] * s[1])
        print(f"note: examples have {len(sizes)} different sizes (smallest "
              f"{smallest[1]}x{smallest[0]}): train with a patch size no larger "
              "than that, or batch size 1")
    print("output: " + ", ".join(result["files"]))


if __name__ == "__main__":
    app.run(main, flags_parser=parse_args)
