"""Fast tests of bench/: BD metrics, classic-codec anchors, results JSON, RD plots."""
import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from bench import anchors, bd, plot, results_io

RATES = [0.25, 0.5, 0.75, 1.0]
PSNRS = [29.25, 32.16, 34.27, 35.94]


# ----------------------------------------------------------------------------------------------
# BD-rate / BD-PSNR


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_bd_rate_self_is_zero(method):
    assert bd.bd_rate(RATES, PSNRS, RATES, PSNRS, method) == pytest.approx(0.0, abs=1e-9)
    assert bd.bd_psnr(RATES, PSNRS, RATES, PSNRS, method) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_bd_rate_scaled_rates_is_minus_ten_percent(method):
    scaled = [0.9 * r for r in RATES]
    assert bd.bd_rate(RATES, PSNRS, scaled, PSNRS, method) == pytest.approx(-10.0, abs=1e-6)
    # and the other way round: the anchor needs 1/0.9 as many bits
    assert bd.bd_rate(scaled, PSNRS, RATES, PSNRS, method) == pytest.approx(100 / 0.9 - 100,
                                                                              abs=1e-6)


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_bd_psnr_shift_is_plus_one_db(method):
    shifted = [p + 1.0 for p in PSNRS]
    assert bd.bd_psnr(RATES, PSNRS, RATES, shifted, method) == pytest.approx(1.0, abs=1e-9)
    # better quality at the same rate also means fewer bits at the same quality
    assert bd.bd_rate(RATES, PSNRS, RATES, shifted, method) < 0


@pytest.mark.parametrize("method", ["akima", "pchip"])
def test_bd_rate_known_value_for_lines_in_log_rate(method):
    # Both curves are straight lines log10(R) = a + b*(P - 30) on the same PSNR range [30, 36]:
    # both interpolators reproduce lines exactly, so the mean log-rate difference is
    # (a2 - a1) + (b2 - b1) * mean(P - 30) = -0.05 + 0.02 * 3 = 0.01 -> 10**0.01 - 1.
    p = np.array([30.0, 32.0, 34.0, 36.0])
    r_anchor = 10 ** (-1.0 + 0.10 * (p - 30))
    r_test = 10 ** (-1.05 + 0.12 * (p - 30))
    expected = (10 ** 0.01 - 1) * 100
    assert bd.bd_rate(r_anchor, p, r_test, p, method) == pytest.approx(expected, rel=1e-9)


def _vceg_m33_bd_rate(r1, p1, r2, p2):
    """The classic VCEG-M33 computation (global cubic fit of log rate vs PSNR)."""
    l1, l2 = np.log(r1), np.log(r2)
    c1, c2 = np.polyfit(p1, l1, 3), np.polyfit(p2, l2, 3)
    lo, hi = max(min(p1), min(p2)), min(max(p1), max(p2))
    i1, i2 = np.polyint(c1), np.polyint(c2)
    int1 = np.polyval(i1, hi) - np.polyval(i1, lo)
    int2 = np.polyval(i2, hi) - np.polyval(i2, lo)
    return (np.exp((int2 - int1) / (hi - lo)) - 1) * 100


def test_bd_rate_cubic_matches_vceg_m33_and_akima_is_close():
    # x265 example data from the bjontegaard package README (rates in kbps, descending).
    ra = [9487.76, 4593.60, 2486.44, 1358.24]
    pa = [40.037, 38.615, 36.845, 34.851]
    rt = [9787.80, 4469.00, 2451.52, 1356.24]
    pt = [40.121, 38.651, 36.970, 34.987]
    classic = _vceg_m33_bd_rate(ra, pa, rt, pt)
    assert bd.bd_rate(ra, pa, rt, pt, method="cubic") == pytest.approx(classic, abs=1e-6)
    akima = bd.bd_rate(ra, pa, rt, pt)  # default method is akima
    assert akima < 0  # the test codec is slightly better
    assert akima == pytest.approx(classic, abs=0.5)
    # descending input is sorted: same value
    assert akima == pytest.approx(bd.bd_rate(ra[::-1], pa[::-1], rt[::-1], pt[::-1]), abs=1e-12)
    assert bd.DEFAULT_METHOD == "akima"


def test_bd_too_few_points_returns_none_with_reason():
    res = bd.bd_rate_result(RATES[:3], PSNRS[:3], RATES[:3], PSNRS[:3])
    assert res.value is None and "at least 4" in res.reason
    with pytest.warns(UserWarning, match="at least 4"):
        assert bd.bd_rate(RATES[:3], PSNRS[:3], RATES, PSNRS) is None
    # accepted when asked for knowingly
    scaled = [0.9 * r for r in RATES[:3]]
    assert bd.bd_rate(RATES[:3], PSNRS[:3], scaled, PSNRS[:3], min_points=3) == pytest.approx(-10)


def test_bd_non_monotonic_and_bad_values_return_none():
    bumpy = [29.25, 32.16, 31.0, 35.94]
    res = bd.bd_rate_result(RATES, PSNRS, RATES, bumpy)
    assert res.value is None and "strictly increasing" in res.reason
    res = bd.bd_psnr_result(RATES, PSNRS, [0.25, 0.5, 0.5, 1.0], PSNRS)
    assert res.value is None and "duplicate" in res.reason
    res = bd.bd_rate_result(RATES, PSNRS, RATES, PSNRS[:3] + [math.inf])
    assert res.value is None and "non-finite" in res.reason
    # shuffled but monotone after sorting is fine
    order = [2, 0, 3, 1]
    value = bd.bd_rate(RATES, PSNRS, [RATES[i] for i in order], [PSNRS[i] for i in order])
    assert value == pytest.approx(0.0, abs=1e-9)


def test_bd_no_overlap_and_low_overlap():
    far = [p + 20 for p in PSNRS]
    res = bd.bd_rate_result(RATES, PSNRS, RATES, far)
    assert res.value is None and "overlap" in res.reason
    partial = [p + 4 for p in PSNRS]  # PSNR ranges overlap on about 1/3 of the union
    res = bd.bd_rate_result(RATES, PSNRS, RATES, partial)
    assert res.value is not None and res.value < 0 and "overlap" in res.note


def test_bd_table_and_markdown():
    curves = {
        "anchor": {"bpp": RATES, "psnr": PSNRS},
        "cheaper": [{"bpp": 0.9 * r, "psnr": p} for r, p in zip(RATES, PSNRS)],
        "short": (RATES[:2], PSNRS[:2]),
    }
    rows = bd.bd_table("anchor", curves)
    assert [r["name"] for r in rows] == ["cheaper", "short"]
    assert rows[0]["bd_rate"] == pytest.approx(-10.0, abs=1e-6)
    assert rows[0]["bd_metric"] > 0  # same quality for fewer bits = more dB at equal rate
    assert rows[1]["bd_rate"] is None and "at least 4" in rows[1]["note"]
    text = bd.format_markdown(rows, "anchor")
    assert "| cheaper | 4 | -10.00 |" in text and "n/a" in text and "akima" in text


# ----------------------------------------------------------------------------------------------
# Anchors on a tiny synthetic image


@pytest.fixture(scope="module")
def tiny():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:48, 0:64].astype(np.float64)
    base = np.stack([x * 3, y * 4, (x + y) * 2], axis=-1) + 20
    img = base + rng.normal(0, 8, base.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def test_j2k_layered_increasing_and_truncation_is_real(tiny):
    bpps = [1.0, 2.0, 4.0]
    points = anchors.jpeg2000_layered(tiny, bpps, verify=True)  # verify: truncated == layers=k
    assert [p["layer"] for p in points] == [1, 2, 3]
    assert all(b["bytes"] > a["bytes"] for a, b in zip(points, points[1:]))
    assert all(b["bpp"] > a["bpp"] for a, b in zip(points, points[1:]))
    assert all(b["psnr"] > a["psnr"] for a, b in zip(points, points[1:]))
    for p in points:
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (64 * 48))
        assert p["ms_ssim"] is None  # too small for 5-scale MS-SSIM
    # the whole layered codestream, as OpenJPEG writes it without PLT, is the last point's size
    plain = anchors._j2k_encode(tiny, [24 / b for b in bpps], "LRCP", plt=False)
    assert len(plain) == points[-1]["bytes"]
    stripped = anchors.J2KCodestream(
        anchors._j2k_encode(tiny, [24 / b for b in bpps], "LRCP", plt=True)).full()
    assert stripped == plain  # asking for PLT does not change the coding
    # decoding 1 layer of the full stream really differs from decoding all of it
    one = anchors._j2k_decode(plain, layers=1)
    everything = anchors._j2k_decode(plain)
    assert not np.array_equal(one, everything)
    from pipeline import metrics
    assert metrics.psnr(tiny, one) == pytest.approx(points[0]["psnr"])
    assert metrics.psnr(tiny, everything) == pytest.approx(points[-1]["psnr"])


def test_j2k_codestream_parser(tiny):
    data = anchors._j2k_encode(tiny, [24.0, 12.0], "LRCP", plt=True)
    cs = anchors.J2KCodestream(data)
    assert cs.size == (64, 48) and cs.num_components == 3 and cs.num_layers == 2
    assert cs.progression == "LRCP"
    n_res = cs.num_levels + 1
    assert len(cs.packets) == 2 * n_res * 3
    assert cs.prefix_length(lambda pid: pid[0] < 1) == n_res * 3
    with pytest.raises(ValueError, match="prefix"):
        cs.prefix_length(lambda pid: pid[1] == 0)  # resolution 0 is not a prefix in LRCP
    with pytest.raises(ValueError, match="PLT"):
        anchors.J2KCodestream(anchors._j2k_encode(tiny, [24.0], "LRCP", plt=False))


def test_j2k_single(tiny):
    p = anchors.jpeg2000_single(tiny, 2.0)
    assert 1.0 < p["bpp"] < 2.6 and p["bytes"] > 0 and 15 < p["psnr"] < 60
    low, high = anchors.jpeg2000_single_sweep(tiny, [1.0, 4.0])
    assert low["bytes"] < high["bytes"] and low["psnr"] < high["psnr"]


@pytest.mark.parametrize("shape", [(48, 64), (49, 65)])  # odd sizes: Pillow's reduce rounding
def test_j2k_resolution_levels(tiny, shape):
    img = np.resize(tiny, shape + (3,)) if shape != tiny.shape[:2] else tiny
    points = anchors.jpeg2000_resolution_levels(img, levels=3, target_bpp=3.0, verify=True)
    from codec.image import pyramid_sizes
    assert [(p["height"], p["width"]) for p in points] == pyramid_sizes(*shape, 3)
    assert [p["reduce"] for p in points] == [2, 1, 0]
    assert all(b["bytes"] > a["bytes"] for a, b in zip(points, points[1:]))
    for p in points:
        assert p["bpp"] == pytest.approx(p["bytes"] * 8 / (p["height"] * p["width"]))
        assert p["psnr"] > 10


def _roughly_increasing(values, tol):
    return all(b > a - tol for a, b in zip(values, values[1:])) and values[-1] > values[0]


def test_jpeg_and_webp_sweeps(tiny):
    for sweep in (anchors.jpeg_sweep, anchors.webp_sweep):
        points = sweep(tiny, [10, 50, 90])
        assert [p["quality"] for p in points] == [10, 50, 90]
        assert all(b["bytes"] > a["bytes"] for a, b in zip(points, points[1:]))
        assert _roughly_increasing([p["psnr"] for p in points], tol=0.2)


def test_anchors_reject_bad_input(tiny):
    with pytest.raises(ValueError):
        anchors.jpeg2000_layered(tiny, [1.0, 0.5])
    with pytest.raises(TypeError):
        anchors.jpeg_sweep(tiny.astype(np.float32), [50])


def test_average_points():
    a = [{"bpp": 1.0, "psnr": 30.0, "ms_ssim": None, "bytes": 10, "layer": 1}]
    b = [{"bpp": 3.0, "psnr": 32.0, "ms_ssim": None, "bytes": 30, "layer": 1}]
    avg = anchors.average_points([a, b])
    assert avg == [{"bpp": 2.0, "psnr": 31.0, "ms_ssim": None, "bytes": 20.0, "layer": 1}]


# ----------------------------------------------------------------------------------------------
# Results JSON and plots


def _points():
    return [{"bpp": 0.25, "psnr": 29.0, "ms_ssim": 0.93, "bytes": 100, "layer": 1},
            {"bpp": 0.5, "psnr": 32.0, "ms_ssim": 0.96, "bytes": 200, "layer": 2},
            {"bpp": 8.0, "psnr": math.inf, "ms_ssim": None, "bytes": 3200, "layer": 3}]


def test_results_json_round_trip(tmp_path):
    doc = results_io.to_results("J2K-layered", _points(), "one codestream",
                                extra_point_keys=("bytes", "layer"), scalable=True)
    path = results_io.write_results(str(tmp_path / "sub" / "j2k.json"), doc)
    raw = json.loads(open(path).read())  # strict JSON: inf and missing values are null
    assert set(raw) >= {"name", "description", "results"}
    assert set(raw["results"]) >= {"bpp", "psnr-rgb", "ms-ssim-rgb"}
    assert raw["results"]["psnr-rgb"] == [29.0, 32.0, None]
    assert raw["results"]["ms-ssim-rgb"] == [0.93, 0.96, None]
    assert raw["results"]["bytes"] == [100, 200, 3200]
    back = results_io.read_results(path)
    assert back == doc and results_io.is_scalable(back)
    points = results_io.to_points(back)
    assert points[1] == {"bpp": 0.5, "psnr": 32.0, "ms_ssim": 0.96, "bytes": 200, "layer": 2}
    with pytest.raises(ValueError):
        results_io.validate({"name": "x", "description": "", "results": {"bpp": [1.0]}})


def test_plot_writes_png(tmp_path):
    scal = results_io.to_results("scalable", _points()[:2], scalable=True)
    curves = {
        "scalable": scal,
        "single": [{"bpp": r, "psnr": p, "ms_ssim": 1 - 10 ** (-p / 20)}
                   for r, p in zip(RATES, PSNRS)],
        "psnr only": {"bpp": RATES, "psnr": [p - 1 for p in PSNRS]},
    }
    out = plot.plot_rd(curves, str(tmp_path / "rd.png"), title="test")
    with open(out, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(data)) as im:
        assert im.size[0] > im.size[1] > 100
    # also accepts a list of results documents
    plot.plot_rd([scal], str(tmp_path / "rd2.png"))
    assert (tmp_path / "rd2.png").stat().st_size > 0


def test_bits_by_size_crops_and_sums_every_layer(tiny_checkpoints, tmp_path):
    """bench.bits_by_size: whole images and square crops, every layer's estimated and actual
    bits summed over them, the payload being the strings compress_layers makes."""
    from bench import bits_by_size
    from codec.image import pad_to_multiple, pyramid
    from models.config import ModelConfig
    from models.scalable import PAD_MULTIPLE
    from pipeline.checkpoints import load_trained_model
    image = np.random.default_rng(1).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    assert [c.shape[:2] for c in bits_by_size.crops(image, 64)] == [(64, 64)] * 6
    assert bits_by_size.crops(image, 0)[0] is image
    Image.fromarray(image).save(tmp_path / "photo.png")
    out = tmp_path / "bits.json"
    assert bits_by_size.main(["--checkpoint_dir", tiny_checkpoints.spatial_dir, "--images",
                              str(tmp_path / "*.png"), "--crops", "0,64", "--out", str(out)]) == 0
    with open(out) as f:
        doc = json.load(f)
    assert doc["mode"] == "spatial" and doc["results"]["64"]["crops"] == 6
    names = ModelConfig.load(tiny_checkpoints.spatial_dir).layer_names
    whole = doc["results"]["0"]["layers"]
    assert list(whole) == names
    model = load_trained_model(tiny_checkpoints.spatial_dir, "spatial")
    levels = [pad_to_multiple(level, PAD_MULTIPLE) for level in pyramid(image, len(names))]
    expected = bits_by_size.layer_bits(model, levels)
    for name, (estimated, actual) in zip(names, expected):
        assert whole[name]["actual_bits"] == actual > 0
        assert whole[name]["estimated_bits"] == round(estimated)
        assert whole[name]["ratio"] == round(estimated / actual, 4)

    with pytest.raises(SystemExit, match="matches no file"):
        bits_by_size.main(["--checkpoint_dir", tiny_checkpoints.spatial_dir,
                           "--images", str(tmp_path / "*.jpg")])


def test_flat_field_codes_grey_images_through_the_codec(tiny_checkpoints, tmp_path):
    """bench.flat_field: per layer, the PSNR of the decoded grey images' mean squared error
    and each level's mean error, from the real streams."""
    from bench import flat_field
    from pipeline.api import ScalableCodec
    codec = ScalableCodec.load(tiny_checkpoints.spatial_dir)
    result = flat_field.flat_field(codec, levels=(60, 200), side=64)
    decoded = [codec.decompress(codec.compress(np.full((64, 64, 3), level, np.uint8)))
               for level in (60, 200)]
    assert [layer.shape[0] for layer in decoded[0]] == [16, 32, 64]  # the pyramid's sizes
    for k in range(len(codec.layer_names)):
        errors = [d[k].astype(np.float64) - level for d, level in zip(decoded, (60, 200))]
        mse = np.mean([np.mean(e ** 2) for e in errors])
        assert result["psnr"][k] == pytest.approx(10 * np.log10(255 ** 2 / mse), abs=0.01)
        assert [row[k] for row in result["bias"]] == pytest.approx(
            [np.mean(e) for e in errors], abs=0.01)
    out = tmp_path / "flat.json"
    assert flat_field.main(["--checkpoint_dir", tiny_checkpoints.spatial_dir, "--out",
                            str(out)]) == 0
    assert json.loads(out.read_text())["layers"] == codec.layer_names
