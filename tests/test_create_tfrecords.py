"""Tests for create_tfrecords.py (in process and through the command line)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import create_tfrecords
from pipeline import data
from pipeline.data import DataError
from codec.image import downsample

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _image(height, width, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _save(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image).save(path)
    return image


def _run(*argv):
    args = create_tfrecords.parse_args(["create_tfrecords.py", *map(str, argv)])
    return create_tfrecords.create(args)


def _read(files):
    records = []
    for path in files:
        for record in tf.data.TFRecordDataset(path):
            q, h, f = data.parse_example(record)
            records.append((q.numpy(), h.numpy(), f.numpy()))
    return records


def _triple_folders(root, triples):
    for name, (full, half, quarter) in triples.items():
        for folder, image in (("full", full), ("half", half), ("quarter", quarter)):
            if image is not None:
                _save(str(root / folder / name), image)
    return [f"--input_image={root / 'full'}", f"--input_image_half={root / 'half'}",
            f"--input_image_quater={root / 'quarter'}"]


def test_mode1_round_trip_and_skips(tmp_path, capsys):
    good = (_image(48, 64, 1), _image(24, 32, 2), _image(12, 16, 3))
    good2 = (_image(32, 32, 4), _image(16, 16, 5), _image(8, 8, 6))
    triples = {
        "a.png": good,
        "b.png": good2,
        "nohalf.png": (_image(32, 32), None, _image(8, 8)),
        "ratio.png": (_image(30, 32), _image(16, 16), _image(8, 8)),
    }
    flags = _triple_folders(tmp_path / "in", triples)
    out = tmp_path / "out" / "train.tfrecords"
    result = _run(f"--train_tfrecords={out}", *flags)
    assert result["examples"] == 2 and result["images"] == 2
    assert sorted(result["skipped"]) == [("nohalf.png", "missing half/quarter"),
                                         ("ratio.png", "wrong size ratio")]
    err = capsys.readouterr().err
    assert "nohalf.png" in err and "ratio.png" in err
    records = _read([str(out)])
    assert len(records) == 2
    for (q, h, f), (full, half, quarter) in zip(records, (good, good2)):
        np.testing.assert_array_equal(f, full)
        np.testing.assert_array_equal(h, half)
        np.testing.assert_array_equal(q, quarter)
    assert data.check_tfrecords(str(out)) == [str(out)]


def test_mode1_cuts_large_triples(tmp_path):
    full, half, quarter = _image(64, 96, 1), _image(32, 48, 2), _image(16, 24, 3)
    flags = _triple_folders(tmp_path / "in", {"a.png": (full, half, quarter)})
    out = tmp_path / "train.tfrecords"
    result = _run(f"--train_tfrecords={out}", "--patchsize=32", *flags)
    assert result["examples"] == 6
    records = _read([str(out)])
    positions = [(y, x) for y in (0, 32) for x in (0, 32, 64)]
    for (q, h, f), (y, x) in zip(records, positions):
        np.testing.assert_array_equal(f, full[y:y + 32, x:x + 32])
        np.testing.assert_array_equal(h, half[y // 2:y // 2 + 16, x // 2:x // 2 + 16])
        np.testing.assert_array_equal(q, quarter[y // 4:y // 4 + 8, x // 4:x // 4 + 8])


def test_mode2_patches(tmp_path, capsys):
    image = _save(str(tmp_path / "in" / "photo.png"), _image(70, 100, 1))
    _save(str(tmp_path / "in" / "tiny.png"), _image(20, 100, 2))
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "train.tfrecords"
    result = _run(f"--train_tfrecords={out}", f"--input_image={tmp_path / 'in'}",
                  "--patchsize=32")
    assert result["examples"] == 6 and result["images"] == 1  # 2 rows x 3 columns
    assert sorted(kind for _, kind in result["skipped"]) == ["smaller than patch", "unreadable"]
    records = _read([str(out)])
    positions = [(y, x) for y in (0, 32) for x in (0, 32, 64)]
    assert len(records) == 6
    for (q, h, f), (y, x) in zip(records, positions):
        patch = image[y:y + 32, x:x + 32]
        np.testing.assert_array_equal(f, patch)
        np.testing.assert_array_equal(h, downsample(patch, (16, 16)))
        np.testing.assert_array_equal(q, downsample(patch, (8, 8)))


def test_mode2_whole_images(tmp_path, capsys):
    """--whole_images: one example per image, sides cut to a multiple of 4, the pyramid made
    from the whole (cut) image; images smaller than --patchsize skipped; the training
    dataset then crops every aligned --patchsize window out of the whole photos."""
    wide = _save(str(tmp_path / "in" / "wide.png"), _image(70, 101, 1))
    tall = _save(str(tmp_path / "in" / "tall.png"), _image(66, 48, 2))
    _save(str(tmp_path / "in" / "tiny.png"), _image(30, 100, 3))
    out = tmp_path / "train.tfrecords"
    result = _run(f"--train_tfrecords={out}", f"--input_image={tmp_path / 'in'}",
                  "--patchsize=32", "--whole_images")
    assert result["examples"] == 2 and result["images"] == 2
    assert [kind for _, kind in result["skipped"]] == ["smaller than patch"]
    records = dict(zip(("tall", "wide"), _read([str(out)])))  # files in name order
    for name, image, (height, width) in (("tall", tall, (64, 48)), ("wide", wide, (68, 100))):
        q, h, f = records[name]
        np.testing.assert_array_equal(f, image[:height, :width])
        np.testing.assert_array_equal(h, downsample(f, (height // 2, width // 2)))
        np.testing.assert_array_equal(q, downsample(f, (height // 4, width // 4)))

    dataset = data.pyramid_dataset([str(out)], batchsize=1, patchsize=32, seed=3)
    offsets = set()
    for q, h, f in dataset.take(40):
        q, h, f = (np.round(v.numpy()[0] * 255).astype(np.uint8) for v in (q, h, f))
        source = [name for name, (_, _, full) in records.items()
                  if full.shape[1] >= 32 and any(
                      np.array_equal(full[y:y + 32, x:x + 32], f)
                      for y in range(0, full.shape[0] - 31, 4)
                      for x in range(0, full.shape[1] - 31, 4))]
        assert len(source) == 1
        rq, rh, rf = records[source[0]]
        (y, x), = [(y, x) for y in range(0, rf.shape[0] - 31, 4)
                   for x in range(0, rf.shape[1] - 31, 4)
                   if np.array_equal(rf[y:y + 32, x:x + 32], f)]
        np.testing.assert_array_equal(h, rh[y // 2:y // 2 + 16, x // 2:x // 2 + 16])
        np.testing.assert_array_equal(q, rq[y // 4:y // 4 + 8, x // 4:x // 4 + 8])
        offsets.add((source[0], y, x))
    assert len(offsets) > 10  # random offsets, not one fixed patch per photo

    with pytest.raises(DataError, match="--whole_images makes the half and quarter"):
        _run(f"--train_tfrecords={tmp_path / 'x'}", f"--input_image={tmp_path / 'in'}",
             f"--input_image_half={tmp_path / 'in'}", f"--input_image_quater={tmp_path / 'in'}",
             "--whole_images")


def test_shards(tmp_path):
    _save(str(tmp_path / "in" / "a.png"), _image(64, 96, 1))
    out = tmp_path / "train.tfrecords"
    result = _run(f"--train_tfrecords={out}", f"--input_image={tmp_path / 'in'}",
                  "--patchsize=32", "--num_shards=3")
    names = [f"{out}-{i:05d}-of-00003" for i in range(3)]
    assert result["files"] == names
    assert sorted(os.listdir(tmp_path)) == ["in"] + sorted(os.path.basename(n) for n in names)
    assert data.check_tfrecords(f"{out}-*") == names
    assert [len(_read([n])) for n in names] == [2, 2, 2]

    with pytest.raises(DataError, match="more than the 6 examples"):
        _run(f"--train_tfrecords={tmp_path / 'other'}", f"--input_image={tmp_path / 'in'}",
             "--patchsize=32", "--num_shards=7")
    assert not any(n.startswith(("other", ".other")) for n in os.listdir(tmp_path))


def test_nothing_written_when_nothing_usable(tmp_path):
    _save(str(tmp_path / "in" / "small.png"), _image(20, 20))
    out_dir = tmp_path / "out"
    with pytest.raises(DataError, match="no usable image"):
        _run(f"--train_tfrecords={out_dir / 'train.tfrecords'}",
             f"--input_image={tmp_path / 'in'}", "--patchsize=32", "--num_shards=2")
    assert not out_dir.exists() or os.listdir(out_dir) == []


def test_interrupt_leaves_nothing(tmp_path, monkeypatch):
    for i in range(3):
        _save(str(tmp_path / "in" / f"{i}.png"), _image(32, 32, i))
    calls = []

    def interrupted(*images):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return data.make_example(*images)

    monkeypatch.setattr(create_tfrecords, "make_example", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _run(f"--train_tfrecords={tmp_path / 'train.tfrecords'}",
             f"--input_image={tmp_path / 'in'}", "--patchsize=32", "--num_shards=2")
    assert os.listdir(tmp_path) == ["in"]


def test_usage_errors(tmp_path):
    with pytest.raises(DataError, match="both --input_image_half and --input_image_quater"):
        _run(f"--train_tfrecords={tmp_path / 'x'}", f"--input_image={tmp_path}",
             f"--input_image_half={tmp_path}")
    with pytest.raises(DataError, match="multiple of 4"):
        _run(f"--train_tfrecords={tmp_path / 'x'}", f"--input_image={tmp_path}",
             "--patchsize=30")


def _cli(*argv):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, "create_tfrecords.py", *map(str, argv)],
                          cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_cli_end_to_end(tmp_path):
    _save(str(tmp_path / "in" / "a.png"), _image(64, 64, 1))
    out = tmp_path / "train.tfrecords"
    done = _cli("--train_tfrecords", out, "--input_image", tmp_path / "in",
                "--patchsize", 32, "--num_shards", 2)
    assert done.returncode == 0, done.stderr
    assert "wrote 4 examples from 1 images" in done.stdout
    assert len(_read([f"{out}-00000-of-00002", f"{out}-00001-of-00002"])) == 4

    failed = _cli("--train_tfrecords", tmp_path / "bad.tfrecords",
                  "--input_image", tmp_path / "missing")
    assert failed.returncode != 0
    assert "Traceback" not in failed.stderr
    lines = failed.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --input_image"), failed.stderr
    assert not (tmp_path / "bad.tfrecords").exists()


@pytest.mark.parametrize("resample", ["lanczos", "bicubic", "bilinear"])
def test_resample_filter_makes_the_half_and_quarter(tmp_path, resample):
    image = _save(str(tmp_path / "in" / "photo.png"), _image(32, 32, 7))
    out = tmp_path / f"{resample}.tfrecords"
    _run(f"--train_tfrecords={out}", f"--input_image={tmp_path / 'in'}", "--patchsize=32",
         f"--resample={resample}")
    [(q, h, f)] = _read([str(out)])
    np.testing.assert_array_equal(h, downsample(image, (16, 16), resample))
    np.testing.assert_array_equal(q, downsample(image, (8, 8), resample))
    others = [name for name in ("lanczos", "bicubic", "bilinear") if name != resample]
    assert all(not np.array_equal(h, downsample(image, (16, 16), name)) for name in others)


def test_default_resample_is_lanczos():
    args = create_tfrecords.parse_args(["create_tfrecords.py", "--train_tfrecords=x"])
    assert args.resample == "lanczos"
    with pytest.raises(SystemExit):
        create_tfrecords.parse_args(["create_tfrecords.py", "--train_tfrecords=x",
                                     "--resample=nearest"])
