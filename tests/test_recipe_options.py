"""The training-recipe options (issue 22): random downscaling, several training globs, starting
from a trained model, the photo sets and the A/B report."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from bench import recipe
from models.config import ConfigError, ModelConfig
from pipeline import data, photo_sets, training
from pipeline.checkpoints import restore_trained_model

CONFIG = ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[250.0],
                     entropy_model="factorized")


def _ramp(height, width):
    """Red grows by one per column, green by one per row (up to 255)."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([np.minimum(xs, 255), np.minimum(ys, 255), np.full_like(xs, 128)],
                    -1).astype(np.uint8)


def _slopes(batch):
    """Mean horizontal step of red and vertical step of green in the patches (0-255 units)."""
    pixels = np.asarray(batch, np.float64) * 255
    inner = pixels[:, 4:-4, 4:-4]  # away from the resampling's borders
    return (np.mean(np.diff(inner[..., 0], axis=2)), np.mean(np.diff(inner[..., 1], axis=1)))


def test_downscale_halves_the_image_before_the_crop_and_only_jpegs_by_default(tmp_path):
    Image.fromarray(_ramp(200, 200)).save(tmp_path / "ramp.png")
    Image.fromarray(_ramp(200, 200)).save(tmp_path / "ramp.jpg", quality=98)
    png, jpg = str(tmp_path / "ramp.png"), str(tmp_path / "ramp.jpg")
    assert data.is_jpeg(jpg) and not data.is_jpeg(png)
    halved = next(iter(data.patch_dataset([jpg], 32, 4, 1, seed=2, downscale=(0.5, 0.5))))
    assert _slopes(halved) == pytest.approx((2.0, 2.0), abs=0.1)
    kept = next(iter(data.patch_dataset([png], 32, 4, 1, seed=2, downscale=(0.5, 0.5))))
    assert _slopes(kept) == pytest.approx((1.0, 1.0), abs=0.01)
    every = next(iter(data.patch_dataset([png], 32, 4, 1, seed=2, downscale=(0.5, 0.5),
                                         downscale_sources="all")))
    assert _slopes(every) == pytest.approx((2.0, 2.0), abs=0.1)
    # A factor the image is too small for is raised: 0.1 of 200 px would leave 20 < 32.
    raised = next(iter(data.patch_dataset([png], 32, 4, 1, seed=2, downscale=(0.1, 0.1),
                                          downscale_sources="all")))
    assert _slopes(raised) == pytest.approx((200 / 32, 200 / 32), rel=0.05)
    with pytest.raises(data.DataError, match="0 < low <= high <= 1"):
        data.patch_dataset([png], 32, 4, downscale=(0.5, 1.5))


def test_train_glob_takes_several_globs(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        Image.fromarray(_ramp(40, 40)).save(tmp_path / folder / "x.png")
    files = data.training_images(f"{tmp_path / 'a' / '*.png'},{tmp_path / 'b'}", 32)
    assert [os.path.relpath(f, tmp_path) for f in files] == ["a/x.png", "b/x.png"]


def test_downscaled_pyramid_crops_stay_aligned(tmp_path):
    # Each level holds the full-resolution column (red) and row (green) of its pixels.
    full = _ramp(256, 256)
    half = np.stack([np.minimum(2 * np.arange(128)[None, :] + 0.5, 255).repeat(128, 0),
                     np.minimum(2 * np.arange(128)[:, None] + 0.5, 255).repeat(128, 1),
                     np.full((128, 128), 128)], -1).round().astype(np.uint8)
    quarter = np.stack([np.minimum(4 * np.arange(64)[None, :] + 1.5, 255).repeat(64, 0),
                        np.minimum(4 * np.arange(64)[:, None] + 1.5, 255).repeat(64, 1),
                        np.full((64, 64), 128)], -1).round().astype(np.uint8)
    path = str(tmp_path / "a.tfrecords")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(data.make_example(full, half, quarter))
    dataset = data.pyramid_dataset([path], 2, patchsize=64, seed=1, shuffle_buffer=1,
                                   downscale=(0.5, 0.5))
    for q, h, f in dataset.take(3):
        levels = [np.asarray(level) * 255 for level in (q, h, f)]
        for level, scale in zip(levels, (8, 4, 2)):  # full-resolution pixels per pixel
            assert _slopes(level / 255) == pytest.approx((scale, scale), rel=0.06)
        # The three crops start at the same place of the photo.
        corners = [level[:, 6:8, 6:8, :2].mean(axis=(1, 2)) - 7 * scale + 0.5
                   for level, scale in zip(levels, (8, 4, 2))]
        np.testing.assert_allclose(corners[0], corners[2], atol=3)
        np.testing.assert_allclose(corners[1], corners[2], atol=3)


def _patches(folder):
    rng = np.random.default_rng(0)
    images = rng.random((4, 64, 64, 3), np.float32)
    return tf.data.Dataset.from_tensor_slices(images).repeat().batch(1)


def test_init_from_starts_from_the_trained_weights_at_init_step(tmp_path, capsys):
    first = str(tmp_path / "first")
    training.train(CONFIG, _patches(tmp_path), first, 3, learning_rate=1e-2,
                   checkpoint_secs=1e9, make_step=lambda f: f)
    capsys.readouterr()
    second = str(tmp_path / "second")
    step = training.train(CONFIG, _patches(tmp_path), second, 11, learning_rate=1e-12,
                          checkpoint_secs=1e9, make_step=lambda f: f, init_from=first,
                          init_step=10)
    assert step == 11
    assert f"starting from the weights of {first} at step 10" in capsys.readouterr().out
    trained, started = (restore_trained_model(d, "quality") for d in (first, second))
    fresh = restore_trained_model(first, "quality")
    for variable in fresh.trainable_variables:
        variable.assign(tf.zeros_like(variable))
    for a, b in zip(trained.trainable_variables, started.trainable_variables):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
    # A rerun resumes the new run; --init_from no longer applies.
    training.train(CONFIG, _patches(tmp_path), second, 12, learning_rate=1e-12,
                   checkpoint_secs=1e9, make_step=lambda f: f, init_from=first)
    assert "resuming from step 11" in capsys.readouterr().out


def test_init_from_another_model_is_refused(tmp_path):
    first = str(tmp_path / "first")
    training.train(CONFIG, _patches(tmp_path), first, 1, checkpoint_secs=1e9,
                   make_step=lambda f: f)
    other = ModelConfig(mode="quality", layer_names=["B"], filters=[8], lmbdas=[250.0],
                        entropy_model="factorized")
    with pytest.raises(ConfigError, match="holds another model"):
        training.train(other, _patches(tmp_path), str(tmp_path / "second"), 2,
                       make_step=lambda f: f, init_from=first)


def _ar_member(name, body):
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(body):<10}`\n"
    return header.encode() + body + (b"\n" if len(body) % 2 else b"")


def test_photo_sets_read_the_data_archive_of_a_debian_package(tmp_path):
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w:xz") as archive:
        for path, content in (("./usr/share/wallpapers/X/contents/images/1x1.png", b"a"),
                              ("./usr/share/wallpapers/X/contents/images/2x2.png", b"abc")):
            info = tarfile.TarInfo(path)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    deb = tmp_path / "x_1.0_all.deb"
    deb.write_bytes(b"!<arch>\n" + _ar_member("debian-binary", b"2.0\n")
                    + _ar_member("control.tar.xz", b"c") + _ar_member("data.tar.xz",
                                                                        tar.getvalue()))
    members = photo_sets._deb_members(str(deb))
    assert photo_sets._largest_image(members, "usr/share/wallpapers/X") == b"abc"
    with pytest.raises(photo_sets.PhotoSetError, match="no photo"):
        photo_sets._largest_image(members, "usr/share/wallpapers/Y")
    assert {len(photo_sets.HELDOUT), len(photo_sets.TRAIN_EXTRA)} == {14, 12}
    held = {p for _, p, _, _ in photo_sets.HELDOUT}
    assert not held & {p for _, p, _, _ in photo_sets.TRAIN_EXTRA}


def test_recipe_commands_differ_from_the_baseline_in_their_flags_only():
    args = recipe.parse_args(["--train_glob", "t/*", "--extra_glob", "x/*", "--kodak", "k",
                              "--heldout", "h", "--steps", "10",
                              "--recipes", "base,patch256,downscale_extra"])
    base, patch, extra = (recipe.train_command(args, r) for r in args.recipes)
    assert base[base.index("--last_step") + 1] == "25010"
    assert patch[patch.index("--patchsize") + 1] == "256"
    assert patch[patch.index("--batchsize") + 1] == "2" and patch.count("--patchsize") == 1
    assert extra[extra.index("--train_glob") + 1] == "t/*,x/*"
    assert extra[extra.index("--downscale") + 1] == "0.5,1.0"
    assert set(patch) ^ set(base) == {"256", "2", "128", "8", "runs/recipe/base",
                                      "runs/recipe/patch256"} and len(patch) == len(base)


def test_recipe_report_compares_curves_against_the_baseline_and_jpeg2000(tmp_path):
    def results(shift):
        layers = [dict(actual_bpp=b * (1 - shift), bytes=100, psnr=p + 2 * shift)
                  for b, p in ((0.3, 28.0), (0.5, 30.0), (0.7, 31.5), (0.9, 32.5))]
        return dict(images=[dict(image="a.png", layers=layers)])
    curves = {n: recipe.mean_curve(results(s)) for n, s in (("base", 0.0), ("ds", 0.1))}
    anchor = [dict(bpp=b, psnr=27 + 6 * b) for b in (0.1, 0.3, 0.6, 1.0, 1.5)]
    report = dict(init_from="pretrained/quality", init_step=25000, steps=10,
                  learning_rate=1e-4, seed=1, baseline="base", commands={"base": "python x"},
                  sets={"kodak": dict(images=1, jpeg2000=anchor, curves=curves,
                                      vs_baseline={"ds": recipe.bd_against(curves["base"],
                                                                    curves["ds"])},
                                      vs_jpeg2000={n: recipe.bd_against(anchor, c)
                                                   for n, c in curves.items()})})
    better = report["sets"]["kodak"]["vs_baseline"]["ds"]
    assert better["bd_rate_percent"] < -5 and better["bd_psnr_db"] > 0.1
    text = recipe.format_report(json.loads(json.dumps(report)))
    assert "| base (baseline) |" in text and "| ds |" in text and "python x" in text


def test_trend_tables_have_a_row_per_step_and_both_sets():
    from bench import trend
    def row(step, psnr):
        point = dict(bpp=0.3, psnr=psnr)
        return dict(step=step, sets={s: dict(curve=[point, point], vs_jpeg2000=dict(
            bd_psnr_db=psnr - 30, bd_rate_percent=None), vs_jpeg2000_db=[psnr - 30, None])
            for s in ("kodak", "heldout")})
    quality = trend.format_trend("quality", [row(5, 28.0), row(10, 29.5)]).splitlines()
    assert len(quality) == 4 and quality[2].startswith("| 5 | 28.00@0.300 / 28.00@0.300 | -2.00 dB | n/a |")
    assert quality[0].endswith("| flat field: PSNR per layer (dB) |") and quality[2].endswith("| n/a |")
    spread = row(7, 28.0)
    spread["sets"]["kodak"]["per_image_bd_psnr_db"] = {"a.png": -1.0, "b.png": None,
                                                      "c.png": -3.5, "d.png": -0.5}
    assert ("| -2.00 dB | n/a | median -1.00 / worst -3.50 dB (3 of 4) |"
            in trend.format_trend("quality", [spread]).splitlines()[2])
    spatial_row = dict(row(10, 29.5), flat_field_psnr=[40.04, None])
    spatial = trend.format_trend("spatial", [spatial_row]).splitlines()
    assert spatial[2] == ("| 10 | 29.50@0.300 / 29.50@0.300 | -0.50 / n/a | "
                          "29.50@0.300 / 29.50@0.300 | -0.50 / n/a | 40.0 / inf |")


def test_trend_per_image_bd_psnr_against_each_images_own_jpeg2000_curve(tmp_path):
    """bench.trend: every image's layer curve against JPEG 2000 on that image (sweeps cached)."""
    from bench import trend
    from helpers import smooth_image
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed in (0, 1):
        Image.fromarray(smooth_image(96, 128, seed)).save(folder / f"p{seed}.png")

    def results(shift):
        """A results.json whose layers lie `shift` dB above the cached JPEG 2000 curves."""
        with open(tmp_path / "jpeg2000_s_per_image.json") as f:
            cache = json.load(f)
        return dict(images=[dict(image=name, layers=[
            dict(actual_bpp=p["bpp"], psnr=p["psnr"] + shift, bytes=1) for p in curve[2:6]])
            for name, curve in sorted(cache.items())])

    empty = dict(images=[dict(image=f"p{seed}.png", layers=[
        dict(actual_bpp=0.1 * k, psnr=30 + k, bytes=1) for k in (1, 2)]) for seed in (0, 1)])
    trend._per_image_bd_psnr(str(tmp_path), "s", str(folder), empty)  # fills the cache
    for shift in (0.0, 1.0):
        bd = trend._per_image_bd_psnr(str(tmp_path), "s", str(folder), results(shift))
        assert sorted(bd) == ["p0.png", "p1.png"]
        assert list(bd.values()) == pytest.approx([shift, shift], abs=0.02)
