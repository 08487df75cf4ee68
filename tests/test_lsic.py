""".lsic files (codec/container.py), the Python API (pipeline/api.py) and lsic.py.

Models: untrained 2-layer quality and 3-layer spatial hyperprior models saved as checkpoints,
their scale indexes spread over the tables (test_portable's stress weights), so that a
decoder under another numeric configuration is really tested; and a few calls on the shipped
models. The 200 damaged files run in this process through the API; the CLI runs in a few
processes: eval_<mode>.py and lsic.py compress under oneDNN on, one receiver under oneDNN off
with one thread.
"""
import os
import shutil

import numpy as np
import pytest

import run_scripts
from codec import bitstream, container
from codec.bitstream import BitstreamError
from codec.image import pyramid, read_image, write_png
from helpers import (describe, finish, run_script_in_process, smooth_image, start_script)
from pipeline.api import ScalableCodec
from test_portable import _CONFIGURATIONS, _stress_checkpoint

MODELS = {"quality": [8, 8], "spatial": [4, 4, 4]}
SIZES = {"quality": (40, 56), "spatial": (64, 72)}
ROUNDING = 2  # levels a float synthesis may differ by under another numeric configuration


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    """Per mode: (checkpoint dir, codec, image path, .lsic bytes, decoded images)."""
    root = tmp_path_factory.mktemp("lsic")
    result = {}
    for mode, filters in MODELS.items():
        checkpoint = str(root / f"{mode}_model")
        _stress_checkpoint(checkpoint, mode, "hyperprior", filters)
        codec = ScalableCodec.load(checkpoint)
        image = smooth_image(*SIZES[mode], seed=3)
        path = str(root / f"{mode}.png")
        write_png(path, image)
        data = codec.compress(image)
        result[mode] = (checkpoint, codec, path, data, codec.decompress(data))
    return result


@pytest.mark.parametrize("mode", list(MODELS))
def test_every_layer_boundary_is_a_file_of_that_many_layers(coded, mode):
    checkpoint, codec, _, data, images = coded[mode]
    parsed = container.parse(data)
    assert [layer.stream.layer_name for layer in parsed.layers] == codec.layer_names
    assert parsed.cut_index is None and parsed.layers[-1].end == len(data)
    for k, layer in enumerate(parsed.layers, 1):
        prefix = data[:layer.end]
        assert container.prefix(data, k) == prefix
        info = ScalableCodec.info(prefix)
        assert info["complete_layers"] == k and info["cut"] is None
        decoded = codec.decompress(prefix)
        assert len(decoded) == k
        for got, want in zip(decoded, images):
            np.testing.assert_array_equal(got, want)
        top = codec.decompress(data, num_layers=k, top_only=True)
        np.testing.assert_array_equal(top[0], images[k - 1])
    if mode == "spatial":
        height, width = SIZES[mode]
        assert [i.shape[:2] for i in images] == [(-(-height // 4), -(-width // 4)),
                                                   (-(-height // 2), -(-width // 2)),
                                                   (height, width)]


def test_cuts_and_flips_give_the_complete_layers_or_one_error(coded):
    """200 damaged files (random cuts, random byte changes) through the API: either the
    complete layers before the damage, pixel for pixel, or one BitstreamError line."""
    rng = np.random.default_rng(23)
    outcomes = {"decoded": 0, "error": 0}
    for trial in range(200):
        mode = list(MODELS)[trial % 2]
        _, codec, _, data, images = coded[mode]
        ends = [layer.end for layer in container.parse(data).layers]
        if trial < 100:
            damaged = data[:int(rng.integers(0, len(data)))]
            before = sum(end <= len(damaged) for end in ends)
        else:
            position = int(rng.integers(0, len(data)))
            damaged = bytearray(data)
            damaged[position] ^= int(rng.integers(1, 256))
            damaged = bytes(damaged)
            before = sum(end <= position for end in ends)
        try:
            decoded = codec.decompress(damaged)
        except BitstreamError as error:
            assert "\n" not in str(error) and str(error).startswith("<bytes>")
            outcomes["error"] += 1
            continue
        assert len(decoded) <= before, f"trial {trial}: decoded a damaged layer"
        for got, want in zip(decoded, images):
            np.testing.assert_array_equal(got, want)
        outcomes["decoded"] += 1
    print(f"\n200 damaged files: {outcomes}")
    assert outcomes["decoded"] > 20 and outcomes["error"] > 20


def test_foreign_and_mismatched_files_are_refused(coded):
    _, quality, _, data, _ = coded["quality"]
    _, spatial, _, spatial_data, _ = coded["spatial"]
    with pytest.raises(BitstreamError, match="not an .lsic file"):
        container.parse(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(BitstreamError, match="empty file"):
        container.parse(b"")
    with pytest.raises(BitstreamError, match="no complete layer"):
        container.parse(data[:10])
    with pytest.raises(BitstreamError, match="spatial-scalable stream but the model is quality"):
        quality.decompress(spatial_data)
    with pytest.raises(BitstreamError, match="bytes follow the last"):
        container.parse(data + b"junk")
    first = container.parse(data).layers[0].data
    other = container.parse(quality.compress(smooth_image(16, 16, seed=9))).layers[1].data
    with pytest.raises(BitstreamError, match="does not belong to the same image"):
        container.parse(first + other)
    # a stream file of the eval scripts is the one-layer prefix of a file
    assert bitstream.decode(first).layer_name == "B"


def test_shipped_models(tmp_path):
    """A few calls on the shipped models: compress, every prefix, the spatial sizes."""
    image = smooth_image(48, 80, seed=5)
    for mode in ("quality", "spatial"):
        codec = ScalableCodec.load(mode)
        data = codec.compress(image)
        info = ScalableCodec.info(data)
        assert info["mode"] == mode and info["complete_layers"] == len(codec.layer_names)
        two = codec.decompress(data[:info["layers"][1]["cumulative_bytes"] + 5])
        assert len(two) == 2
        assert two[-1].shape == (image.shape if mode == "quality" else (24, 40, 3))


def test_cli_round_trips_across_processes_and_configurations(coded, tmp_path):
    """eval_<mode>.py and lsic.py compress (oneDNN on, separate processes): the .lsic file is
    the eval streams back to back. A receiver under oneDNN off and one thread decodes the
    file and `head -c` of it at every layer boundary (lsic.py decompress, one process): the
    eval PNGs up to synthesis rounding. Errors: one line, exit 1, nothing written."""
    processes, expected = {}, {}
    for mode, (checkpoint, codec, image, data, _) in coded.items():
        folder = tmp_path / f"eval_{mode}"
        processes[f"eval {mode}"] = start_script(
            f"eval_{mode}.py", "--input_image", image, "--output_folder", folder,
            "--checkpoint_dir", checkpoint, numerics=_CONFIGURATIONS["oneDNN on"])
        processes[f"lsic {mode}"] = start_script(
            "lsic.py", "compress", image, tmp_path / f"{mode}.lsic", "--model", checkpoint,
            numerics=_CONFIGURATIONS["oneDNN on"])
    for key, process in processes.items():
        result = finish(process)
        assert result.returncode == 0, describe(result)
    commands = []
    for mode, (checkpoint, codec, _, _, _) in coded.items():
        names = codec.layer_names
        folder = tmp_path / f"eval_{mode}"
        streams = [(folder / bitstream.stream_filename(name)).read_bytes() for name in names]
        data = (tmp_path / f"{mode}.lsic").read_bytes()
        assert data == b"".join(streams)
        for k in range(1, len(names) + 1):
            prefix = tmp_path / f"{mode}_{k}.lsic"
            prefix.write_bytes(data[:len(b"".join(streams[:k]))])
            out = tmp_path / f"{mode}_{k}.png"
            commands += ["lsic.py", "decompress", prefix, out, "--model", checkpoint,
                         run_scripts.SEPARATOR]
            expected[out] = folder / f"rec_{names[k - 1]}.png"
        commands += ["lsic.py", "decompress", tmp_path / f"{mode}.lsic", tmp_path / f"{mode}.png",
                     "--all_layers", "--model", checkpoint, run_scripts.SEPARATOR]
        expected.update((tmp_path / f"{mode}_{name}.png", folder / f"rec_{name}.png")
                        for name in names)
    receiver = finish(start_script(os.path.join("tests", "run_scripts.py"), *commands,
                                   numerics=_CONFIGURATIONS["oneDNN off, 1 thread"]))
    assert receiver.returncode == 0, describe(receiver)
    largest = 0
    for got, want in expected.items():
        got, want = read_image(str(got)).astype(int), read_image(str(want)).astype(int)
        assert got.shape == want.shape
        largest = max(largest, int(np.abs(got - want).max()))
    print(f"\nlargest pixel difference, oneDNN on -> off with one thread: {largest}")
    assert largest <= ROUNDING

    # Errors, in this process: one line, exit 1, no output.
    quality_dir, spatial_dir = coded["quality"][0], coded["spatial"][0]
    damaged = bytearray((tmp_path / "quality.lsic").read_bytes())
    damaged[len(damaged) // 2] ^= 0x40
    (tmp_path / "damaged.lsic").write_bytes(bytes(damaged))
    shutil.copy(coded["quality"][2], tmp_path / "foreign.lsic")
    cases = {
        "damaged": ["decompress", tmp_path / "damaged.lsic", tmp_path / "x.png",
                    "--model", quality_dir],
        "foreign": ["decompress", tmp_path / "foreign.lsic", tmp_path / "x.png"],
        "wrong model": ["decompress", tmp_path / "quality.lsic", tmp_path / "x.png",
                        "--model", spatial_dir],
        "missing layers": ["decompress", tmp_path / "quality_1.lsic", tmp_path / "x.png",
                           "--num_layers", "2", "--model", quality_dir],
        "truncate past the end": ["truncate", tmp_path / "quality_1.lsic", tmp_path / "x.lsic",
                                  "--num_layers", "2"],
        "info of a foreign file": ["info", tmp_path / "foreign.lsic"],
    }
    for case, args in cases.items():
        code, out, err = run_script_in_process("lsic.py", args)
        assert code == 1, (case, out, err)
        assert err.startswith("error: ") and err.count("\n") == 1, (case, err)
        assert not (tmp_path / "x.png").exists() and not (tmp_path / "x.lsic").exists(), case
        assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")], case
    code, out, err = run_script_in_process(
        "lsic.py", ["truncate", tmp_path / "quality.lsic", tmp_path / "one.lsic",
                    "--num_layers", "1"])
    assert code == 0, err
    assert (tmp_path / "one.lsic").read_bytes() == (tmp_path / "quality_1.lsic").read_bytes()
    code, out, err = run_script_in_process("lsic.py", ["info", tmp_path / "quality_1.lsic",
                                                       "--json"])
    assert code == 0 and '"complete_layers": 1' in out, err
