"""Fast tests of bench.rd's points, report and flags on synthetic per-image results (no
training, no TensorFlow model), and of bench/speed.py's pure helpers."""
import json
import os

import pytest

from bench import bd, results_io
from bench.anchors import average_points
from bench.rd import cli, points, report


def _image(name, layers, spatial=False):
    out = []
    for k, (bpp, nbytes, psnr, ms) in enumerate(layers):
        e = dict(name=["B", "e1", "e2", "e3"][k], eval_bpp=bpp * 0.98, actual_bpp=bpp,
                 bytes=nbytes, psnr=psnr, ms_ssim=ms)
        if spatial:
            e.update(height=128 * 2 ** k, width=192 * 2 ** k, layer_bpp=bpp / 2)
        out.append(e)
    return dict(image=f"/k/{name}.png", height=512, width=768, layers=out)


def _results(images):
    return dict(images=images, average=dict(layers=[]))


PIX = 768 * 512


def _single(k, per_image):
    """results.json of single-layer model k: per_image = {name: (bytes, psnr, ms)}."""
    return _results([_image(n, [(b * 8 / PIX, b, p, m)]) for n, (b, p, m) in per_image.items()])


def test_layer_points_and_average():
    doc = _results([_image("a", [(0.1, 4915, 28.0, 0.90), (0.3, 9830, 31.0, 0.95)]),
                    _image("b", [(0.2, 9830, 30.0, 0.92), (0.5, 9830, 33.0, None)])])
    pts = points.layer_points(doc)
    assert [p["layer"] for p in pts[0]] == [1, 2]
    avg = average_points(pts)
    assert avg[0]["bpp"] == pytest.approx(0.15)
    assert avg[0]["psnr"] == pytest.approx(29.0)
    assert avg[0]["ms_ssim"] == pytest.approx(0.91)
    assert avg[1]["ms_ssim"] is None  # one image without MS-SSIM -> no mean
    assert avg[1]["layer"] == 2
    with pytest.raises(ValueError):
        average_points([pts[0], pts[1][:1]])


def test_simulcast_sums_single_layer_rates():
    singles = [_single(1, {"a": (1000, 28.0, 0.9), "b": (2000, 27.0, 0.8)}),
               _single(2, {"b": (3000, 31.0, 0.9), "a": (2000, 30.0, 0.95)}),
               _single(3, {"a": (4000, 33.0, 0.97), "b": (5000, 33.5, 0.96)})]
    sp = points.single_layer_points(singles)
    assert [p["bytes"] for p in sp[0]] == [1000, 2000, 4000]  # matched by image name
    sim = points.simulcast_points(sp)
    assert [p["bytes"] for p in sim[0]] == [1000, 3000, 7000]
    assert [p["bytes"] for p in sim[1]] == [2000, 5000, 10000]
    assert sim[0][2]["bpp"] == pytest.approx(7000 * 8 / PIX)
    assert sim[1][1]["psnr"] == 31.0  # quality of single model 2
    avg = average_points(sim)
    assert avg[2]["bpp"] == pytest.approx(8500 * 8 / PIX)
    with pytest.raises(ValueError):
        points.single_layer_points([singles[0], _single(2, {"a": (1, 1.0, 0.5)})])


def test_point_vs_curve():
    anchor = {"bpp": [0.25, 0.5, 1.0, 2.0], "psnr": [28.0, 30.0, 32.0, 34.0]}
    # same quality as the anchor at 0.5 bpp with 0.4 bpp: 20 % fewer bits
    cmp = bd.point_vs_curve({"bpp": 0.4, "psnr": 30.0}, anchor)
    assert cmp["rate_diff"] == pytest.approx(-20.0)
    assert cmp["metric_diff"] > 0
    # exactly on the curve
    cmp = bd.point_vs_curve({"bpp": 1.0, "psnr": 32.0}, anchor)
    assert cmp["rate_diff"] == pytest.approx(0.0, abs=1e-9)
    assert cmp["metric_diff"] == pytest.approx(0.0, abs=1e-9)
    # outside the anchor's range
    cmp = bd.point_vs_curve({"bpp": 0.1, "psnr": 40.0}, anchor)
    assert cmp == {"rate_diff": None, "metric_diff": None}


def _curves_for_aggregate(tmp_path):
    names = ["kodim01", "kodim02"]
    # scalable: cumulative rates; singles slightly better at each rate
    quality = _results([
        _image(n, [(0.2 + d, int((0.2 + d) * PIX / 8), 27.0 + 10 * d, 0.90),
                   (0.45 + d, 5000, 30.0 + 10 * d, 0.94),
                   (0.8 + d, 6000, 32.5 + 10 * d, 0.96),
                   (1.3 + d, 8000, 35.0 + 10 * d, 0.975)]) for n, d in zip(names, (0, 0.02))])
    singles = []
    for k, (bpp, psnr, ms) in enumerate([(0.18, 27.2, 0.905), (0.4, 30.1, 0.942),
                                         (0.7, 32.6, 0.962), (1.15, 35.1, 0.976)]):
        singles.append(_single(k + 1, {n: (int((bpp + d) * PIX / 8), psnr + 10 * d, ms)
                                       for n, d in zip(names, (0, 0.02))}))
    spatial = _results([
        _image(n, [(0.5, 1500, 29.0, None), (0.6, 3000, 30.0, 0.95),
                   (0.55, 20000, 31.0, 0.96)], spatial=True) for n in names])
    docs = {"quality": quality, "spatial": spatial}
    for k, s in enumerate(singles):
        docs[f"single_{k + 1}"] = s
    return docs


def test_aggregate_writes_schema_json_plots_and_bd_table(tmp_path):
    docs = _curves_for_aggregate(tmp_path)
    out = str(tmp_path)
    config = dict(filters=[8, 8, 8, 8], lmbdas=[250, 100, 50, 25], steps=3, patchsize=64,
                  batchsize=2, entropy_model="hyperprior", spatial_filters=[8, 8, 8],
                  spatial_lmbdas=[400, 300, 200], spatial_steps=3)
    made = report.aggregate(out, docs.get, 4, 3, config)
    for stem in ("quality_scalable", "single_layer", "simulcast", "spatial_scalable",
                 "single_layer_level3"):
        assert stem in made
        doc = results_io.read_results(os.path.join(out, f"{stem}.json"))  # schema check
        assert set(results_io.REQUIRED_KEYS) <= set(doc["results"])
    sim = results_io.read_results(os.path.join(out, "simulcast.json"))
    single = results_io.read_results(os.path.join(out, "single_layer.json"))
    assert sim["scalable"] is True and single["scalable"] is False
    assert sim["results"]["bpp"][0] == pytest.approx(single["results"]["bpp"][0])
    assert sim["results"]["bpp"][3] == pytest.approx(sum(single["results"]["bpp"]), rel=1e-3)
    assert sim["results"]["psnr-rgb"] == single["results"]["psnr-rgb"]
    assert os.path.getsize(os.path.join(out, "rd_quality.png")) > 1000
    assert os.path.getsize(os.path.join(out, "rd_spatial.png")) > 1000
    table = open(os.path.join(out, "bd_table.md")).read()
    assert "akima" in table
    assert "Ours-simulcast" in table and "Ours-single-layer" in table
    # scalable costs bits against the single-layer models: positive BD-rate
    rows = report.bd_rows("Ours-single-layer", {d["name"]: d for d in made.values()},
                      ["Ours-scalable"])
    assert rows[0]["bd_rate"] > 0
    # ... and saves bits against simulcast at the upper layers: BD-rate against simulcast
    rows = report.bd_rows("Ours-simulcast", {d["name"]: d for d in made.values()}, ["Ours-scalable"])
    assert rows[0]["bd_rate"] < 0
    assert "Spatial" in table
    # Each side's steps beside the comparisons with the single-layer models.
    assert "single-layer models: 3 steps, as the scalable model" in table
    assert "3 steps, as the scalable model" in single["description"]
    json.dumps(made)  # JSON-serialisable
    # The synthetic eval_bpp is 2 % under actual_bpp for every layer of every model.
    with open(os.path.join(out, "estimated_bits.json")) as f:
        estimates = json.load(f)
    assert [r["model"] for r in estimates].count("Ours-spatial") == 3
    assert len(estimates) == 4 + 4 + 3
    assert all(r["file"]["mean"] == pytest.approx(-0.02) for r in estimates)
    assert all(r["payload"] is None for r in estimates)  # written before payload_bpp
    assert "| Ours-scalable | B | n/a | -2.00 / -2.00 |" in table


def test_aggregate_states_different_steps_beside_the_single_layer_comparisons(tmp_path):
    config = dict(filters=[8, 8, 8, 8], lmbdas=[250, 100, 50, 25], steps=50, single_steps=25)
    made = report.aggregate(str(tmp_path), _curves_for_aggregate(tmp_path).get, 4, 3, config)
    table = open(os.path.join(str(tmp_path), "bd_table.md")).read()
    assert "single-layer models: 25 steps (the scalable model: 50)" in table
    assert "25 steps (the scalable model: 50)" in made["single_layer"]["description"]


def test_estimate_rows_mean_and_worst_against_payload_and_file():
    images = []
    for eval_bpp, payload_bpp, actual_bpp in ((0.99, 1.0, 1.1), (1.03, 1.0, 1.1)):
        images.append(dict(image="x.png", layers=[dict(
            name="B", eval_bpp=eval_bpp, payload_bpp=payload_bpp, actual_bpp=actual_bpp)]))
    [row] = report.estimate_rows("m", _results(images))
    assert row["payload"]["mean"] == pytest.approx(0.01)
    assert row["payload"]["worst"] == pytest.approx(0.03)  # the largest gap in size
    assert row["file"]["worst"] == pytest.approx(0.99 / 1.1 - 1)
    assert "| m | B | +1.00 / +3.00 | -8.18 / -10.00 |" in report.format_estimate_table([row])


def test_aggregate_with_partial_results(tmp_path):
    docs = _curves_for_aggregate(tmp_path)
    only = {"quality": docs["quality"]}
    made = report.aggregate(str(tmp_path), only.get, 4, 3, {})
    assert sorted(made) == ["quality_scalable"]
    assert os.path.exists(tmp_path / "bd_table.md")


def test_main_skips_without_data(tmp_path, capsys):
    assert cli.main(["--train_dir", str(tmp_path / "nope"), "--kodak", str(tmp_path / "nope"),
                    "--out", str(tmp_path / "out"), "--work_dir", str(tmp_path / "w")]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert not os.path.exists(tmp_path / "out")


def test_parse_args_profiles():
    a = cli.parse_args(["--profile", "gpu"])
    assert a.filters == [96, 120, 144, 196] and a.patchsize == 256 and a.steps == 20000
    a = cli.parse_args(["--profile", "cpu", "--steps", "7", "--filters", "8,8", "--lmbdas", "1,2"])
    assert a.steps == 7 and a.single_steps == 7 and a.filters == [8, 8]


def test_ship_profile_makes_whole_photo_tfrecords(tmp_path):
    """The ship profile's tfrecords stage writes every photo whole (create_tfrecords.py
    --whole_images), so the spatial training crops them at random offsets."""
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from bench.rd.stages import Protocol
    from pipeline import data
    rng = np.random.default_rng(0)
    for name, (h, w) in (("a", (50, 70)), ("b", (64, 40))):
        os.makedirs(tmp_path / "photos" / "set", exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(
            tmp_path / "photos" / "set" / f"{name}.png")
    args = cli.parse_args(["--profile", "ship", "--train_dir", str(tmp_path / "photos"),
                           "--work_dir", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
                           "--tfrecord_patchsize", "32"])
    assert args.tfrecord_examples == "whole_images" and args.spatial_patchsize == 512
    proto = Protocol(args)
    proto.stage_tfrecords()
    path = proto.tfrecord_path()
    assert os.path.basename(path) == "train_whole_32.tfrecords"
    sizes = sorted(tuple(data.parse_example(r)[2].shape[:2]) for r in tf.data.TFRecordDataset(path))
    assert sizes == [(48, 68), (64, 40)]
    with pytest.raises(SystemExit):
        cli.parse_args(["--tfrecord_examples", "tiles"])


def test_speed_helpers():
    from bench import speed
    calls = []
    t, times, result = speed.median_time(lambda: calls.append(1) or len(calls), runs=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and result == 5 and t >= 0
    assert speed.ratio(3.0, 2.0) == 1.5 and speed.ratio(1.0, 0) is None
    ips, mps = speed.throughput(0.5, 512, 768)
    assert ips == 2.0 and mps == pytest.approx(2 * 512 * 768 / 1e6)
    assert speed.header_bytes(100, [b"x" * 30, b"y" * 20]) == 50
    img = speed.synthetic_image(32, 48)
    assert img.shape == (32, 48, 3) and img.dtype.name == "uint8"
    assert (speed.synthetic_image(32, 48) == img).all()


def _speed_measurement(encode, decode, layers=("B",)):
    layer = dict(name="B", payload_bytes=100, actual_over_estimated=1.01, header_bytes=50)
    return dict(encode_s=encode, encode_reconstruct_s=2 * encode, decode_s=list(decode),
                decode_all_s=[sum(decode[:k + 1]) for k in range(len(decode))],
                layers=[dict(layer, name=name) for name in layers],
                traces=dict(functions=4, traces=4))


def test_speed_simulcast_comparison():
    from bench import speed
    scalable = _speed_measurement(3.0, [0.5, 1.5], layers=("B", "e1"))
    singles = [_speed_measurement(1.0, [0.4]), _speed_measurement(2.0, [1.0])]
    simulcast, ratios = speed.compare(scalable, singles)
    assert simulcast["encode_s"] == 3.0 and simulcast["encode_reconstruct_s"] == 6.0
    assert simulcast["decode_s"] == [0.4, 1.0]
    assert simulcast["decode_all_s"] == pytest.approx([0.4, 1.4])
    assert ratios["encode"] == 1.0 and ratios["decode"] == pytest.approx([1.25, 1.5])
    assert ratios["decode_all"] == pytest.approx([1.25, 2.0 / 1.4])


def test_speed_table_format():
    from bench import speed
    scalable = _speed_measurement(1.0, [0.5, 0.8], layers=("B", "e1"))
    scalable.update(encode_images_per_s=1.0, encode_mp_per_s=0.4, decode_images_per_s=1.25,
                    decode_mp_per_s=0.5)
    simulcast, ratios = speed.compare(scalable, [_speed_measurement(0.5, [0.4]),
                                                 _speed_measurement(0.4, [0.45])])
    simulcast.update(encode_images_per_s=1.1, encode_mp_per_s=0.44)
    entry = dict(scalable=scalable, simulcast=simulcast, ratio=ratios,
                 train=dict(batch=8, patch=256, scalable_step_s=2.0, singles_step_s_sum=1.8,
                            ratio=1.11),
                 memory=dict(size="4000x3000", code_peak_mib=5000.0, build_peak_mib=900.0,
                             code_encode_s=30.0, code_decode_s=20.0,
                             single_code_peak_mib=4000.0, ratio=1.25))
    text = speed.format_table(dict(image=dict(width=768, height=512), filters=[8, 8], runs=3,
                                   warmup=1, entropy_models={"hyperprior": entry}))
    assert "decode layer 2 only" in text and "1.78" in text and "4000x3000" in text
    assert "decode layers 1..2" in text and "b8 p256" in text and "ratio 1.25" in text
    entry["memory"] = dict(size="4000x3000", code_error="exit -9 (killed: out of memory?): ")
    text = speed.format_table(dict(image=dict(width=768, height=512), filters=[8, 8], runs=3,
                                   warmup=1, entropy_models={"hyperprior": entry}))
    assert "4000x3000: not measured: exit -9 (killed: out of memory?)" in text


def test_point_vs_non_monotonic_anchor_is_not_interpolated():
    anchor = {"bpp": [0.25, 0.5, 1.0, 2.0], "psnr": [28.0, 31.0, 30.0, 34.0]}
    assert bd.point_vs_curve({"bpp": 0.7, "psnr": 30.5}, anchor) == {"rate_diff": None,
                                                                      "metric_diff": None}


def test_interpolation_against_an_anchor_curve():
    bpp, psnr = [0.1, 0.2, 0.4], [25.0, 28.0, 31.0]
    assert bd.interp_log_rate(bpp, psnr, 28.0) == pytest.approx(0.2)
    assert bd.interp_metric(bpp, psnr, 0.2) == pytest.approx(28.0)
    assert bd.interp_metric(bpp, psnr, 0.1 * 2 ** 0.5) == pytest.approx(26.5)  # linear in log rate
    assert bd.interp_log_rate(bpp, psnr, 32.0) is None  # outside the curve
    assert bd.interp_metric(bpp, psnr, 0.05) is None
    assert bd.interp_metric(bpp, [25.0, 24.0, 31.0], 0.2) is None  # not an RD curve


def test_default_paths_stay_inside_the_repository():
    args = cli.parse_args([])
    for path in (args.train_dir, args.kodak, args.work_dir, os.path.abspath(args.out)):
        assert os.path.abspath(path).startswith(cli.REPO + os.sep), path


def test_python_m_bench_rd_runs_without_path_edits(tmp_path):
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, "-m", "bench.rd", "--train_dir", str(tmp_path / "none"),
         "--kodak", str(tmp_path / "none"), "--out", str(tmp_path / "out")],
        cwd=cli.REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stdout
