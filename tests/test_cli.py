"""End-to-end tests of the command-line scripts, run as subprocesses from the repo root.

They reuse the session's tiny checkpoints (tests/conftest.py: a 2-layer hyperprior quality
model and a 3-layer factorized spatial model, both trained with the real train scripts).
Independent processes are started together to use both CPU cores.
"""
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import run_scripts
from codec import bitstream
from helpers import (ROOT, describe, finish, run_script_in_process, smooth_image, start_script,
                     with_repo_path)

SCRIPTS = ["train_quality.py", "train_spatial.py", "eval_quality.py", "eval_spatial.py",
           "create_tfrecords.py"]
IMAGES = {"big": (333, 517), "dot": (1, 1)}
LAYER_FIELDS = {"name", "eval_bpp", "actual_bpp", "payload_bpp", "bytes", "layer_bpp", "psnr",
                "ms_ssim"}
SPATIAL_FIELDS = LAYER_FIELDS | {"height", "width", "summed_eval_bpp"}


def _payload_bytes(path):
    """Bytes of a stream file's range-coded strings (the file less its header)."""
    with open(path, "rb") as f:
        return sum(map(len, bitstream.decode(f.read(), str(path)).strings))


def _read_png(path):
    with Image.open(path) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def _files(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A folder of two images: 333x517 (no side a multiple of 16) and 1x1."""
    folder = tmp_path_factory.mktemp("inputs")
    for seed, (name, (height, width)) in enumerate(IMAGES.items()):
        Image.fromarray(smooth_image(height, width, seed=40 + seed)).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def runs(tiny_checkpoints, inputs, tmp_path_factory):
    """Every CLI process of this module, started as early as their inputs allow:

    at once: eval_quality.py and eval_spatial.py on the folder, an eval with mismatching
    filters (a real process: its stderr must be the one error line, no TensorFlow start-up
    noise) and a tiled spatial eval; when the quality streams exist, in one receiver
    process: --decompress of all layers of both images, the same with --last_layer_only, a
    tiled --decompress, and --decompress --num_layers 1 with only stream_B.tfci present.
    The eval with a negative
    tile runs in this process (the script's own __main__ block): only its error matters
    there, and a process start costs seconds of CPU.
    Returns (output folder, receiver folder, {key: CompletedProcess}).
    """
    out = tmp_path_factory.mktemp("eval")
    receiver = tmp_path_factory.mktemp("receiver")
    processes = {
        "quality": start_script("eval_quality.py", "--input_image", inputs,
                                "--output_folder", out / "quality",
                                "--checkpoint_dir", tiny_checkpoints.quality_dir),
        "spatial": start_script("eval_spatial.py", "--input_image", inputs,
                                "--output_folder", out / "spatial",
                                "--checkpoint_dir", tiny_checkpoints.spatial_dir),
        "mismatch": start_script("eval_quality.py", "--input_image", inputs / "dot.png",
                                 "--output_folder", out / "mismatch", "--num_filters_B", "16",
                                 "--checkpoint_dir", tiny_checkpoints.quality_dir),
        "spatial_tiled": start_script("eval_spatial.py", "--input_image", inputs / "big.png",
                                      "--output_folder", out / "spatial_tiled", "--tile", "64",
                                      "--checkpoint_dir", tiny_checkpoints.spatial_dir),
    }
    results = {"bad_tile": _run_in_process("eval_quality.py", [
        "--input_image", inputs / "dot.png", "--output_folder", out / "bad_tile", "--tile", "-1",
        "--checkpoint_dir", tiny_checkpoints.quality_dir])}
    results["quality"] = finish(processes.pop("quality"))
    if results["quality"].returncode == 0:
        full = receiver / "full"
        shutil.copytree(out / "quality", full,
                        ignore=shutil.ignore_patterns("*.png", "results.json"))
        top_only = receiver / "top_only"
        shutil.copytree(full, top_only)
        base_only = receiver / "base_only"
        os.makedirs(base_only)
        shutil.copy(out / "quality" / "big" / "stream_B.tfci", base_only)
        tiled = receiver / "tiled"
        shutil.copytree(full, tiled)
        decoders = {
            "full": ["--output_folder", full],
            "top_only": ["--last_layer_only", "--output_folder", top_only],
            "tiled": ["--num_layers", "2", "--last_layer_only", "--tile", "48",
                      "--output_folder", tiled],
            "base_only": ["--num_layers", "1", "--output_folder", base_only]}
        # One receiver process (TensorFlow starts once) runs the four decodes one after the
        # other, each loading the checkpoint and reading its streams afresh.
        command = []
        for args in decoders.values():
            command += ["eval_quality.py", "--decompress", *args, "--checkpoint_dir",
                        tiny_checkpoints.quality_dir, run_scripts.SEPARATOR]
        processes["receiver"] = start_script(os.path.join("tests", "run_scripts.py"), *command)
    results.update((key, finish(process)) for key, process in processes.items())
    if "receiver" in results:
        results.update((key, results["receiver"]) for key in decoders)
    return out, receiver, results


def _run_in_process(script, args):
    """`python script args` run in this process; a CompletedProcess like finish()'s."""
    code, out, err = run_script_in_process(script, args)
    return subprocess.CompletedProcess([script, *map(str, args)], code, out, err)


@pytest.fixture(scope="module")
def evals(runs):
    out, _, results = runs
    for key in ("quality", "spatial"):
        assert results[key].returncode == 0, describe(results[key])
    return out, results


@pytest.fixture(scope="module")
def decompressed(runs, evals):
    _, receiver, results = runs
    return receiver, results


def test_resume_prints_the_step(tiny_checkpoints):
    first, last = tiny_checkpoints.quality_steps
    assert "resuming" not in tiny_checkpoints.quality_output
    assert f"done: step {first}" in tiny_checkpoints.quality_output
    assert f"resuming from step {first}" in tiny_checkpoints.resumed_output
    assert f"done: step {last}" in tiny_checkpoints.resumed_output
    assert os.path.exists(os.path.join(tiny_checkpoints.quality_dir, f"ckpt-{last}.index"))
    with open(os.path.join(tiny_checkpoints.quality_dir, "config.json")) as f:
        config = json.load(f)
    assert config["filters"] == [8, 8] and config["entropy_model"] == "hyperprior"


def test_training_notes_a_patch_too_small_for_photos(tiny_checkpoints):
    """The tiny quality run trains at --patchsize 64 (4x4 latents), which training notes."""
    assert ("note: at --patchsize 64 layer B trains on 64x64 images (4x4 latents)"
            in tiny_checkpoints.quality_output)
    assert "--patchsize 128 or more" in tiny_checkpoints.quality_output


@pytest.mark.parametrize("mode, layers, patchsize, smallest", [
    ("quality", 2, 64, 128), ("quality", 4, 80, 128), ("quality", 4, 128, None),
    ("spatial", 3, 256, 512), ("spatial", 3, 320, 512), ("spatial", 3, 512, None),
    ("spatial", 2, 128, 256), ("spatial", 2, 256, None)])
def test_small_patch_note(mode, layers, patchsize, smallest):
    from models.config import ModelConfig, layer_names
    from pipeline.cli import small_patch_note
    config = ModelConfig(mode=mode, layer_names=layer_names(layers), filters=[8] * layers,
                         lmbdas=[1.0] * layers)
    note = small_patch_note(config, patchsize)
    if smallest is None:
        assert note is None
    else:
        assert f"--patchsize {smallest} or more" in note


def test_eval_quality_folder_writes_streams_pngs_and_results(evals, inputs):
    out, results = evals
    quality = out / "quality"
    assert _files(quality) == ["big", "dot", "results.json"]
    for name in IMAGES:
        assert _files(quality / name) == ["rec_B.png", "rec_e1.png",
                                          "stream_B.tfci", "stream_e1.tfci"]
    with open(quality / "results.json") as f:
        summary = json.load(f)
    assert set(summary) == {"images", "average"}
    assert set(summary["average"]) == {"layers"}
    assert [os.path.basename(entry["image"]) for entry in summary["images"]] == [
        "big.png", "dot.png"]
    for entry in summary["images"]:
        assert set(entry) == {"image", "height", "width", "layers"}
        name = os.path.splitext(os.path.basename(entry["image"]))[0]
        assert (entry["height"], entry["width"]) == IMAGES[name]
        assert [layer["name"] for layer in entry["layers"]] == ["B", "e1"]
        for k, layer in enumerate(entry["layers"]):
            assert set(layer) == LAYER_FIELDS
            size = os.path.getsize(quality / name / f"stream_{layer['name']}.tfci")
            assert layer["bytes"] == size
            # Quality rates are cumulative: streams B..k over the image's pixels.
            total = sum(os.path.getsize(quality / name / f"stream_{l['name']}.tfci")
                        for l in entry["layers"][:k + 1])
            pixels = entry["height"] * entry["width"]
            assert layer["actual_bpp"] == pytest.approx(8 * total / pixels)
            # payload_bpp: the same without the headers, the range-coded strings alone.
            payload = sum(_payload_bytes(quality / name / f"stream_{l['name']}.tfci")
                          for l in entry["layers"][:k + 1])
            assert 0 < payload < total
            assert layer["payload_bpp"] == pytest.approx(8 * payload / pixels)
            assert layer["layer_bpp"] == pytest.approx(8 * size / pixels)  # the authors' actual_bpp
            assert layer["eval_bpp"] > 0
            if name == "big":
                assert layer["psnr"] > 10 and 0 < layer["ms_ssim"] <= 1
        # MS-SSIM needs 161 pixels per side: a number for 333x517, null for 1x1.
        assert all((layer["ms_ssim"] is None) == (name == "dot") for layer in entry["layers"])
        bpps = [layer["actual_bpp"] for layer in entry["layers"]]
        assert bpps[1] > bpps[0]
    average = summary["average"]["layers"]
    assert [layer["name"] for layer in average] == ["B", "e1"]
    for k, layer in enumerate(average):
        assert set(layer) == LAYER_FIELDS
        assert layer["bytes"] == pytest.approx(
            np.mean([entry["layers"][k]["bytes"] for entry in summary["images"]]))
    assert "average over 2 image(s)" in results["quality"].stdout


def test_eval_quality_round_trips_odd_sizes_exactly(evals, inputs):
    out, _ = evals
    with open(out / "quality" / "results.json") as f:
        psnrs = {os.path.splitext(os.path.basename(entry["image"]))[0]:
                 [layer["psnr"] for layer in entry["layers"]] for entry in json.load(f)["images"]}
    for name, size in IMAGES.items():
        original = _read_png(inputs / f"{name}.png")
        for k, layer in enumerate(("B", "e1")):
            reconstruction = _read_png(out / "quality" / name / f"rec_{layer}.png")
            assert reconstruction.shape == (*size, 3)
            mse = np.mean((reconstruction.astype(float) - original) ** 2)
            if mse > 0:  # results.json measures the written PNG against the input
                assert psnrs[name][k] == pytest.approx(10 * np.log10(255 ** 2 / mse), rel=1e-6)
            if name == "big":  # not garbage (a barely trained model gives ~15-17 dB)
                assert psnrs[name][k] > 10


def test_eval_spatial_round_trips_odd_sizes_exactly(evals):
    out, results = evals
    spatial = out / "spatial"
    with open(spatial / "results.json") as f:
        summary = json.load(f)
    assert set(summary) == {"images", "average"}
    for entry in summary["images"]:
        name = os.path.splitext(os.path.basename(entry["image"]))[0]
        height, width = IMAGES[name]
        assert (entry["height"], entry["width"]) == (height, width)
        expected = [(math.ceil(height / 4), math.ceil(width / 4)),
                    (math.ceil(height / 2), math.ceil(width / 2)), (height, width)]
        assert [layer["name"] for layer in entry["layers"]] == ["B", "e1", "e2"]
        assert _files(spatial / name) == ["rec_B.png", "rec_e1.png", "rec_e2.png",
                                          "stream_B.tfci", "stream_e1.tfci", "stream_e2.tfci"]
        for layer, size in zip(entry["layers"], expected):
            assert set(layer) == SPATIAL_FIELDS
            assert (layer["height"], layer["width"]) == size
            assert _read_png(spatial / name / f"rec_{layer['name']}.png").shape == (*size, 3)
            stream_bytes = os.path.getsize(spatial / name / f"stream_{layer['name']}.tfci")
            assert layer["bytes"] == stream_bytes
            assert layer["layer_bpp"] == pytest.approx(8 * stream_bytes / (size[0] * size[1]))
        # The authors' spatial eval_bpp: each layer's estimate over its own pixels, summed.
        own = [layer["eval_bpp"] if k == 0 else
               layer["eval_bpp"] - entry["layers"][k - 1]["eval_bpp"] * (
                   entry["layers"][k - 1]["height"] * entry["layers"][k - 1]["width"]) / (
                   layer["height"] * layer["width"])
               for k, layer in enumerate(entry["layers"])]
        for k, layer in enumerate(entry["layers"]):
            assert layer["summed_eval_bpp"] == pytest.approx(sum(own[:k + 1]))
        if entry["layers"][0]["height"] < height:  # lower layers have fewer pixels (not 1x1)
            assert entry["layers"][-1]["summed_eval_bpp"] > entry["layers"][-1]["eval_bpp"]
    # Averages hold the rates and quality; sizes differ between images and are left out.
    assert [set(layer) for layer in summary["average"]["layers"]] == [
        LAYER_FIELDS | {"summed_eval_bpp"}] * 3


@pytest.mark.parametrize("key, layers", [("full", ("B", "e1")), ("top_only", ("e1",))],
                         ids=["all layers", "--last_layer_only"])
def test_decompress_in_a_separate_process_gives_identical_pixels(evals, decompressed, key,
                                                                  layers):
    out, _ = evals
    receiver, results = decompressed
    assert results[key].returncode == 0, describe(results[key])
    for name in IMAGES:
        assert _files(receiver / key / name) == [f"rec_{layer}.png" for layer in layers] + [
            "stream_B.tfci", "stream_e1.tfci"]
        for layer in layers:
            sent = _read_png(out / "quality" / name / f"rec_{layer}.png")
            received = _read_png(receiver / key / name / f"rec_{layer}.png")
            np.testing.assert_array_equal(received, sent)


def test_decompress_base_layer_from_its_stream_alone(evals, decompressed):
    out, _ = evals
    receiver, results = decompressed
    assert results["base_only"].returncode == 0, describe(results["base_only"])
    assert _files(receiver / "base_only") == ["rec_B.png", "stream_B.tfci"]
    np.testing.assert_array_equal(_read_png(receiver / "base_only" / "rec_B.png"),
                                  _read_png(out / "quality" / "big" / "rec_B.png"))


def test_eval_with_mismatching_filters_fails_with_one_line(evals):
    out, results = evals
    result = results["mismatch"]
    assert result.returncode != 0, describe(result)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), describe(result)
    # Names both values: the saved filters and the requested ones (--num_filters_B 16).
    assert "[8, 8]" in lines[0] and "[16, 8]" in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(out / "mismatch" / "stream_B.tfci")


def test_help_of_every_script():
    # In this process (the scripts' own __main__ block): each script also runs as a fresh
    # process elsewhere in this suite (the tiny checkpoints, the evaluations above,
    # tests/test_create_tfrecords.py).
    for script in SCRIPTS:
        result = _run_in_process(script, ["--help"])
        assert result.returncode == 0, describe(result)
        assert "usage:" in result.stdout and "--" in result.stdout, script


_TENSORFLOW_IN_MAIN = """
import sys
from absl import app
from pipeline import cli

def main(args):
    from models.layers import TensorFlowStateError, check_traced_functions_compare_tensors
    try:
        check_traced_functions_compare_tensors()
        print("traced functions compare tensors")
    except TensorFlowStateError as error:
        print(error)

if sys.argv[1] == "cli.run":
    cli.run(main, app.parse_flags_with_usage, ())
else:
    app.run(main)
"""


@pytest.mark.parametrize("runner, printed", [
    ("cli.run", "traced functions compare tensors"),
    ("app.run", "TensorFlow was first imported inside absl's app.run main")])
def test_tensorflow_loaded_by_cli_run_keeps_traced_comparisons(runner, printed):
    """A main that first imports TensorFlow works under cli.run; under a bare absl app.run,
    TensorFlow 2.14 traces `tensor == 1` as False and building a model says so."""
    result = subprocess.run([sys.executable, "-c", _TENSORFLOW_IN_MAIN, runner],
                            cwd=ROOT, env=with_repo_path(os.environ), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, describe(result)
    assert printed in result.stdout, describe(result)


def test_library_errors_name_fields_and_the_cli_shows_flags():
    from codec.bitstream import BitstreamError
    from models.config import ConfigError
    from pipeline.cli import error_message
    error = ConfigError("num_layers 3 is out of range for 'num_layers/x'; num_layersx stays",
                        ["num_layers"])
    assert str(error).startswith("num_layers 3 is out of range")
    assert error_message(error) == ("--num_layers 3 is out of range for 'num_layers/x'; "
                                    "num_layersx stays")
    assert error_message(BitstreamError("plain")) == "plain"
    assert error_message(ValueError("num_layers")) == "num_layers"


@pytest.mark.parametrize("resample", ["lanczos", "bilinear"])
def test_eval_spatial_resample_flag_picks_the_pyramid_filter(tmp_path, resample):
    import eval_spatial
    from codec.image import pyramid
    path = tmp_path / "photo.png"
    image = smooth_image(40, 56, seed=2)
    Image.fromarray(image).save(path)
    args = eval_spatial.parse_args(["eval_spatial.py", "--resample", resample])
    levels = eval_spatial.level_reader(args, 3)(str(path))
    for level, expected in zip(levels, pyramid(image, 3, resample)):
        np.testing.assert_array_equal(level, expected)


def test_tiled_decode_and_tiled_spatial_eval_match_whole_image_coding(evals, decompressed):
    """--tile in a fresh process: tiled decode of streams coded whole (--num_layers,
    --last_layer_only), and a tiled spatial evaluation; pixels within 1 level of whole-image
    coding (float rounding only), and the spatial streams' sizes within a few bytes."""
    out, results = evals
    receiver, decoded = decompressed
    assert decoded["tiled"].returncode == 0, describe(decoded["tiled"])
    assert _files(receiver / "tiled" / "big") == ["rec_e1.png", "stream_B.tfci",
                                                  "stream_e1.tfci"]
    whole = _read_png(out / "quality" / "big" / "rec_e1.png").astype(int)
    assert np.abs(_read_png(receiver / "tiled" / "big" / "rec_e1.png") - whole).max() <= 1
    assert results["spatial_tiled"].returncode == 0, describe(results["spatial_tiled"])
    for layer in ("B", "e1", "e2"):
        tiled = out / "spatial_tiled" / f"rec_{layer}.png"
        untiled = out / "spatial" / "big" / f"rec_{layer}.png"
        assert np.abs(_read_png(tiled).astype(int) - _read_png(untiled)).max() <= 1
        sizes = [os.path.getsize(folder / f"stream_{layer}.tfci")
                 for folder in (out / "spatial_tiled", out / "spatial" / "big")]
        assert abs(sizes[0] - sizes[1]) <= 4, sizes


def test_negative_tile_fails_with_one_line(evals):
    _, results = evals
    result = results["bad_tile"]
    assert result.returncode == 1, describe(result)
    assert result.stderr.strip().splitlines() == [
        "error: --tile -1 must be 0 (no tiling) or a tile side in pixels"]
