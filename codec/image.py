"""Image files in and out: listing, reading with fixed conversions, padding, pyramids.

Every image the codec sees is a uint8 array of shape (height, width, 3).
`read_image` documents how other pixel formats are converted to that.
"""
import glob
import io
import os
import tempfile
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = frozenset(
    (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".gif"))

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length (4) + "IHDR" (4) + width (4) + height (4)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


class ImageError(ValueError):
    """An image file that cannot be found, read or interpreted."""


def has_image_extension(path):
    """True when `path` ends in one of IMAGE_EXTENSIONS (case-insensitive)."""
    return os.path.splitext(path)[1].lower() in IMAGE_EXTENSIONS


def list_images(spec):
    """Returns the sorted image paths named by `spec`.

    `spec` is an image file (taken as given, whatever its extension), a folder
    (its files with an image extension, not recursive) or a glob pattern (the
    matching files with an image extension). Extensions are matched
    case-insensitively: png jpg jpeg bmp tif tiff webp ppm pgm gif.
    """
    path = os.path.expanduser(spec)
    if os.path.isfile(path):
        paths = [path]
    elif os.path.isdir(path):
        paths = [os.path.join(path, name) for name in os.listdir(path)]
        paths = [p for p in paths if os.path.isfile(p) and has_image_extension(p)]
    else:
        paths = [p for p in glob.glob(path) if os.path.isfile(p) and has_image_extension(p)]
    if not paths:
        raise ImageError(
            f"no images match '{spec}': give an image file, a folder of images or a glob")
    return sorted(paths)


def _ceil_div(value, divisor):
    return -(-value // divisor)


def _reduce_16bit(values):
    """Scales 16-bit values to uint8 as round(v * 255 / 65535), clipping to [0, 65535] first."""
    values = np.clip(values.astype(np.float64), 0, 65535)
    return np.round(values * (255.0 / 65535.0)).astype(np.uint8)


def _gray_to_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=-1)


def _is_16bit_png(path):
    with open(path, "rb") as f:
        header = f.read(_PNG_BIT_DEPTH_OFFSET + 1)
    return (header.startswith(_PNG_SIGNATURE) and len(header) > _PNG_BIT_DEPTH_OFFSET
            and header[_PNG_BIT_DEPTH_OFFSET] == 16)


def _decode_16bit_png(path):
    """Full-precision (H, W, 3) uint16 pixels of a 16-bit PNG, alpha dropped.

    Pillow keeps only the high byte of 16-bit colour PNGs, so TensorFlow's
    libpng decoder is used for these files.
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only for this rare case)
    with open(path, "rb") as f:
        data = f.read()
    return tf.io.decode_png(data, channels=3, dtype=tf.uint16).numpy()


def _decode_rgb(img, path):
    """Converts a loaded Pillow image to uint8 (H, W, 3), as documented in read_image.

    Returns (pixels, whether 16-bit values were reduced to 8 bits).
    """
    mode = img.mode
    if img.format == "PNG" and _is_16bit_png(path):
        return _reduce_16bit(_decode_16bit_png(path)), True
    if mode in _SIXTEEN_BIT_MODES:
        return _gray_to_rgb(_reduce_16bit(np.asarray(img))), True
    if mode == "F":
        gray = np.round(np.clip(np.asarray(img, dtype=np.float64), 0, 255)).astype(np.uint8)
        return _gray_to_rgb(gray), False
    if mode in ("L", "LA"):
        return _gray_to_rgb(np.asarray(img.getchannel(0))), False
    if mode in ("P", "PA", "RGBA"):
        # Through RGBA so that palette transparency is dropped, not blended.
        return np.asarray(img.convert("RGBA"))[..., :3], False
    if mode == "RGB":
        return np.asarray(img), False
    return np.asarray(img.convert("RGB")), False  # 1, CMYK, YCbCr, LAB, HSV, RGBX, ...


def read_image(path):
    """Reads an image file as a uint8 array of shape (height, width, 3).

    Conversions, applied with Pillow (pixels are taken as stored: no EXIF
    rotation, no colour management, only the first frame of animations):
    - 8-bit RGB: as is.
    - 16-bit PNG (any colour type) and 16/32-bit integer grayscale (Pillow
      modes 'I;16', 'I', e.g. from TIFF or PGM): reduced to 8 bits as
      round(v * 255 / 65535), values clipped to [0, 65535] first, with one
      warning naming the file. 16-bit PNGs are decoded at full precision
      with tf.io.decode_png, because Pillow keeps only the high byte of
      16-bit colour PNGs.
    - Grayscale ('L') and 1-bit ('1'): replicated to 3 equal channels.
    - Alpha (LA, RGBA, PA, palette with transparency): the alpha channel is
      dropped; the colour channels are kept as stored (not blended on any
      background).
    - Palette ('P'): expanded to RGB through the palette.
    - CMYK, YCbCr and other colour modes: Pillow's convert('RGB').
    - 32-bit float ('F'): clipped to [0, 255], rounded, replicated.

    Raises ImageError("cannot read image '<path>': <reason>") for a missing
    file, a folder, a non-image or a truncated / unreadable file.
    """
    def fail(reason):
        return ImageError(f"cannot read image '{path}': {reason}")

    if os.path.isdir(path):
        raise fail("it is a folder, not an image file")
    if not os.path.exists(path):
        raise fail("no such file")
    try:
        with Image.open(path) as img:
            img.load()
            rgb, reduced_16bit = _decode_rgb(img, path)
    except UnidentifiedImageError:
        reason = "not an image file Pillow can read (empty, damaged or unsupported format)"
        raise fail(reason) from None
    except Exception as error:  # pylint: disable=broad-except  (any decoder failure: unreadable)
        reason = (str(error) or type(error).__name__).splitlines()[0]
        raise fail(reason) from error
    if reduced_16bit:
        warnings.warn(f"'{path}' has 16 bits per channel: reduced to 8 bits as "
                      "round(v * 255 / 65535)", stacklevel=2)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def padded_size(height, width, multiple):
    """(height, width) rounded up to multiples of `multiple`."""
    if multiple < 1:
        raise ValueError(f"padding multiple must be a positive integer, got {multiple}")
    return (_ceil_div(height, multiple) * multiple, _ceil_div(width, multiple) * multiple)


def pad_to_multiple(image, multiple):
    """Pads (H, W, ...) `image` at the bottom and right, repeating the edge pixels,
    so that H and W become multiples of `multiple`."""
    height, width = image.shape[:2]
    padded_height, padded_width = padded_size(height, width, multiple)
    widths = [(0, padded_height - height), (0, padded_width - width)]
    widths += [(0, 0)] * (image.ndim - 2)
    return np.pad(image, widths, mode="edge")


def write_file_atomic(path, data):
    """Writes bytes to `path` via a temporary file in the same folder and os.replace.

    Readers never see a partial file; the temporary file is removed on failure.
    """
    folder = os.path.dirname(os.path.abspath(path))
    handle, temp_path = tempfile.mkstemp(
        dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(temp_path, 0o644)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def _check_rgb_uint8(image):
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 (height, width, 3) image, got {image.dtype} {image.shape}: "
            "convert it with np.clip(np.round(x), 0, 255).astype(np.uint8)")


def write_png(path, image):
    """Writes a uint8 (H, W, 3) array as a PNG file, atomically."""
    image = np.asarray(image)
    _check_rgb_uint8(image)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    write_file_atomic(path, buffer.getvalue())


# Filters for the lower pyramid levels (--resample); Lanczos is the default (README,
# "Differences from the released code", says why).
RESAMPLE_FILTERS = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
}
DEFAULT_RESAMPLE = "lanczos"


def downsample(image, size, resample=DEFAULT_RESAMPLE):
    """Resizes a uint8 (H, W, 3) image to size=(height, width) with one of Pillow's
    anti-aliased filters (`resample`: a RESAMPLE_FILTERS name).

    Pillow widens the filter kernel by the reduction factor, so this low-pass
    filters before subsampling.
    """
    image = np.asarray(image)
    _check_rgb_uint8(image)
    height, width = size
    if height < 1 or width < 1:
        raise ValueError(f"downsample size must be positive, got {size}")
    if resample not in RESAMPLE_FILTERS:
        raise ValueError(f"unknown resampling filter {resample!r}: use one of "
                         f"{', '.join(RESAMPLE_FILTERS)}")
    resized = Image.fromarray(image).resize((width, height), RESAMPLE_FILTERS[resample])
    return np.asarray(resized)


def pyramid_sizes(height, width, levels):
    """Sizes (ceil(h / 2**j), ceil(w / 2**j)) for j = levels-1 .. 0: lowest resolution first."""
    if levels < 1:
        raise ValueError(f"pyramid needs at least 1 level, got {levels}")
    return [(_ceil_div(height, 2**j), _ceil_div(width, 2**j)) for j in reversed(range(levels))]


def pyramid(image, levels, resample=DEFAULT_RESAMPLE):
    """Image pyramid of pyramid_sizes(), lowest resolution first.

    Each lower level is downsampled directly from the full image (with the
    `resample` filter), which is the last level, unchanged.
    """
    height, width = image.shape[:2]
    sizes = pyramid_sizes(height, width, levels)
    return [downsample(image, size, resample) for size in sizes[:-1]] + [image]
