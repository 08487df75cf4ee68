"""The field's anchors in the RD report (bench.modern's per-image documents): their curves
(CompressAI JSON, with the tool versions and command lines), and the table of BD values of
each of our curves against each anchor."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Sequence

from bench import bd, results_io
from bench.anchors import average_points

# stem -> what the curve is (the tool, its versions and commands are in the JSON's "tool")
STEMS = {
    "hevc_intra": "HEVC intra, the BPG setting: x265, preset slow, tune psnr, all intra, "
                  "constant QP sweep, 4:4:4 8-bit full-range BT.601 YCbCr (converted in numpy), "
                  "decoded by ffmpeg; rate = Annex-B bitstream bytes",
    "jxl": "JPEG XL, libjxl 0.11 (imagecodecs wheel), effort 7, distance sweep; rate = "
           "codestream bytes",
    "avif": "AVIF, avifenc (libaom), speed 4, 4:4:4 8-bit full range, end-usage=q cq-level "
            "sweep; rate = .avif file bytes",
    "jxl_progressive": "ONE progressive JPEG XL file per image (libjxl 0.11, effort 7, "
                       "qprogressive AC), decoded from its first floor(R_k * pixels / 8) "
                       "bytes, R_k = the scalable model's layer-k rate of that image; the "
                       "distance is the smallest (3 % grid) whose whole file fits R_4",
    "hevc_simulcast": "HEVC simulcast: independent HEVC intra streams (settings of "
                      "HEVC-intra), stream k at the QP whose size is nearest the scalable "
                      "model's layer-k rate of that image; rate of point k = streams 1..k "
                      "summed, quality = stream k (the bound SHVC must beat)",
}
SWEEP_STEMS = ("hevc_intra", "jxl", "avif")
_EXTRA = ("bytes", "layer", "param", "target_bpp", "distance")


def curve(per_image: Mapping, name: str = None) -> Dict:
    """CompressAI results document (mean over images) of a bench.modern per-image document;
    None when no image has points."""
    ok = [im["points"] for im in per_image["images"] if im["points"]]
    if not ok:
        return None
    avg = average_points(ok)
    skipped = [im["image"] for im in per_image["images"] if not im["points"]]
    text = (f"{STEMS[per_image['codec']]}; mean over {len(ok)} images"
            + (f" ({len(skipped)} skipped: {', '.join(skipped)})" if skipped else ""))
    keys = [k for k in _EXTRA if k in avg[0]]
    return results_io.to_results(name or per_image["name"], avg, text, extra_point_keys=keys,
                                 scalable=bool(per_image["scalable"]), tool=per_image["tool"],
                                 images=len(ok), anchor_seconds=per_image.get("seconds"))


def curves(out: str, num_levels: int) -> Dict[str, Dict]:
    """{file stem: curve} of the per-image documents under <out>/per_image: the full-size
    curves (stem) and the sweeps at the lower pyramid levels (stem_level<j>, named -L<j>)."""
    docs = {}
    for stem in STEMS:
        for j in range(1, num_levels + 1):
            full = j == num_levels
            if not full and stem not in SWEEP_STEMS:
                continue
            key = stem if full else f"{stem}_level{j}"
            path = os.path.join(out, "per_image", key + ".json")
            if not os.path.exists(path):
                continue
            with open(path) as f:
                per_image = json.load(f)
            doc = curve(per_image, None if full else f"{per_image['name']}-L{j}")
            if doc is not None:
                docs[key] = doc
    return docs


def summary_rows(curves_by_name: Mapping[str, object], ours: Sequence[str],
                 anchors: Sequence[str], metric: str = "psnr") -> List[Dict]:
    """One row per (our curve, anchor): BD-rate (%) and BD-metric of ours against the anchor
    (Akima; None with the reason when not computable)."""
    rows = []
    for anchor in anchors:
        for name in ours:
            if anchor not in curves_by_name or name not in curves_by_name:
                continue
            ra, ma = bd.curve_arrays(curves_by_name[anchor], metric)
            rt, mt = bd.curve_arrays(curves_by_name[name], metric)
            rate = bd.bd_rate_result(ra, ma, rt, mt)
            delta = bd.bd_psnr_result(ra, ma, rt, mt)
            notes = [r.reason or r.note for r in (rate, delta) if r.reason or r.note]
            rows.append(dict(ours=name, anchor=anchor, metric=metric, bd_rate=rate.value,
                             bd_metric=delta.value, note="; ".join(dict.fromkeys(notes))))
    return rows


def format_summary(rows: Sequence[Mapping]) -> str:
    """Markdown: our curve, anchor, BD-rate, BD-PSNR (or BD-MS-SSIM dB), note."""
    if not rows:
        return ""
    unit = "BD-PSNR (dB)" if rows[0]["metric"] == "psnr" else "BD-MS-SSIM (dB)"
    lines = [f"| Ours | Anchor | BD-rate (%) | {unit} | Note |", "|---|---|---:|---:|---|"]
    for r in rows:
        rate = "n/a" if r["bd_rate"] is None else f"{r['bd_rate']:+.1f}"
        delta = "n/a" if r["bd_metric"] is None else f"{r['bd_metric']:+.2f}"
        lines.append(f"| {r['ours']} | {r['anchor']} | {rate} | {delta} | {r['note']} |")
    return "\n".join(lines) + "\n"
