"""Robust evaluation (issue 4), through the eval CLIs: damaged or misplaced streams are refused,
any image Pillow reads is coded, bad checkpoints give one clear line.

The format checks themselves are unit-tested (and fuzzed) in tests/test_bitstream.py; here the
CLIs and drivers are checked end to end: exit code, a one-line `error: <file>: <problem>`, no
traceback, and no reconstruction written (nor an earlier one lost) when decoding is refused.

Cost: two tiny untrained 2-layer models (filters 4), one eval of a folder of 14 small files
in-process, and one real subprocess (checkpoint loading and exit code as users see them).
CLIs run in-process through their own `__main__` block (runpy); only `cli.load_codec` is
replaced by the already loaded model where the loading itself is not what is tested.
"""
import json
import os
import shutil
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from helpers import run_script_in_process
from pipeline import cli
from models.config import ModelConfig
from codec import bitstream
from codec.streams import Codec
from models.factory import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUALITY = ModelConfig(mode="quality", layer_names=["B", "e1"], filters=[4, 4],
                      lmbdas=[250.0, 50.0])
SPATIAL = ModelConfig(mode="spatial", layer_names=["B", "e1"], filters=[4, 4],
                      lmbdas=[400.0, 300.0])
RNG = np.random.default_rng(4)


run_script = run_script_in_process


def error_line(code, err, *needles):
    """The single 'error: ...' line of a refused run; checks exit 1 and no traceback."""
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


# --- models and images (once per module) ------------------------------------------------------

def save_checkpoint(model, config, directory):
    tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(directory), 1).save()
    config.save(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint directories 'quality', 'other' (the same with one weight changed) and
    'spatial' of untrained tiny models (training is not what is tested here), with a codec
    for the quality one and one for the spatial one (enough to check streams, not to code)."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = build_model(QUALITY)
    quality = save_checkpoint(model, QUALITY, root / "quality")
    variable = model.trainable_variables[0]
    weights = variable.numpy()
    variable.assign(weights + 0.01)
    other = save_checkpoint(model, QUALITY, root / "other")
    variable.assign(weights)
    model.prepare_coding()
    spatial_model = build_model(SPATIAL)
    spatial_model.prepare_coding()  # a Codec carries the digest of the coding tables
    return dict(quality=quality, other=other,
                spatial=save_checkpoint(spatial_model, SPATIAL, root / "spatial"),
                codec=Codec(model), spatial_codec=Codec(spatial_model))


@pytest.fixture
def loaded(monkeypatch, checkpoints):
    """eval_quality.py uses the quality codec already loaded (same model as --checkpoint_dir)."""
    monkeypatch.setattr(cli, "load_codec", lambda args, mode: checkpoints["codec"])
    return checkpoints


def random_image(height, width, channels=3, dtype=np.uint8, high=256):
    shape = (height, width) if channels == 1 else (height, width, channels)
    return RNG.integers(0, high, shape).astype(dtype)


IMAGES = {  # file name -> (height, width); every one must be coded at exactly this size
    "rgb8.png": (37, 29), "rgb16.png": (20, 24), "gray.png": (18, 33), "gray_alpha.png": (16, 16),
    "rgba.png": (21, 17), "palette.png": (19, 23), "photo.jpg": (40, 48), "picture.bmp": (17, 31),
    "picture.tiff": (25, 19), "one_pixel.png": (1, 1), "one_row.png": (1, 45),
    "one_column.png": (45, 1), "odd.png": (33, 17),
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A folder with every kind of input image, plus a non-image named like a PNG."""
    folder = tmp_path_factory.mktemp("zoo")
    path = lambda name: str(folder / name)  # noqa: E731
    Image.fromarray(random_image(37, 29)).save(path("rgb8.png"))
    with open(path("rgb16.png"), "wb") as f:
        f.write(tf.io.encode_png(random_image(20, 24, dtype=np.uint16, high=65536)).numpy())
    Image.fromarray(random_image(18, 33, 1), "L").save(path("gray.png"))
    Image.fromarray(random_image(16, 16, 2), "LA").save(path("gray_alpha.png"))
    Image.fromarray(random_image(21, 17, 4), "RGBA").save(path("rgba.png"))
    Image.fromarray(random_image(19, 23)).convert("P", palette=Image.Palette.ADAPTIVE).save(
        path("palette.png"), transparency=0)
    Image.fromarray(random_image(40, 48)).save(path("photo.jpg"), quality=80)
    Image.fromarray(random_image(17, 31)).save(path("picture.bmp"))
    Image.fromarray(random_image(25, 19)).save(path("picture.tiff"))
    for name in ("one_pixel.png", "one_row.png", "one_column.png", "odd.png"):
        Image.fromarray(random_image(*IMAGES[name])).save(path(name))
    with open(path("broken.png"), "wb") as f:
        f.write(b"this is a text file, not a PNG\n")
    assert len(os.listdir(folder)) == len(IMAGES) + 1
    return folder


@pytest.fixture(scope="module")
def zoo_eval(checkpoints, zoo, tmp_path_factory):
    """eval_quality.py over the zoo folder (in-process, the loaded codec); its outputs."""
    out = tmp_path_factory.mktemp("zoo_out")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        patch.setattr(cli, "load_codec", lambda args, mode: checkpoints["codec"])
        code, stdout, stderr = run_script("eval_quality.py", [
            "--input_image", zoo, "--output_folder", out, "--checkpoint_dir",
            checkpoints["quality"]])
    return dict(code=code, out=stdout, err=stderr, folder=out,
                warnings=[str(w.message) for w in caught])


# --- images -----------------------------------------------------------------------------------

def test_every_image_kind_and_size_is_coded_and_the_bad_file_skipped(zoo_eval, zoo):
    assert zoo_eval["code"] == 0, zoo_eval["err"]
    assert "Traceback" not in zoo_eval["err"]
    broken = str(zoo / "broken.png")
    assert f"skipped: cannot read image '{broken}'" in zoo_eval["out"]
    assert f"average over {len(IMAGES)} image(s); 1 skipped (unreadable)" in zoo_eval["out"]

    with open(zoo_eval["folder"] / "results.json") as f:
        results = json.load(f)
    assert results["skipped"] == ["broken.png"]  # relative to the folder given
    coded = {os.path.basename(entry["image"]): entry for entry in results["images"]}
    assert set(coded) == set(IMAGES)
    for name, (height, width) in IMAGES.items():
        entry = coded[name]
        assert (entry["height"], entry["width"]) == (height, width), name
        assert [layer["name"] for layer in entry["layers"]] == ["B", "e1"]
        assert all(layer["bytes"] > 0 for layer in entry["layers"]), name
        # picture.bmp and picture.tiff share a stem: each keeps its own folder.
        stem = os.path.splitext(name)[0]
        folder = zoo_eval["folder"] / (name if stem == "picture" else stem)
        for layer in ("B", "e1"):
            assert (folder / f"stream_{layer}.tfci").stat().st_size > 0
            with Image.open(folder / f"rec_{layer}.png") as rec:
                assert (rec.mode, rec.size) == ("RGB", (width, height)), name


def test_16bit_png_is_reduced_with_a_warning(zoo_eval, zoo):
    messages = [m for m in zoo_eval["warnings"] if "16 bits" in m]
    assert len(messages) == 1 and str(zoo / "rgb16.png") in messages[0], zoo_eval["warnings"]


def test_a_non_image_alone_is_a_clear_error(loaded, zoo, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_script("eval_quality.py", [
        "--input_image", zoo / "broken.png", "--output_folder", out,
        "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, f"cannot read image '{zoo / 'broken.png'}'", "not an image file")
    assert not out.exists()


def test_a_folder_of_only_unreadable_files_is_an_error(loaded, tmp_path):
    for name in ("a.png", "b.jpg"):
        (tmp_path / name).write_bytes(b"not an image")
    out = tmp_path / "out"
    code, stdout, err = run_script("eval_quality.py", [
        "--input_image", tmp_path, "--output_folder", out, "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, "none of the 2 images could be read")
    assert stdout.count("skipped: cannot read image") == 2
    assert not out.exists()


# --- decoding refuses damaged, misplaced or foreign streams -----------------------------------

def streams_of(zoo_eval, image, destination):
    """A copy of one image's output folder (streams and the rec PNGs of the earlier run)."""
    return shutil.copytree(zoo_eval["folder"] / image, destination)


def snapshot(folder):
    """Name -> (inode, mtime, bytes) of every file: a rewrite (atomic replace) changes the inode."""
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.iterdir())}


def patch_stream(path, change):
    path.write_bytes(change(path.read_bytes()))


def flip_bit(position):
    def change(data):
        data = bytearray(data)
        data[position % len(data)] ^= 0x10
        return bytes(data)
    return change


def newer_version(data):
    body = data[:4] + bytes([bitstream.FORMAT_VERSION + 1]) + data[5:-4]
    return body + zlib.crc32(body).to_bytes(4, "big")


def damage(case, folder, zoo_eval):
    """Apply one kind of damage to the streams in `folder`; returns (file, words in error)."""
    B, e1 = folder / "stream_B.tfci", folder / "stream_e1.tfci"
    if case == "truncated":
        patch_stream(e1, lambda data: data[:len(data) // 2])
        return e1, "truncated"
    if case.startswith("flipped bit"):
        patch_stream(e1, flip_bit(int(case.split()[-1])))
        return e1, "corrupt"
    if case == "empty file":
        B.write_bytes(b"")
        return B, "empty file"
    if case == "not a tfci file":
        B.write_bytes((folder / "rec_B.png").read_bytes())
        return B, "not a .tfci stream"
    if case == "another layer under this name":
        shutil.copyfile(B, e1)
        return e1, "holds layer B (index 0), not e1 (index 1)"
    if case == "two images mixed":
        shutil.copyfile(zoo_eval["folder"] / "odd" / "stream_e1.tfci", e1)
        return e1, "does not belong to the same image"
    if case == "missing lower layer":
        B.unlink()
        return B, "missing stream file"
    if case == "future format version":
        patch_stream(B, newer_version)
        return B, f"newer format version {bitstream.FORMAT_VERSION + 1}"
    raise ValueError(case)


CASES = ["truncated", "flipped bit 5", "flipped bit 40", "flipped bit -1", "empty file",
         "not a tfci file", "another layer under this name", "two images mixed",
         "missing lower layer", "future format version"]


@pytest.mark.parametrize("case", CASES)
def test_decompress_refuses_and_keeps_earlier_reconstructions(loaded, zoo_eval, tmp_path, case):
    folder = streams_of(zoo_eval, "rgb8", tmp_path / "rgb8")
    path, problem = damage(case, folder, zoo_eval)
    before = snapshot(folder)
    code, _, err = run_script("eval_quality.py", [
        "--decompress", "--output_folder", folder, "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, f"error: {path}: ", problem)
    assert snapshot(folder) == before  # no rec PNG written, the earlier ones intact


def test_decompress_of_intact_streams_rewrites_the_same_reconstructions(loaded, zoo_eval,
                                                                        tmp_path):
    """The refusals above are not a decoder that refuses everything."""
    folder = streams_of(zoo_eval, "rgb8", tmp_path / "rgb8")
    for name in ("rec_B.png", "rec_e1.png"):
        (folder / name).unlink()
    code, out, err = run_script("eval_quality.py", [
        "--decompress", "--output_folder", folder, "--checkpoint_dir", loaded["quality"]])
    assert code == 0, err
    assert "decoded rec_B.png 29x37" in out
    for name in ("rec_B.png", "rec_e1.png"):
        assert (folder / name).read_bytes() == (zoo_eval["folder"] / "rgb8" / name).read_bytes()


def test_one_bad_folder_among_several_writes_no_png_at_all(loaded, zoo_eval, tmp_path):
    good = streams_of(zoo_eval, "rgb8", tmp_path / "all" / "a_good")
    bad = streams_of(zoo_eval, "odd", tmp_path / "all" / "b_bad")
    for folder in (good, bad):
        for name in ("rec_B.png", "rec_e1.png"):
            (folder / name).unlink()
    patch_stream(bad / "stream_e1.tfci", flip_bit(30))
    code, _, err = run_script("eval_quality.py", [
        "--decompress", "--output_folder", tmp_path / "all",
        "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, bad / "stream_e1.tfci", "corrupt")
    assert not list((tmp_path / "all").glob("*/rec_*.png"))


def test_decompress_with_another_checkpoint_refuses_in_a_real_process(checkpoints, zoo_eval,
                                                                      tmp_path):
    """A real `python eval_quality.py` (real checkpoint loading, real stderr and exit code)."""
    folder = streams_of(zoo_eval, "rgb8", tmp_path / "rgb8")
    before = snapshot(folder)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "eval_quality.py", "--decompress", "--output_folder", str(folder),
         "--checkpoint_dir", checkpoints["other"]],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    error_line(result.returncode, result.stderr, f"error: {folder / 'stream_B.tfci'}: ",
               "made with a different checkpoint")
    assert snapshot(folder) == before


def test_spatial_decompress_refuses_quality_streams(checkpoints, zoo_eval, tmp_path,
                                                   monkeypatch):
    """eval_spatial.py on the streams of the quality model."""
    monkeypatch.setattr(cli, "load_codec", lambda args, mode: checkpoints["spatial_codec"])
    folder = streams_of(zoo_eval, "rgb8", tmp_path / "rgb8")
    before = snapshot(folder)
    code, _, err = run_script("eval_spatial.py", [
        "--decompress", "--output_folder", folder, "--checkpoint_dir", checkpoints["spatial"]])
    error_line(code, err, folder / "stream_B.tfci",
               "is a quality-scalable stream but the model is spatial-scalable")
    assert snapshot(folder) == before


# --- checkpoint directories -------------------------------------------------------------------

def checkpoint_case(case, checkpoints, tmp_path):
    """(script, --checkpoint_dir, extra flags, words the error must contain)."""
    quality, spatial = checkpoints["quality"], checkpoints["spatial"]
    if case == "missing":
        return "eval_quality.py", tmp_path / "nothing", [], ["does not exist"]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        return "eval_quality.py", tmp_path / "empty", [], ["holds no config.json"]
    if case == "config but no checkpoint":
        QUALITY.save(str(tmp_path / "config_only"))
        return "eval_quality.py", tmp_path / "config_only", [], ["no checkpoint"]
    if case == "damaged config":
        shutil.copytree(quality, tmp_path / "damaged")
        (tmp_path / "damaged" / "config.json").write_text('{"mode": "quality", "filt')
        return "eval_quality.py", tmp_path / "damaged", [], ["not a valid model configuration"]
    if case == "spatial model to eval_quality":
        return "eval_quality.py", spatial, [], ["spatial-scalable model, not a quality-scalable"]
    if case == "quality model to eval_spatial":
        return "eval_spatial.py", quality, [], ["quality-scalable model, not a spatial-scalable"]
    if case == "--filters disagrees":
        return "eval_quality.py", quality, ["--filters", "8,8"], ["[4, 4]", "[8, 8]", "filters"]
    if case == "--entropy_model disagrees":
        return ("eval_quality.py", quality, ["--entropy_model", "factorized"],
                ["hyperprior", "factorized", "entropy_model"])
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "missing", "empty", "config but no checkpoint", "damaged config",
    "spatial model to eval_quality", "quality model to eval_spatial", "--filters disagrees",
    "--entropy_model disagrees"])
@pytest.mark.parametrize("decompress", [False, True], ids=["eval", "decompress"])
def test_bad_checkpoint_directory_is_one_clear_line(checkpoints, zoo, tmp_path, case,
                                                   decompress):
    script, directory, flags, needles = checkpoint_case(case, checkpoints, tmp_path)
    out = tmp_path / "out"
    args = ["--output_folder", out, "--checkpoint_dir", directory] + flags
    args += ["--decompress"] if decompress else ["--input_image", zoo / "rgb8.png"]
    code, _, err = run_script(script, args)
    error_line(code, err, str(directory), *needles)
    assert not out.exists()


def test_num_layers_beyond_the_model_is_one_clear_line(loaded, zoo_eval, tmp_path):
    folder = streams_of(zoo_eval, "rgb8", tmp_path / "rgb8")
    code, _, err = run_script("eval_quality.py", [
        "--decompress", "--num_layers", 3, "--output_folder", folder,
        "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, "--num_layers 3 is out of range", "2 layers")


def test_last_layer_only_without_decompress_is_one_clear_line(loaded, zoo, tmp_path):
    out = tmp_path / "out"
    code, _, err = run_script("eval_quality.py", [
        "--last_layer_only", "--input_image", zoo / "rgb8.png", "--output_folder", out,
        "--checkpoint_dir", loaded["quality"]])
    error_line(code, err, "--last_layer_only", "--decompress")
    assert not out.exists()
