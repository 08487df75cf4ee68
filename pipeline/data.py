"""tf.data input pipelines for training.

Two kinds of training data:

* Quality scalability trains on random square patches cut from ordinary image
  files (``training_images`` + ``patch_dataset``).
* Spatial scalability trains on (quarter, half, full) resolution triples
  stored in TFRecord files made by ``create_tfrecords.py``
  (``make_example`` / ``parse_example`` / ``check_tfrecords`` /
  ``pyramid_dataset``), or in the authors' TFRecords: the same three raw RGB
  features of squares in 4:2:1 ratio (512/256/128 in their code) without the
  height and width features; their side is inferred from the byte count.

Iterator checkpointing: every dataset built here can be saved in a
``tf.train.Checkpoint`` (``tf.train.Checkpoint(data=iter(dataset))``), so an
interrupted training run resumes at the same data position with the same
crops.  ``tf.image.random_crop`` uses a stateful RNG op that tf.data refuses
to serialize ("RandomUniformInt is stateful"), so random crops here are
stateless (``tf.image.stateless_random_crop`` / ``tf.random.stateless_*``)
with per-element seeds drawn from ``tf.data.Dataset.random`` zipped into the
pipeline; that dataset, ``shuffle`` and the rest of the pipeline store their
RNG state in the checkpoint.  Note that the saved state includes the elements
buffered by ``shuffle``, the parallel ``map`` and ``prefetch``; patches stay
uint8 until after batching to keep that small.
"""

import glob
import math
import os
import sys

import numpy as np
import tensorflow as tf
from PIL import Image

from codec.image import pyramid_sizes
from models.config import SettingsError

__all__ = [
    "DataError",
    "training_images",
    "patch_dataset",
    "make_example",
    "parse_example",
    "check_tfrecords",
    "pyramid_dataset",
    "SPATIAL_FEATURES",
]


class DataError(SettingsError, ValueError):
    """A problem with the training data; the message names it and the fix."""


# Formats that tf.io.decode_image can decode (Pillow calls some JPEGs "MPO").
_TF_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP"}

# Feature names of the spatial training examples (names as in the authors'
# code, including the spelling "quater"): the three images, full resolution
# first, then the full image's size (which the authors' files do not have).
IMAGE_FEATURES = ("img_raw_org", "img_raw_half", "img_raw_quater")
SIZE_FEATURES = ("height", "width")
SPATIAL_FEATURES = IMAGE_FEATURES + SIZE_FEATURES

_MAX_WARNINGS = 10


def _names(paths, limit=3):
    shown = ", ".join(os.path.basename(p) for p in paths[:limit])
    if len(paths) > limit:
        shown += ", ..."
    return shown


def _expand(pattern):
    """Sorted files matching a glob, or several separated by commas; a folder means all
    files in it."""
    files = set()
    for part in pattern.split(","):
        if os.path.isdir(part):
            part = os.path.join(part, "*")
        files.update(p for p in glob.glob(part) if os.path.isfile(p))
    return sorted(files)


# ----------------------------------------------------------------------------
# Quality scalability: random patches from image files.


def training_images(pattern, patchsize):
    """Lists the usable training images matching `pattern`.

    Args:
      pattern: a glob (Python `glob`, results sorted) or a folder.
      patchsize: side of the square training patches; smaller images are
        skipped.

    Returns:
      Sorted list of file names whose images are at least patchsize x patchsize
      and can be decoded by `tf.io.decode_image`. Sizes are read from the file
      headers only.

    Raises:
      DataError: the pattern matches no file or no image is usable.
    """
    patchsize = int(patchsize)
    files = _expand(pattern)
    if not files:
        raise DataError(f"train_glob '{pattern}' matches no files", ["train_glob"])
    usable, small, unreadable = [], [], []
    for path in files:
        try:
            with Image.open(path) as im:
                width, height = im.size
                fmt = im.format
        except Exception as e:  # pylint: disable=broad-except
            unreadable.append(path)
            if len(unreadable) <= _MAX_WARNINGS:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                print(f"warning: skipping '{path}': not a readable image ({reason})",
                      file=sys.stderr, flush=True)
            continue
        if fmt not in _TF_FORMATS:
            unreadable.append(path)
            if len(unreadable) <= _MAX_WARNINGS:
                print(f"warning: skipping '{path}': {fmt} images cannot be decoded by "
                      "tf.io.decode_image (use PNG, JPEG, BMP or GIF)",
                      file=sys.stderr, flush=True)
            continue
        if height < patchsize or width < patchsize:
            small.append(path)
            continue
        usable.append(path)
    if len(unreadable) > _MAX_WARNINGS:
        print(f"warning: ... and {len(unreadable) - _MAX_WARNINGS} more "
              "unreadable files skipped", file=sys.stderr, flush=True)

    reasons = []
    if small:
        reasons.append(f"{len(small)} smaller than {patchsize}x{patchsize}: "
                       f"{_names(small)}")
    if unreadable:
        reasons.append(f"{len(unreadable)} not readable images: "
                       f"{_names(unreadable)}")
    skipped = len(small) + len(unreadable)
    if not usable:
        if small:
            raise DataError(
                f"no training image is at least {patchsize}x{patchsize}: lower "
                "patchsize or add larger images", ["patchsize"])
        raise DataError(f"train_glob '{pattern}' matches no readable images", ["train_glob"])
    summary = f"training on {len(usable)} images"
    if skipped:
        summary += f" ({skipped} skipped: {'; '.join(reasons)})"
    print(summary, flush=True)
    return usable


def _decode_crop(path, seed, patchsize):
    image = tf.io.decode_image(
        tf.io.read_file(path), channels=3, expand_animations=False,
        dtype=tf.uint8)
    return tf.image.stateless_random_crop(image, (patchsize, patchsize, 3),
                                          seed=seed)


def _decode_downscaled_crop(path, rescale, seed, patchsize, downscale):
    """A patch of the image downscaled by a factor drawn in `downscale` (low, high): a random
    square of side patchsize / factor, resized to the patch with an antialiasing bicubic
    filter (the same pixels as downscaling the whole image, then cropping). The factor is
    raised where the image is too small for it; `rescale` False keeps the image as it is."""
    image = tf.io.decode_image(
        tf.io.read_file(path), channels=3, expand_animations=False,
        dtype=tf.uint8)
    factor_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    factor = tf.random.stateless_uniform([], factor_seed, downscale[0], downscale[1])
    shortest = tf.reduce_min(tf.shape(image)[:2])
    side = tf.cast(tf.round(patchsize / factor), tf.int32)
    side = tf.where(rescale, tf.clip_by_value(side, patchsize, shortest), patchsize)
    region = tf.image.stateless_random_crop(image, tf.stack([side, side, 3]), seed=crop_seed)
    resized = tf.image.resize(tf.cast(region, tf.float32), (patchsize, patchsize),
                              method="bicubic", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def is_jpeg(path):
    """Whether the file at `path` is a JPEG (by its first bytes)."""
    with open(path, "rb") as f:
        return f.read(3) == b"\xff\xd8\xff"


DOWNSCALE_SOURCES = ("jpeg", "all")


def _to_float(images):
    return tf.cast(images, tf.float32) / 255.


def patch_dataset(files, patchsize, batchsize, preprocess_threads=16,
                  seed=None, downscale=None, downscale_sources="jpeg"):
    """Endless dataset of random patches from `files`.

    The file names (not decoded images) are shuffled with a buffer holding all
    of them and reshuffled every epoch; each image is decoded and a random
    patchsize x patchsize crop taken.

    Args:
      files: list of image files, each at least patchsize on both sides (see
        `training_images`).
      patchsize: side of the square patches.
      batchsize: patches per batch (incomplete batches are dropped).
      preprocess_threads: parallel decode calls.
      seed: optional int for a reproducible order and crops.
      downscale: optional (low, high): before the crop, downscale the image by a factor
        drawn uniformly in [low, high] on every visit (antialiased), as Balle et al. do to
        remove the compression artifacts and noise of web photos.
      downscale_sources: "jpeg" (only JPEG files are downscaled) or "all".

    Returns:
      A `tf.data.Dataset` of float32 [batchsize, patchsize, patchsize, 3]
      tensors in [0, 1]. Its iterator can be saved in a `tf.train.Checkpoint`.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise DataError("no training images given")
    patchsize = int(patchsize)
    if downscale is None:
        names = tf.data.Dataset.from_tensor_slices(files)
    else:
        low, high = (float(v) for v in downscale)
        if not 0 < low <= high <= 1:
            raise DataError(f"downscale factors {low},{high} must satisfy "
                            "0 < low <= high <= 1", ["downscale"])
        if downscale_sources not in DOWNSCALE_SOURCES:
            raise DataError(f"downscale_sources {downscale_sources!r} is not one of "
                            f"{', '.join(DOWNSCALE_SOURCES)}", ["downscale_sources"])
        rescale = [downscale_sources == "all" or is_jpeg(f) for f in files]
        names = tf.data.Dataset.from_tensor_slices((files, rescale))
    names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    names = names.repeat()
    # Two int64 seeds per element for the stateless crop.
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    dataset = tf.data.Dataset.zip((names, seeds))
    if downscale is None:
        crop = lambda path, s: _decode_crop(path, s, patchsize)
    else:
        crop = lambda named, s: _decode_downscaled_crop(*named, s, patchsize, (low, high))
    dataset = dataset.map(crop, num_parallel_calls=preprocess_threads)
    dataset = dataset.batch(batchsize, drop_remainder=True)
    dataset = dataset.map(_to_float)
    return dataset.prefetch(tf.data.AUTOTUNE)


# ----------------------------------------------------------------------------
# Spatial scalability: (quarter, half, full) triples in TFRecords.


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def _check_image(name, image):
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"{name} image must be uint8 HxWx3, got {image.dtype} "
                        f"{image.shape}")
    return np.ascontiguousarray(image)


def make_example(full, half, quarter):
    """Serializes one spatial training example.

    Args:
      full: uint8 HxWx3 image.
      half: uint8 image of size ceil(H/2) x ceil(W/2).
      quarter: uint8 image of size ceil(H/4) x ceil(W/4).

    Returns:
      A serialized `tf.train.Example` (bytes) with features img_raw_org,
      img_raw_half, img_raw_quater (raw row-major bytes) and int64 height,
      width of the full image.
    """
    full = _check_image("full", full)
    half = _check_image("half", half)
    quarter = _check_image("quarter", quarter)
    height, width = full.shape[:2]
    size_q, size_h, _ = pyramid_sizes(height, width, 3)
    if tuple(half.shape[:2]) != tuple(size_h):
        raise DataError(f"half image is {half.shape[1]}x{half.shape[0]}, expected "
                        f"{size_h[1]}x{size_h[0]} for a {width}x{height} image")
    if tuple(quarter.shape[:2]) != tuple(size_q):
        raise DataError(f"quarter image is {quarter.shape[1]}x{quarter.shape[0]}, "
                        f"expected {size_q[1]}x{size_q[0]} for a {width}x{height} "
                        "image")
    example = tf.train.Example(features=tf.train.Features(feature={
        "img_raw_org": _bytes_feature(full.tobytes()),
        "img_raw_half": _bytes_feature(half.tobytes()),
        "img_raw_quater": _bytes_feature(quarter.tobytes()),
        "height": _int64_feature(height),
        "width": _int64_feature(width),
    }))
    return example.SerializeToString()


# Size features default to 0: an authors' example (no size features) is a
# square whose side follows from the byte count of its full image.
_FEATURE_SPEC = {
    **{key: tf.io.FixedLenFeature([], tf.string) for key in IMAGE_FEATURES},
    **{key: tf.io.FixedLenFeature([], tf.int64, default_value=0)
       for key in SIZE_FEATURES},
}


def square_side(num_bytes):
    """Side of the RGB square stored in `num_bytes` bytes, or None if none is."""
    side = math.isqrt(num_bytes // 3)
    return side if side > 0 and 3 * side * side == num_bytes else None


def authors_square_side(byte_counts):
    """Full-resolution side of an authors' example from the byte counts of its
    img_raw_org, img_raw_half and img_raw_quater, or a reason why it is not one.

    Returns (side, None) for RGB squares of sides s, s/2, s/4; else (None, why).
    """
    sides = [square_side(n) for n in byte_counts]
    if None in sides:
        return None, (f"the images hold {', '.join(map(str, byte_counts))} bytes: "
                      "not RGB squares (3 x side x side bytes each)")
    if sides != [sides[0], sides[0] // 2, sides[0] // 4] or sides[0] % 4:
        return None, (f"the images are squares of {'/'.join(map(str, sides))} pixels, "
                      "not full/half/quarter in 4:2:1 ratio")
    return sides[0], None


def parse_example(serialized):
    """Parses a serialized spatial example into (quarter, half, full) uint8.

    Reads both our examples (with height and width) and the authors' (raw RGB
    squares only: the side is inferred from the full image's byte count).
    """
    features = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
    full_bytes = tf.strings.length(features["img_raw_org"])
    side = tf.cast(tf.round(tf.sqrt(tf.cast(full_bytes // 3, tf.float64))),
                   tf.int32)
    height = tf.cast(features["height"], tf.int32)
    width = tf.cast(features["width"], tf.int32)
    height = tf.where(height > 0, height, side)
    width = tf.where(width > 0, width, side)

    def decode(key, div):
        h = (height + div - 1) // div
        w = (width + div - 1) // div
        raw = tf.io.decode_raw(features[key], tf.uint8)
        return tf.reshape(raw, tf.stack([h, w, 3]))

    return (decode("img_raw_quater", 4), decode("img_raw_half", 2),
            decode("img_raw_org", 1))


def _split_pattern(pattern):
    files = []
    for part in str(pattern).split(","):
        part = part.strip()
        if not part:
            continue
        if os.path.isfile(part):
            files.append(part)
            continue
        matches = _expand(part)
        if not matches:
            raise DataError(f"train_tfrecords '{part}' matches no files",
                            ["train_tfrecords"])
        files.extend(matches)
    if not files:
        raise DataError(f"train_tfrecords '{pattern}' matches no files", ["train_tfrecords"])
    return list(dict.fromkeys(files))  # drop duplicates, keep order


def _first_record(path):
    name = os.path.basename(path)
    try:
        for record in tf.data.TFRecordDataset(path).take(1):
            return record.numpy()
    except tf.errors.DataLossError:
        raise DataError(f"'{name}' is not a readable TFRecord file (corrupt or "
                        "truncated): recreate it with create_tfrecords.py") from None
    except tf.errors.OpError as e:
        raise DataError(f"cannot read '{path}': {e.message.splitlines()[0]}"
                        ) from None
    raise DataError(f"'{name}' holds no records: recreate it with "
                    "create_tfrecords.py")


def check_tfrecords(pattern, patchsize=None):
    """Expands and checks spatial training TFRecords.

    Reads the first record of every file and checks it is a spatial example of
    this project (see `make_example`).

    Args:
      pattern: a file, comma-separated files, or globs.
      patchsize: optional training crop size; the first example of every file
        must be at least this large (later smaller examples are dropped by
        `pyramid_dataset`).

    Returns:
      The list of files.

    Raises:
      DataError: no matching file, an unreadable or corrupt file, a record of
        another kind, or (with patchsize) examples smaller than patchsize.
    """
    files = _split_pattern(pattern)
    for path in files:
        name = os.path.basename(path)
        record = _first_record(path)
        try:
            example = tf.train.Example.FromString(record)
        except Exception:  # pylint: disable=broad-except
            raise DataError(f"'{name}' is not a spatial training TFRecord (records "
                            "are not tf.train.Example): make it with "
                            "create_tfrecords.py") from None
        feature = example.features.feature
        for key in IMAGE_FEATURES:
            if key not in feature:
                raise DataError(f"'{name}' is not a spatial training TFRecord "
                                f"(missing feature {key}): make it with "
                                "create_tfrecords.py")
        if not any(key in feature for key in SIZE_FEATURES):
            height = width = _authors_side(name, feature)
        else:
            height, width = _checked_size(name, feature)
        if patchsize is not None and (height < patchsize or width < patchsize):
            raise DataError(f"'{name}' holds {width}x{height} examples, smaller "
                            f"than the {patchsize}x{patchsize} training patch: "
                            "lower patchsize or recreate the TFRecords with "
                            "larger patches", ["patchsize"])
    return files


def _image_bytes(feature, key):
    values = feature[key].bytes_list.value
    return len(values[0]) if len(values) == 1 else -1


def _authors_side(name, feature):
    """Side of an authors'-format first example (no size features); DataError
    unless its three images are RGB squares in 4:2:1 ratio."""
    counts = [_image_bytes(feature, key) for key in IMAGE_FEATURES]
    side, why = authors_square_side(counts)
    if side is None:
        raise DataError(f"'{name}' has no height/width features, so it must hold "
                        f"the authors' square examples, but {why}: make it with "
                        "create_tfrecords.py")
    return side


def _checked_size(name, feature):
    """(height, width) of one of our first examples, checked against the
    byte counts of its three images."""
    try:
        height = int(feature["height"].int64_list.value[0])
        width = int(feature["width"].int64_list.value[0])
        sizes = pyramid_sizes(height, width, 3)
        for key, (h, w) in zip(IMAGE_FEATURES[::-1], sizes):
            if _image_bytes(feature, key) != h * w * 3:
                raise ValueError(key)
    except (IndexError, ValueError):
        raise DataError(f"'{name}' is not a spatial training TFRecord (image "
                        "sizes do not match the stored height/width): make it "
                        "with create_tfrecords.py") from None
    return height, width


def _aligned_crop(quarter, half, full, seed, patchsize):
    """Random crop at a full-resolution offset that is a multiple of 4."""
    shape = tf.shape(full)
    seeds = tf.random.experimental.stateless_split(seed, 2)
    def offset(size, s):
        steps = (size - patchsize) // 4 + 1
        return 4 * tf.random.stateless_uniform(
            [], seed=s, minval=0, maxval=steps, dtype=tf.int32)
    oy = offset(shape[0], seeds[0])
    ox = offset(shape[1], seeds[1])
    p = patchsize
    full = full[oy:oy + p, ox:ox + p]
    half = half[oy // 2:oy // 2 + p // 2, ox // 2:ox // 2 + p // 2]
    quarter = quarter[oy // 4:oy // 4 + p // 4, ox // 4:ox // 4 + p // 4]
    full.set_shape([p, p, 3])
    half.set_shape([p // 2, p // 2, 3])
    quarter.set_shape([p // 4, p // 4, 3])
    return quarter, half, full


def _aligned_downscaled_crop(quarter, half, full, seed, patchsize, downscale):
    """`_aligned_crop` of the pyramid downscaled by a factor drawn in `downscale`: aligned
    squares of side patchsize / factor (full), / 2 and / 4, each resized to its patch side
    with an antialiasing bicubic filter (raised to fit the image where it is too small)."""
    factor_seed, crop_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    factor = tf.random.stateless_uniform([], factor_seed, downscale[0], downscale[1])
    shortest = tf.reduce_min(tf.shape(full)[:2])
    side = 4 * tf.cast(tf.round(patchsize / factor / 4), tf.int32)
    side = tf.clip_by_value(side, patchsize, shortest // 4 * 4)
    seeds = tf.random.experimental.stateless_split(crop_seed, 2)
    shape = tf.shape(full)
    def offset(size, s):
        steps = (size - side) // 4 + 1
        return 4 * tf.random.stateless_uniform([], seed=s, minval=0, maxval=steps,
                                               dtype=tf.int32)
    oy, ox = offset(shape[0], seeds[0]), offset(shape[1], seeds[1])
    def resized(image, div):
        region = image[oy // div:(oy + side) // div, ox // div:(ox + side) // div]
        out = tf.image.resize(tf.cast(region, tf.float32), (patchsize // div, patchsize // div),
                              method="bicubic", antialias=True)
        out = tf.cast(tf.clip_by_value(tf.round(out), 0, 255), tf.uint8)
        out.set_shape([patchsize // div, patchsize // div, 3])
        return out
    return resized(quarter, 4), resized(half, 2), resized(full, 1)


def pyramid_dataset(files, batchsize, patchsize=None, seed=None,
                    shuffle_buffer=64, preprocess_threads=8, downscale=None):
    """Endless dataset of (quarter, half, full) float32 [0, 1] batches.

    Args:
      files: TFRecord files (see `check_tfrecords`).
      batchsize: examples per batch (incomplete batches are dropped).
      patchsize: optional full-resolution crop size, a multiple of 4. Crops
        are aligned: a random full-resolution offset that is a multiple of 4,
        the half crop at offset/2 (size patchsize/2), the quarter crop at
        offset/4 (size patchsize/4). Examples smaller than patchsize are
        dropped. Without patchsize whole examples are batched, so all must have
        the same size (or use batchsize 1).
      seed: optional int for a reproducible order and crops.
      downscale: optional (low, high), with patchsize: downscale every example by a factor
        drawn in [low, high] on every visit before the crop (each level by the same factor,
        antialiased, so the levels stay a pyramid).
      shuffle_buffer: number of (cropped) examples in the shuffle buffer; its
        content is part of a saved iterator checkpoint.
      preprocess_threads: parallel parse/crop calls.

    Returns:
      A `tf.data.Dataset`; its iterator can be saved in a `tf.train.Checkpoint`.
    """
    files = [os.fspath(f) for f in files]
    if not files:
        raise DataError("no TFRecord files given")
    if downscale is not None and patchsize is None:
        raise DataError("downscaling spatial examples needs a patchsize", ["downscale"])
    if patchsize is not None:
        patchsize = int(patchsize)
        if patchsize <= 0 or patchsize % 4:
            raise DataError(f"patchsize {patchsize} must be a positive multiple of "
                            "4 for spatial training", ["patchsize"])
    names = tf.data.Dataset.from_tensor_slices(files)
    names = names.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
    names = names.repeat()
    records = names.interleave(
        tf.data.TFRecordDataset, cycle_length=min(len(files), 4), block_length=1)
    dataset = records.map(parse_example, num_parallel_calls=preprocess_threads)
    if patchsize is not None:
        p = patchsize
        dataset = dataset.filter(
            lambda q, h, f: tf.logical_and(tf.shape(f)[0] >= p,
                                           tf.shape(f)[1] >= p))
        seeds = tf.data.Dataset.random(seed=seed).batch(2)
        dataset = tf.data.Dataset.zip((dataset, seeds))
        if downscale is None:
            crop = lambda images, s: _aligned_crop(*images, s, p)
        else:
            low, high = (float(v) for v in downscale)
            crop = lambda images, s: _aligned_downscaled_crop(*images, s, p, (low, high))
        dataset = dataset.map(crop, num_parallel_calls=preprocess_threads)
    dataset = dataset.shuffle(shuffle_buffer, seed=seed,
                              reshuffle_each_iteration=True)
    dataset = dataset.batch(batchsize, drop_remainder=True)
    dataset = dataset.map(lambda q, h, f: (_to_float(q), _to_float(h),
                                           _to_float(f)))
    return dataset.prefetch(tf.data.AUTOTUNE)
