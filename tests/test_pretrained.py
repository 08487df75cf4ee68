"""Shipped-model folders (pipeline/pretrained.py): export, size, loading, eval by default."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers import ROOT, describe, finish, smooth_image, start_script
from models.config import ModelConfig
from pipeline import checkpoints, pretrained, sample_photos


@pytest.fixture(scope="module", autouse=True)
def shipped_evals(tmp_path_factory):
    """eval_quality.py and eval_spatial.py without --checkpoint_dir, started first so that they
    overlap the export and the other evaluations of this module. Yields (folder,
    {mode: process})."""
    folder = tmp_path_factory.mktemp("shipped")
    photo = os.path.join(sample_photos.data_folder(), sample_photos.HELD_OUT[0])
    # A real photo: on a smooth synthetic image the layers above B add nothing to measure.
    Image.open(photo).convert("RGB").crop((200, 100, 392, 228)).save(folder / "photo.png")
    processes = {mode: start_script(f"eval_{mode}.py", "--input_image", folder / "photo.png",
                                    "--output_folder", folder / mode)
                 for mode in ("quality", "spatial")}
    yield folder, processes
    for process in processes.values():
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("pretrained") / "quality")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.pretrained", "--checkpoint_dir",
         tiny_checkpoints.quality_dir, "--output", folder],
        cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, describe(result)
    return tiny_checkpoints.quality_dir, folder


def test_export_holds_float16_weights_only(exported):
    checkpoint_dir, folder = exported
    assert sorted(os.listdir(folder)) == [checkpoints.TABLES_NAME, "config.json",
                                          pretrained.WEIGHTS_NAME]
    assert ModelConfig.load(folder) == ModelConfig.load(checkpoint_dir)
    with np.load(os.path.join(folder, pretrained.WEIGHTS_NAME)) as arrays:
        dtypes = {arrays[k].dtype for k in arrays.files if k != "names"}
    assert dtypes == {np.dtype(np.float16)}
    # Weights alone in float16 are far smaller than a training checkpoint (Adam slots, step).
    checkpoint_bytes = sum(os.path.getsize(os.path.join(checkpoint_dir, f))
                           for f in os.listdir(checkpoint_dir)
                           if f.startswith(os.path.basename(
                               checkpoints.latest_checkpoint(checkpoint_dir))))
    assert os.path.getsize(os.path.join(folder, pretrained.WEIGHTS_NAME)) < checkpoint_bytes / 4


def test_loaded_weights_are_the_float16_rounded_checkpoint(exported):
    checkpoint_dir, folder = exported
    trained = checkpoints.restore_trained_model(checkpoint_dir, "quality")
    shipped = checkpoints.restore_trained_model(folder, "quality")
    for a, b in zip(trained.weights, shipped.weights):
        np.testing.assert_array_equal(a.numpy().astype(np.float16).astype(np.float32), b.numpy())


def test_mismatched_weights_are_a_checkpoint_error(exported, tmp_path):
    _, folder = exported
    config = ModelConfig.load(folder)
    config.filters = [f + 1 for f in config.filters]
    config.save(str(tmp_path))
    os.link(os.path.join(folder, pretrained.WEIGHTS_NAME), tmp_path / pretrained.WEIGHTS_NAME)
    assert not (tmp_path / checkpoints.TABLES_NAME).exists()
    with pytest.raises(checkpoints.CheckpointError, match="does not match"):
        checkpoints.restore_trained_model(str(tmp_path), "quality")


def test_eval_codes_with_a_pretrained_folder(exported, tmp_path):
    _, folder = exported
    image = tmp_path / "photo.png"
    Image.fromarray(smooth_image(70, 90)).save(image)
    out = tmp_path / "out"
    result = finish(start_script("eval_quality.py", "--input_image", image, "--output_folder",
                                 out, "--checkpoint_dir", folder))
    assert result.returncode == 0, describe(result)
    receiver = finish(start_script("eval_quality.py", "--decompress", "--output_folder", out,
                                   "--checkpoint_dir", folder))
    assert receiver.returncode == 0, describe(receiver)
    assert (out / "rec_e1.png").exists()


@pytest.mark.parametrize("mode", ["quality", "spatial"])
def test_eval_without_checkpoint_dir_uses_the_shipped_model(shipped_evals, mode):
    folder, processes = shipped_evals
    result = finish(processes[mode])
    if os.path.isdir(pretrained.shipped_model_dir(mode)):
        assert result.returncode == 0, describe(result)
        assert "payload_bpp" in result.stdout  # the per-layer table
        if mode == "quality":
            # What a model computing wrong transforms fails (pipeline/cli.py,
            # _load_tensorflow_before_absl_init_ends): each layer gains, and the rate estimate
            # matches the streams (measured: +0.6 to +1.0 dB per layer, within 1 %).
            with open(folder / mode / "results.json") as f:
                layers = json.load(f)["average"]["layers"]
            psnr = [layer["psnr"] for layer in layers]
            assert all(b > a + 0.2 for a, b in zip(psnr, psnr[1:])), psnr
            assert all(abs(layer["eval_bpp"] / layer["payload_bpp"] - 1) < 0.05
                       for layer in layers), layers
    else:
        assert result.returncode == 1, describe(result)
        assert result.stderr.strip().splitlines() == [
            f"error: no {mode} model is shipped in {pretrained.shipped_model_dir(mode)}: "
            f"pass --checkpoint_dir (a directory train_{mode}.py wrote)"]
