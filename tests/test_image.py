"""Tests for codec/image.py: listing, reading conversions, padding, PNG writing, pyramids."""
import os
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from codec import image as image_lib
from codec.image import ImageError

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
GRAY = RNG.integers(0, 256, size=(5, 7), dtype=np.uint8)


def save(tmp_path, name, pil_image, **options):
    path = str(tmp_path / name)
    pil_image.save(path, **options)
    return path


def png_16bit(path, pixels, colour_type):
    """Writes a 16-bit PNG by hand (Pillow cannot write 16-bit colour PNGs)."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload)))
    height, width = pixels.shape[:2]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return str(path)


def expected_8bit(values16):
    return np.round(values16.astype(np.float64) * 255 / 65535).astype(np.uint8)


def read_expecting_one_16bit_warning(path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pixels = image_lib.read_image(path)
    # Importing TensorFlow (16-bit PNG path) may add its own deprecation warnings.
    messages = [str(w.message) for w in caught if "16 bits" in str(w.message)]
    assert len(messages) == 1, messages
    assert path in messages[0]
    return pixels


def gray_as_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=-1)


# --- read_image conversions -------------------------------------------------------------------

def test_rgb_png_is_read_unchanged(tmp_path):
    path = save(tmp_path, "a.png", Image.fromarray(RGB))
    pixels = image_lib.read_image(path)
    assert pixels.dtype == np.uint8 and pixels.shape == (5, 7, 3)
    np.testing.assert_array_equal(pixels, RGB)


def test_16bit_gray_png_is_scaled_with_one_warning(tmp_path):
    values = np.array([[0, 1, 128, 129, 257], [32767, 32768, 65280, 65534, 65535]], np.uint16)
    path = save(tmp_path, "g16.png", Image.fromarray(values))
    assert Image.open(path).mode == "I;16"
    pixels = read_expecting_one_16bit_warning(path)
    np.testing.assert_array_equal(pixels, gray_as_rgb(expected_8bit(values)))


@pytest.mark.parametrize("colour_type, channels", [(2, 3), (6, 4), (4, 2)])
def test_16bit_colour_png_is_scaled_at_full_precision(tmp_path, colour_type, channels):
    # 1000 -> round(3.89) = 4, where Pillow's high byte would give 3.
    values = RNG.integers(0, 65536, size=(3, 4, channels)).astype(np.uint16)
    values[0, 0, 0] = 1000
    path = png_16bit(tmp_path / "c16.png", values, colour_type)
    pixels = read_expecting_one_16bit_warning(path)
    colour = values[..., :3] if channels >= 3 else gray_as_rgb(values[..., 0])
    np.testing.assert_array_equal(pixels, expected_8bit(colour))
    assert pixels[0, 0, 0] == 4


def test_gray_is_replicated(tmp_path):
    path = save(tmp_path, "l.png", Image.fromarray(GRAY))
    np.testing.assert_array_equal(image_lib.read_image(path), gray_as_rgb(GRAY))


def test_gray_alpha_drops_alpha(tmp_path):
    alpha = np.zeros_like(GRAY)
    path = save(tmp_path, "la.png", Image.fromarray(np.stack([GRAY, alpha], -1), "LA"))
    np.testing.assert_array_equal(image_lib.read_image(path), gray_as_rgb(GRAY))


def test_rgba_drops_alpha_and_keeps_colours_as_stored(tmp_path):
    alpha = np.zeros((5, 7, 1), np.uint8)  # fully transparent: colours must still survive
    path = save(tmp_path, "rgba.png", Image.fromarray(np.concatenate([RGB, alpha], -1), "RGBA"))
    np.testing.assert_array_equal(image_lib.read_image(path), RGB)


def test_palette_is_expanded_and_transparency_ignored(tmp_path):
    palette_image = Image.fromarray(RGB).quantize(colors=16)
    expected = np.asarray(palette_image.convert("RGB"))
    path = save(tmp_path, "p.png", palette_image, transparency=0)
    assert Image.open(path).mode == "P"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(image_lib.read_image(path), expected)


def test_one_bit_is_expanded(tmp_path):
    bits = Image.fromarray(GRAY > 127)
    path = save(tmp_path, "bits.png", bits)
    assert Image.open(path).mode == "1"
    np.testing.assert_array_equal(image_lib.read_image(path), gray_as_rgb((GRAY > 127) * 255))


def test_jpeg_is_read(tmp_path):
    flat = np.full((16, 16, 3), (200, 100, 50), np.uint8)
    path = save(tmp_path, "a.JPG", Image.fromarray(flat), quality=95)
    pixels = image_lib.read_image(path)
    assert pixels.shape == (16, 16, 3)
    assert np.abs(pixels.astype(int) - flat).max() <= 3


@pytest.mark.parametrize("name", ["a.bmp", "a.tif", "a.ppm", "a.webp"])
def test_lossless_formats_are_exact(tmp_path, name):
    options = {"lossless": True} if name.endswith("webp") else {}
    path = save(tmp_path, name, Image.fromarray(RGB), **options)
    np.testing.assert_array_equal(image_lib.read_image(path), RGB)


def test_cmyk_uses_pillow_conversion(tmp_path):
    cmyk = Image.fromarray(RGB).convert("CMYK")
    path = save(tmp_path, "cmyk.tif", cmyk)
    np.testing.assert_array_equal(image_lib.read_image(path), np.asarray(cmyk.convert("RGB")))


def test_float_tiff_is_clipped_and_rounded(tmp_path):
    values = np.array([[-5.0, 0.4, 0.6, 254.5, 300.0]], np.float32)
    path = save(tmp_path, "f.tif", Image.fromarray(values, "F"))
    expected = np.array([[0, 0, 1, 254, 255]], np.uint8)  # round half to even: 254.5 -> 254
    np.testing.assert_array_equal(image_lib.read_image(path), gray_as_rgb(expected))


@pytest.mark.parametrize("make", ["missing", "folder", "text", "empty", "truncated"])
def test_unreadable_inputs_raise_image_error(tmp_path, make):
    path = str(tmp_path / "x.png")
    if make == "folder":
        os.mkdir(path)
    elif make == "text":
        with open(path, "w") as f:
            f.write("not an image\n")
    elif make == "empty":
        open(path, "wb").close()
    elif make == "truncated":
        noise = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(path)
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[:len(data) // 2])
    with pytest.raises(ImageError, match=r"^cannot read image '.*x\.png': \S"):
        image_lib.read_image(path)


# --- list_images ------------------------------------------------------------------------------

def test_list_images_file_folder_and_glob(tmp_path):
    for name in ["b.PNG", "a.jpg", "c.TiFF", "notes.txt"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    folder = str(tmp_path)
    assert image_lib.list_images(folder) == [
        os.path.join(folder, name) for name in ["a.jpg", "b.PNG", "c.TiFF"]]
    assert image_lib.list_images(os.path.join(folder, "notes.txt")) == [
        os.path.join(folder, "notes.txt")]
    assert image_lib.list_images(os.path.join(folder, "[ab]*")) == [
        os.path.join(folder, "a.jpg"), os.path.join(folder, "b.PNG")]


@pytest.mark.parametrize("spec", ["empty_dir", "missing.png", "*.png"])
def test_list_images_nothing_matches(tmp_path, spec):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "notes.txt").write_bytes(b"x")
    full_spec = str(tmp_path / spec)
    with pytest.raises(ImageError, match="no images match .*: give an image file, a folder"):
        image_lib.list_images(full_spec)


# --- padding ----------------------------------------------------------------------------------

def test_padded_size():
    assert image_lib.padded_size(1, 1, 16) == (16, 16)
    assert image_lib.padded_size(32, 33, 16) == (32, 48)
    assert image_lib.padded_size(512, 768, 64) == (512, 768)
    with pytest.raises(ValueError, match="positive"):
        image_lib.padded_size(4, 4, 0)


def test_pad_1x1_to_16x16():
    pixel = np.array([[[10, 20, 30]]], np.uint8)
    padded = image_lib.pad_to_multiple(pixel, 16)
    assert padded.shape == (16, 16, 3) and padded.dtype == np.uint8
    assert (padded == pixel).all()


def test_pad_replicates_bottom_and_right_edges():
    padded = image_lib.pad_to_multiple(RGB, 4)
    assert padded.shape == (8, 8, 3)
    np.testing.assert_array_equal(padded[:5, :7], RGB)
    np.testing.assert_array_equal(padded[5:, :7], np.broadcast_to(RGB[-1:], (3, 7, 3)))
    np.testing.assert_array_equal(padded[:5, 7:], RGB[:, -1:])
    assert (padded[5:, 7:] == RGB[-1, -1]).all()
    np.testing.assert_array_equal(image_lib.pad_to_multiple(padded, 4), padded)


# --- write_png --------------------------------------------------------------------------------

def test_write_png_round_trip_leaves_no_temp_file(tmp_path):
    path = str(tmp_path / "out.png")
    image_lib.write_png(path, RGB)
    image_lib.write_png(path, RGB[::-1])  # overwrite in place
    assert os.listdir(tmp_path) == ["out.png"]
    np.testing.assert_array_equal(image_lib.read_image(path), RGB[::-1])


def test_write_png_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = str(tmp_path / "out.png")
    image_lib.write_png(path, RGB)

    def failing_replace(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(image_lib.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        image_lib.write_png(path, RGB[::-1])
    assert os.listdir(tmp_path) == ["out.png"]
    monkeypatch.undo()
    np.testing.assert_array_equal(image_lib.read_image(path), RGB)


def test_write_png_rejects_non_uint8_rgb(tmp_path):
    with pytest.raises(ValueError, match="expected a uint8 .height, width, 3. image"):
        image_lib.write_png(str(tmp_path / "out.png"), RGB.astype(np.float32))
    assert not os.listdir(tmp_path)


# --- pyramids ---------------------------------------------------------------------------------

def test_pyramid_sizes():
    assert image_lib.pyramid_sizes(333, 517, 3) == [(84, 130), (167, 259), (333, 517)]
    assert image_lib.pyramid_sizes(1, 1, 3) == [(1, 1), (1, 1), (1, 1)]
    assert image_lib.pyramid_sizes(64, 48, 1) == [(64, 48)]


def test_pyramid_at_odd_size():
    image = RNG.integers(0, 256, size=(33, 51, 3), dtype=np.uint8)
    levels = image_lib.pyramid(image, 3)
    assert [level.shape[:2] for level in levels] == [(9, 13), (17, 26), (33, 51)]
    assert all(level.dtype == np.uint8 for level in levels)
    assert levels[-1] is image


def test_downsample_keeps_flat_colour():
    flat = np.full((33, 51, 3), (7, 128, 250), np.uint8)
    np.testing.assert_array_equal(image_lib.downsample(flat, (17, 26)),
                                  np.full((17, 26, 3), (7, 128, 250), np.uint8))


def test_downsample_filters_differ_and_unknown_is_refused():
    image = RNG.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    levels = {name: image_lib.downsample(image, (16, 24), name)
              for name in image_lib.RESAMPLE_FILTERS}
    assert image_lib.DEFAULT_RESAMPLE == "lanczos"
    np.testing.assert_array_equal(image_lib.downsample(image, (16, 24)), levels["lanczos"])
    assert not np.array_equal(levels["lanczos"], levels["bilinear"])
    assert not np.array_equal(levels["bicubic"], levels["bilinear"])
    with pytest.raises(ValueError, match="unknown resampling filter 'nearest'"):
        image_lib.downsample(image, (16, 24), "nearest")
