"""bench.modern (HEVC intra, JPEG XL, AVIF anchors) and their part of the RD report.

The parts that need no external tool run everywhere: rate matching, the colour conversion,
the per-image documents -> CompressAI JSON, the BD rows, the skip when a tool is absent.
The round trips through x265/ffmpeg, libjxl and avifenc run only where those are installed."""
import json
import os
import shutil

import numpy as np
import pytest

from bench import results_io
from bench.modern import curves, hevc, rate, tools
from bench.rd import cli, field, report
from bench.rd.stages import Protocol
from helpers import smooth_image

HAS_HEVC = not tools.missing(hevc.REQUIRES)
HAS_AVIF = not tools.missing(("avifenc", "avifdec"))
HAS_JXL = not curves.absent("jxl_progressive")


def _sizes(table):
    """encode(param) of a codec whose file size is table[param]; counts the calls."""
    calls = []

    def encode(param):
        calls.append(param)
        return b"x" * table[param]
    return encode, calls


def test_match_nearest_in_log_rate_and_below():
    table = {51: 100, 40: 400, 30: 1600, 20: 6400}
    grid = (51, 40, 30, 20)  # the size grows along the grid
    encode, _ = _sizes(table)
    assert rate.match(encode, 700, grid)[0] == 40   # 700/400 < 1600/700
    assert rate.match(encode, 900, grid)[0] == 30   # 900/400 > 1600/900
    assert rate.match(encode, 900, grid, below=True)[0] == 40
    assert rate.match(encode, 1600, grid, below=True)[0] == 30  # exactly the target fits
    assert rate.match(encode, 10, grid)[0] == 51    # below the whole grid: its smallest
    assert rate.match(encode, 10, grid, below=True)[0] == 51
    assert rate.match(encode, 10 ** 6, grid)[0] == 20  # above it: its largest
    param, data = rate.match(encode, 6400, grid)
    assert param == 20 and len(data) == 6400
    with pytest.raises(ValueError):
        rate.match(encode, 0, grid)


def test_match_binary_search_reuses_the_cache():
    grid = tuple(range(51, -1, -1))
    table = {qp: int(1e5 * 2 ** (-qp / 6)) for qp in grid}
    encode, calls = _sizes(table)
    cache = {}
    assert rate.match(encode, table[30] * 1.01, grid, cache=cache)[0] == 30
    assert len(calls) <= 8  # log2(52) + the neighbours, not 52 encodings
    before = len(calls)
    rate.match(encode, table[30] * 1.01, grid, cache=cache)
    assert len(calls) == before


def test_geometric_grid_and_target_bytes():
    grid = rate.geometric_grid(0.1, 25.0, 1.03)
    assert grid[0] == 0.1 and grid[-1] <= 25.0 and len(grid) > 150
    assert all(b / a == pytest.approx(1.03, rel=2e-3) for a, b in zip(grid, grid[1:]))
    assert rate.target_bytes([0.25, 1.0], 512, 768) == [12288, 49152]


def test_ycbcr_round_trip_is_not_the_cap():
    image = smooth_image(64, 96)
    image[:8, :8] = [[255, 0, 0]]  # saturated colours too
    from pipeline import metrics
    back = hevc.ycbcr_to_rgb(hevc.rgb_to_ycbcr(image))
    assert metrics.psnr(image, back) > 50
    ycc = hevc.rgb_to_ycbcr(np.array([[[255, 255, 255], [0, 0, 0]]], np.uint8))
    assert ycc.tolist() == [[[255, 128, 128], [0, 128, 128]]]  # full range, neutral chroma
    assert np.array_equal(hevc.interleaved(hevc.planar(image), 64, 96), image)


def test_missing_tools_are_named(monkeypatch):
    assert tools.missing(["no-such-program-24", "py:no_such_module_24"]) == [
        "program no-such-program-24", "Python module no_such_module_24"]
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert curves.absent("hevc_intra") == ["program x265", "program ffmpeg"]
    assert curves.absent("avif") == ["program avifenc", "program avifdec"]
    assert tools.version_line(["no-such-program-24"]) == ""


def _per_image(stem, name, scalable, points_by_image, tool=None):
    return dict(codec=stem, name=name, scalable=scalable, seconds=1.0,
                tool=tool or dict(versions={"x": "x 1.0"}, encode="x -q {q}", decode="y"),
                images=[dict(image=f"{k}.png", points=p) for k, p in points_by_image.items()])


def _sweep_points(scale, shift=0.0):
    return [dict(bpp=b * scale, psnr=28.0 + 4 * np.log2(b) + shift, ms_ssim=0.9 + 0.02 * i,
                 bytes=int(b * 49152), param=i) for i, b in enumerate((0.25, 0.5, 1.0, 2.0))]


def test_field_curve_schema_skips_and_tool():
    doc = field.curve(_per_image("jxl_progressive", "JPEG-XL-progressive", True, {
        "a": _sweep_points(1.0), "b": _sweep_points(1.2), "c": None}))
    results_io.validate(doc)
    assert doc["name"] == "JPEG-XL-progressive" and doc["scalable"] is True
    assert doc["images"] == 2 and "1 skipped: c.png" in doc["description"]
    assert doc["tool"]["encode"] == "x -q {q}"
    assert doc["results"]["bpp"][0] == pytest.approx(0.25 * 1.1)
    assert json.loads(results_io.dumps(doc)) == doc
    assert field.curve(_per_image("avif", "AVIF", False, {"a": None})) is None


def test_summary_rows_known_bd_rate():
    anchor = results_io.to_results("A", _sweep_points(1.0))
    ours = results_io.to_results("Ours", _sweep_points(0.8))  # same quality, 20 % fewer bits
    rows = field.summary_rows({"A": anchor, "Ours": ours}, ["Ours", "Missing"], ["A"])
    assert len(rows) == 1 and rows[0]["bd_rate"] == pytest.approx(-20.0, abs=0.01)
    assert rows[0]["bd_metric"] > 0
    text = field.format_summary(rows)
    assert "| Ours | A | -20.0 |" in text
    worse = field.summary_rows({"A": anchor, "Ours": results_io.to_results(
        "Ours", _sweep_points(1.0, -1.0))}, ["Ours"], ["A"], "psnr")
    assert worse[0]["bd_metric"] == pytest.approx(-1.0, abs=1e-6)


def test_aggregate_adds_the_field_anchors(tmp_path):
    from test_bench_rd import _curves_for_aggregate
    docs = _curves_for_aggregate(tmp_path)
    folder = tmp_path / "per_image"
    folder.mkdir()
    pts = {n: _sweep_points(1.0) for n in ("kodim01", "kodim02")}
    for stem, name, scalable in (("hevc_intra", "HEVC-intra", False),
                                 ("hevc_intra_level1", "HEVC-intra-L1", False),
                                 ("jxl_progressive", "JPEG-XL-progressive", True)):
        codec = stem.split("_level")[0]
        with open(folder / f"{stem}.json", "w") as f:
            json.dump(_per_image(codec, "HEVC-intra" if codec == "hevc_intra" else name,
                                 scalable, pts), f)
    made = report.aggregate(str(tmp_path), docs.get, 4, 3, {})
    for stem in ("hevc_intra", "hevc_intra_level1", "jxl_progressive"):
        results_io.read_results(tmp_path / f"{stem}.json")
    assert made["hevc_intra_level1"]["name"] == "HEVC-intra-L1"
    table = open(tmp_path / "bd_table.md").read()
    assert "### Our models against each anchor (summary)" in table
    assert "| Ours-scalable | HEVC-intra |" in table
    assert "| Ours-single-layer | JPEG-XL-progressive |" in table
    assert "HEVC-intra-L3" in table and "HEVC-intra-L1" in table  # spatial rows
    for png in ("rd_anchors_quality.png", "rd_anchors_spatial.png"):
        assert os.path.getsize(tmp_path / png) > 1000


def test_anchors_stage_skips_absent_tools(tmp_path, monkeypatch, capsys):
    from codec import image as image_lib
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    image_lib.write_png(str(kodak / "a.png"), smooth_image(64, 96))
    monkeypatch.setattr(curves, "absent", lambda stem: [f"program {stem}-tool"])
    args = cli.parse_args(["--kodak", str(kodak), "--out", str(tmp_path / "out"),
                           "--work_dir", str(tmp_path / "w"), "--profile", "tiny",
                           "--anchor_codecs", "hevc_intra,jxl_progressive"])
    Protocol(args).stage_anchors()
    out = capsys.readouterr().out
    assert "hevc_intra skipped: program hevc_intra-tool not found" in out
    assert "jxl_progressive skipped" in out
    assert not os.path.exists(tmp_path / "out" / "per_image" / "hevc_intra.json")


@pytest.mark.skipif(not HAS_HEVC, reason="x265 and ffmpeg not installed (docs/anchors.md)")
def test_hevc_round_trip():
    image = smooth_image(64, 96)
    from pipeline import metrics
    lossless_ish = hevc.decode(hevc.encode(image, 0), 64, 96)
    assert metrics.psnr(image, lossless_ish) > 48  # the 8-bit YCbCr round trip is the cap
    pts = curves.sweep(hevc, image, (40, 30), ms_ssim=False)
    assert pts[0]["param"] == 40 and pts[0]["bpp"] < pts[1]["bpp"]
    assert pts[0]["psnr"] < pts[1]["psnr"]
    sim = curves.simulcast(hevc, hevc.SEARCH_GRID, image, [0.3, 0.8], ms_ssim=False)
    assert sim[1]["bytes"] == sim[0]["stream_bytes"] + sim[1]["stream_bytes"]


@pytest.mark.skipif(not HAS_JXL, reason="imagecodecs (libjxl) not installed (docs/anchors.md)")
def test_jxl_progressive_prefixes():
    image = smooth_image(256, 256)
    pts = curves.jxl_progressive(image, [0.4, 0.8, 1.6], ms_ssim=False)
    assert pts is not None
    assert [p["bytes"] for p in pts[:2]] == rate.target_bytes([0.4, 0.8], 256, 256)
    assert pts[2]["bytes"] <= rate.target_bytes([1.6], 256, 256)[0]
    assert pts[0]["psnr"] <= pts[2]["psnr"]


@pytest.mark.skipif(not HAS_AVIF, reason="avifenc/avifdec not installed (docs/anchors.md)")
def test_avif_sweep():
    from bench.modern import avif
    pts = curves.sweep(avif, smooth_image(64, 96), (50, 20), ms_ssim=False)
    assert pts[0]["bpp"] < pts[1]["bpp"] and pts[0]["psnr"] < pts[1]["psnr"]


def test_kodak_anchors_skips_absent_tools(tmp_path, monkeypatch):
    from bench import kodak_anchors
    from codec import image as image_lib
    image_lib.write_png(str(tmp_path / "a.png"), smooth_image(64, 96))
    monkeypatch.setattr(curves, "absent", lambda stem: ["program x265"])
    said = []
    assert kodak_anchors.run(str(tmp_path), None, ["hevc_intra"], log=said.append) == {}
    assert said == ["hevc_intra: skipped, program x265 not found here (docs/anchors.md)"]
