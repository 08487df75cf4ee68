"""Tests for pipeline/data.py: training file lists, patch and pyramid datasets."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from pipeline import data
from pipeline.data import DataError


def _save(path, height, width, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(image).save(path)
    return image


# ----------------------------------------------------------------------------
# training_images / patch_dataset


def test_training_images_skips_small_and_non_images(tmp_path, capsys):
    _save(tmp_path / "big.png", 40, 50)
    _save(tmp_path / "big2.jpg", 32, 32)
    _save(tmp_path / "small.png", 20, 50)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "x.tiff")
    files = data.training_images(str(tmp_path / "*"), 32)
    assert [os.path.basename(f) for f in files] == ["big.png", "big2.jpg"]
    out, err = capsys.readouterr()
    assert "training on 2 images (3 skipped" in out
    assert "small.png" in out
    assert "notes.txt" in err and "x.tiff" in err


def test_training_images_errors(tmp_path):
    with pytest.raises(DataError, match="matches no files"):
        data.training_images(str(tmp_path / "*.png"), 32)
    _save(tmp_path / "small.png", 20, 50)
    with pytest.raises(DataError, match="no training image is at least 32x32"):
        data.training_images(str(tmp_path / "*.png"), 32)


def test_patch_dataset_shapes_and_checkpoint(tmp_path):
    images = [_save(tmp_path / "a.png", 40, 50, 1), _save(tmp_path / "b.png", 33, 32, 2)]
    files = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    dataset = data.patch_dataset(files, 32, 3, preprocess_threads=2, seed=1)
    iterator = iter(dataset)
    batch = next(iterator).numpy()
    assert batch.shape == (3, 32, 32, 3) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 1
    # Every patch is a crop of one of the images.
    for patch in np.round(batch * 255).astype(np.uint8):
        found = any(
            np.array_equal(patch, image[y:y + 32, x:x + 32])
            for image in images
            for y in range(image.shape[0] - 31) for x in range(image.shape[1] - 31))
        assert found
    # The iterator can be saved and restored (stateless crops).
    checkpoint = tf.train.Checkpoint(data=iterator)
    path = checkpoint.save(str(tmp_path / "ckpt" / "it"))
    expected = [next(iterator).numpy() for _ in range(3)]
    checkpoint.restore(path)
    got = [next(iterator).numpy() for _ in range(3)]
    np.testing.assert_array_equal(np.stack(expected), np.stack(got))


# ----------------------------------------------------------------------------
# Spatial TFRecords


def _triple(height, width, seed=0):
    rng = np.random.default_rng(seed)
    full = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    half = rng.integers(0, 256, ((height + 1) // 2, (width + 1) // 2, 3), dtype=np.uint8)
    quarter = rng.integers(0, 256, ((height + 3) // 4, (width + 3) // 4, 3), dtype=np.uint8)
    return full, half, quarter


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)
    return str(path)


def test_example_round_trip_odd_sizes():
    full, half, quarter = _triple(13, 10)
    q, h, f = data.parse_example(data.make_example(full, half, quarter))
    np.testing.assert_array_equal(f.numpy(), full)
    np.testing.assert_array_equal(h.numpy(), half)
    np.testing.assert_array_equal(q.numpy(), quarter)
    with pytest.raises(DataError, match="half image"):
        data.make_example(full, half[:-1], quarter)


def test_check_tfrecords(tmp_path):
    good = _write(tmp_path / "good.tfrecords", [data.make_example(*_triple(32, 32))])
    good2 = _write(tmp_path / "good2.tfrecords", [data.make_example(*_triple(16, 16))])
    assert data.check_tfrecords(good) == [good]
    assert data.check_tfrecords(f"{good},{good2}") == [good, good2]
    assert data.check_tfrecords(str(tmp_path / "good*.tfrecords")) == [good, good2]
    with pytest.raises(DataError, match="smaller than the 32x32"):
        data.check_tfrecords(str(tmp_path / "good*.tfrecords"), patchsize=32)

    with pytest.raises(DataError, match="matches no files"):
        data.check_tfrecords(str(tmp_path / "missing.tfrecords"))
    with pytest.raises(DataError, match="matches no files"):
        data.check_tfrecords(f"{good},{tmp_path / 'missing.tfrecords'}")

    corrupt = tmp_path / "corrupt.tfrecords"
    corrupt.write_bytes(os.urandom(200))
    with pytest.raises(DataError, match="corrupt"):
        data.check_tfrecords(str(corrupt))

    empty = tmp_path / "empty.tfrecords"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match="no records"):
        data.check_tfrecords(str(empty))

    other = tf.train.Example(features=tf.train.Features(feature={
        "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"x"])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[1]))}))
    wrong = _write(tmp_path / "x.tfrecords", [other.SerializeToString()])
    with pytest.raises(DataError) as info:
        data.check_tfrecords(wrong)
    assert str(info.value) == (
        "'x.tfrecords' is not a spatial training TFRecord (missing feature "
        "img_raw_org): make it with create_tfrecords.py")


def _coordinate_triple(size, tag):
    """Images whose pixels hold (row, column, tag) of their own level."""
    levels = []
    for div, offset in ((1, 0), (2, 1), (4, 2)):
        n = size // div
        ys, xs = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
        levels.append(np.stack([ys, xs, np.full_like(ys, tag + offset)], -1).astype(np.uint8))
    return levels  # full, half, quarter


def test_pyramid_dataset_aligned_crops(tmp_path):
    stored = {}
    examples = []
    for tag in (10, 20, 30):
        full, half, quarter = _coordinate_triple(64, tag)
        stored[tag] = (quarter, half, full)
        examples.append(data.make_example(full, half, quarter))
    # A second file with examples smaller than the patch: they are dropped.
    small = data.make_example(*_triple(16, 16))
    files = [_write(tmp_path / "a.tfrecords", examples),
             _write(tmp_path / "b.tfrecords", [small])]
    with pytest.raises(DataError, match="multiple of 4"):
        data.pyramid_dataset(files, 2, patchsize=30)

    dataset = data.pyramid_dataset(files, 4, patchsize=32, seed=3, shuffle_buffer=8)
    assert [s.shape.as_list() for s in dataset.element_spec] == [
        [4, 8, 8, 3], [4, 16, 16, 3], [4, 32, 32, 3]]
    iterator = iter(dataset)
    offsets = set()
    for _ in range(5):
        q, h, f = (np.round(x.numpy() * 255).astype(np.uint8) for x in next(iterator))
        assert q.dtype == np.uint8
        for qi, hi, fi in zip(q, h, f):
            tag = int(fi[0, 0, 2])
            assert tag in stored
            oy, ox = int(fi[0, 0, 0]), int(fi[0, 0, 1])
            assert oy % 4 == 0 and ox % 4 == 0
            offsets.add((oy, ox))
            s_quarter, s_half, s_full = stored[tag]
            np.testing.assert_array_equal(fi, s_full[oy:oy + 32, ox:ox + 32])
            np.testing.assert_array_equal(hi, s_half[oy // 2:oy // 2 + 16, ox // 2:ox // 2 + 16])
            np.testing.assert_array_equal(qi, s_quarter[oy // 4:oy // 4 + 8, ox // 4:ox // 4 + 8])
    assert len(offsets) > 1  # random offsets

    # Iterator checkpointing works here too.
    checkpoint = tf.train.Checkpoint(data=iterator)
    path = checkpoint.save(str(tmp_path / "ckpt" / "it"))
    expected = [x.numpy() for x in next(iterator)]
    checkpoint.restore(path)
    got = [x.numpy() for x in next(iterator)]
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)


def test_pyramid_dataset_whole_examples(tmp_path):
    triples = [_triple(24, 20, seed) for seed in range(3)]
    path = _write(tmp_path / "a.tfrecords", [data.make_example(*t) for t in triples])
    q, h, f = next(iter(data.pyramid_dataset([path], 2)))
    assert q.shape == (2, 6, 5, 3) and h.shape == (2, 12, 10, 3) and f.shape == (2, 24, 20, 3)
    assert f.dtype == tf.float32
    fulls = [t[0] for t in triples]
    for image in np.round(f.numpy() * 255).astype(np.uint8):
        assert any(np.array_equal(image, full) for full in fulls)


# ----------------------------------------------------------------------------
# The authors' TFRecords: raw RGB squares, no size features


def _authors_example(full, half, quarter):
    """A record as the authors' create_tfrecords.py writes it: the three images'
    raw bytes under their feature names, nothing else."""
    def raw(image):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()]))
    return tf.train.Example(features=tf.train.Features(feature={
        "img_raw_org": raw(full), "img_raw_half": raw(half),
        "img_raw_quater": raw(quarter)})).SerializeToString()


def _authors_squares(side, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8)
            for s in (side, side // 2, side // 4)]


def test_authors_tfrecords_of_512_256_128_squares_are_read(tmp_path):
    full, half, quarter = _authors_squares(512)
    path = _write(tmp_path / "authors.tfrecords", [_authors_example(full, half, quarter)])
    assert data.check_tfrecords(path, patchsize=512) == [path]
    q, h, f = next(iter(tf.data.TFRecordDataset(path).map(data.parse_example)))
    np.testing.assert_array_equal(f.numpy(), full)
    np.testing.assert_array_equal(h.numpy(), half)
    np.testing.assert_array_equal(q.numpy(), quarter)
    batch = next(iter(data.pyramid_dataset([path], 1, patchsize=256, seed=0)))
    assert [tuple(b.shape) for b in batch] == [(1, 64, 64, 3), (1, 128, 128, 3),
                                               (1, 256, 256, 3)]


@pytest.mark.parametrize("sides, problem", [
    ((64, 64, 16), "not full/half/quarter in 4:2:1 ratio"),
    ((64, 16, 16), "not full/half/quarter in 4:2:1 ratio"),
    ((6, 3, 1), "not full/half/quarter in 4:2:1 ratio"),  # 6 is not a multiple of 4
])
def test_authors_tfrecords_out_of_ratio_are_refused(tmp_path, sides, problem):
    images = [np.zeros((s, s, 3), np.uint8) for s in sides]
    path = _write(tmp_path / "bad.tfrecords", [_authors_example(*images)])
    with pytest.raises(DataError, match=problem) as info:
        data.check_tfrecords(path)
    assert "'bad.tfrecords' has no height/width features" in str(info.value)


def test_authors_tfrecords_that_are_not_squares_are_refused(tmp_path):
    images = [np.zeros((h, 2 * h, 3), np.uint8) for h in (32, 16, 8)]
    path = _write(tmp_path / "wide.tfrecords", [_authors_example(*images)])
    with pytest.raises(DataError, match="6144, 1536, 384 bytes: not RGB squares"):
        data.check_tfrecords(path)


def test_authors_square_side():
    assert data.authors_square_side([3 * 512 ** 2, 3 * 256 ** 2, 3 * 128 ** 2]) == (512, None)
    assert data.authors_square_side([3 * 512 ** 2, 3 * 256 ** 2, 3 * 127 ** 2])[0] is None
    assert data.authors_square_side([0, 0, 0])[0] is None
