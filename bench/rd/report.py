"""The report of the RD protocol: curves from the per-image results, CompressAI JSON per curve,
RD plots and bd_table.md (reads results only; no TensorFlow)."""
from __future__ import annotations

import json
import os
from typing import Dict, List, Mapping, Sequence

from bench import bd, plot, results_io
from bench.anchors import RESOLUTION_TARGETS_BPP, average_points
from bench.rd import field
from bench.rd.points import layer_points, simulcast_points, single_layer_points
from pipeline import metrics


def bd_rows(reference: str, curves: Mapping[str, object], tests: Sequence[str],
            metric: str = "psnr") -> List[Dict]:
    """bench.bd.bd_table rows (Akima) of ``tests`` against ``reference``."""
    sub = {reference: curves[reference]}
    for name in tests:
        sub[name] = curves[name]
    return bd.bd_table(reference, sub, metric=metric, method="akima")


def format_bd_section(title: str, reference: str, curves: Mapping[str, object],
                      tests: Sequence[str]) -> str:
    lines = [f"### {title}\n"]
    for metric in ("psnr", "ms_ssim_db"):
        try:
            rows = bd_rows(reference, curves, tests, metric)
        except KeyError as error:
            lines.append(f"({metric}: {error})\n")
            continue
        lines.append(bd.format_markdown(rows, reference))
    return "\n".join(lines)


def format_curve_table(docs: Mapping[str, Mapping]) -> str:
    """Markdown table of every point of every curve (means over images)."""
    lines = ["| Curve | Point | bpp | PSNR (dB) | MS-SSIM | MS-SSIM (dB) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, doc in docs.items():
        r = doc["results"]
        labels = r.get("layer") or r.get("level") or list(range(1, len(r["bpp"]) + 1))
        for i, bpp in enumerate(r["bpp"]):
            ps = r["psnr-rgb"][i]
            ms = r["ms-ssim-rgb"][i]
            lines.append(f"| {name} | {labels[i]} | {bpp:.4f} | "
                         f"{'n/a' if ps is None else f'{ps:.2f}'} | "
                         f"{'n/a' if ms is None else f'{ms:.4f}'} | "
                         f"{'n/a' if ms is None else f'{metrics.ms_ssim_db(ms):.2f}'} |")
    return "\n".join(lines) + "\n"


def format_point_table(rows: Sequence[Mapping]) -> str:
    lines = ["| Spatial layer | Resolution | bpp | PSNR (dB) | Anchor | Rate diff at equal PSNR (%) "
             "| PSNR diff at equal rate (dB) |", "|---|---|---:|---:|---|---:|---:|"]
    for r in rows:
        na = "n/a (outside the anchor's range, or anchor not monotonic)"
        rd = na if r["rate_diff"] is None else f"{r['rate_diff']:+.1f}"
        md = na if r["metric_diff"] is None else \
            f"{r['metric_diff']:+.2f}"
        lines.append(f"| {r['layer']} | {r['resolution']} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
                     f"{r['anchor']} | {rd} | {md} |")
    return "\n".join(lines) + "\n"


def estimate_rows(name: str, results: Mapping) -> List[Dict]:
    """Per layer of one eval results document: the estimated rate (eval_bpp) over the real one,
    minus 1, as mean and worst (largest |.|) over the images, against the range-coded strings
    (payload_bpp; None in results written before it existed) and against the stream files
    (actual_bpp, headers included)."""
    rows = []
    for k, first in enumerate(results["images"][0]["layers"]):
        row = dict(model=name, layer=first["name"])
        layers = [image["layers"][k] for image in results["images"]]
        for key, column in (("payload", "payload_bpp"), ("file", "actual_bpp")):
            if any(layer.get(column) is None for layer in layers):
                row[key] = None
                continue
            gaps = [layer["eval_bpp"] / layer[column] - 1 for layer in layers]
            row[key] = dict(mean=sum(gaps) / len(gaps), worst=max(gaps, key=abs))
        rows.append(row)
    return rows


def format_estimate_table(rows: Sequence[Mapping]) -> str:
    def cell(gap):
        return "n/a" if gap is None else f"{100 * gap['mean']:+.2f} / {100 * gap['worst']:+.2f}"
    lines = ["| Model | Layer | vs payload: mean / worst (%) | vs file: mean / worst (%) |",
             "|---|---|---:|---:|"]
    lines += [f"| {r['model']} | {r['layer']} | {cell(r['payload'])} | {cell(r['file'])} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def _doc(name, points, description, scalable, **extra):
    keys = [k for k in ("bytes", "layer", "level", "height", "width") if k in points[0]]
    return results_io.to_results(name, points, description, extra_point_keys=keys,
                                 scalable=scalable, **extra)


def _single_steps(config: Mapping) -> str:
    """The single-layer models' steps, and whether the scalable model had as many."""
    single, scalable = config.get("single_steps", config.get("steps")), config.get("steps")
    if single == scalable:
        return f"{single} steps, as the scalable model"
    return f"{single} steps (the scalable model: {scalable})"


def aggregate(out: str, load, num_layers: int, num_levels: int, config: Mapping) -> Dict:
    """Builds every curve from the per-image results (``load(name)`` -> results document or
    None), writes JSON, plots and bd_table.md into ``out``; returns {file stem: doc}."""
    docs: Dict[str, Dict] = {}
    sections: List[str] = []
    desc = (f"filters {config.get('filters')}, lambdas {config.get('lmbdas')}, "
            f"{config.get('steps')} steps, patch {config.get('patchsize')}, batch "
            f"{config.get('batchsize')}, {config.get('entropy_model')}")
    n_img = None
    quality = load("quality")
    singles = [load(f"single_{k + 1}") for k in range(num_layers)]
    if quality is not None:
        pts = layer_points(quality)
        n_img = len(pts)
        docs["quality_scalable"] = _doc(
            "Ours-scalable", average_points(pts), f"quality-scalable model, {desc}; layer k rate = "
            f"streams 1..k; mean over {n_img} images", True)
    if all(s is not None for s in singles):
        sp = single_layer_points(singles)
        docs["single_layer"] = _doc(
            "Ours-single-layer", average_points(sp), "one single-layer model per lambda (the "
            f"filters and lambda of the scalable model's layer), {_single_steps(config)}; mean "
            f"over {len(sp)} images", False)
        docs["simulcast"] = _doc(
            "Ours-simulcast", average_points(simulcast_points(sp)), "rate of point k = sum of the "
            f"single-layer rates 1..k per image; mean over {len(sp)} images", True)
    matched = load_json(os.path.join(out, "per_image", "j2k_layered_matched.json"))
    if matched:
        ok = [d["points"] for d in matched if d["points"]]
        if ok:
            docs["j2k_layered_matched"] = _doc(
                "JPEG2000-layered", average_points(ok), "one JPEG 2000 codestream per image with 4 "
                "quality layers whose cumulative rates are matched to the scalable model's "
                "layer rates of that image (irreversible, mct=1, LRCP); rate = truncated "
                f"codestream size; mean over {len(ok)} images "
                f"({len(matched) - len(ok)} skipped: non-increasing rates)", True)
    # classic anchors computed earlier (bench.kodak_anchors)
    classic = {}
    for stem in ("j2k_single", "jpeg", "webp"):
        path = os.path.join(out, f"{stem}.json")
        if os.path.exists(path):
            classic[stem] = results_io.read_results(path)
    for stem, doc in docs.items():
        results_io.write_results(os.path.join(out, f"{stem}.json"), doc)
    quality_curves = {d["name"]: d for d in docs.values()}
    for d in classic.values():
        quality_curves.setdefault(d["name"], d)
    if quality_curves:
        plot.plot_rd(quality_curves, os.path.join(out, "rd_quality.png"),
                     f"Quality scalability, Kodak ({n_img} images), {config.get('steps')} "
                     "training steps")
    field_docs = field.curves(out, num_levels)
    for stem, doc in field_docs.items():
        results_io.write_results(os.path.join(out, f"{stem}.json"), doc)
    docs.update(field_docs)
    field_names = [field_docs[s]["name"] for s in field.STEMS if s in field_docs]
    for name in field_names:
        quality_curves[name] = next(d for d in field_docs.values() if d["name"] == name)
    if field_names:
        shown = {n: quality_curves[n] for n in ("Ours-scalable", "Ours-single-layer",
                                                 "JPEG2000-layered", "JPEG2000", *field_names)
                 if n in quality_curves}
        plot.plot_rd(shown, os.path.join(out, "rd_anchors_quality.png"),
                     f"Quality: our models against the field's anchors, Kodak ({n_img} images)")
        ours = [n for n in ("Ours-scalable", "Ours-single-layer", "Ours-simulcast")
                if n in quality_curves]
        anchors = [n for n in ("JPEG2000-layered", "JPEG2000", *field_names)
                   if n in quality_curves]
        sections.append(
            "### Our models against each anchor (summary)\n\n"
            "BD of our curve (test) against the anchor (reference), Akima: negative BD-rate "
            "= ours needs fewer bits for the same quality; positive BD-PSNR = ours better at "
            "the same rate. Scalable and simulcast rates count every layer up to k.\n\n"
            + field.format_summary(field.summary_rows(quality_curves, ours, anchors)) + "\n"
            + field.format_summary(field.summary_rows(quality_curves, ours, anchors,
                                                      "ms_ssim_db")))
    if "quality_scalable" in docs:
        tests = [n for n in ("Ours-single-layer", "Ours-simulcast", "JPEG2000-layered",
                             "JPEG2000", "WebP", "JPEG", *field_names) if n in quality_curves]
        sections.append(format_bd_section(
            "Quality: anchors against the scalable model (negative BD-rate = the anchor needs "
            "fewer bits than the scalable model)", "Ours-scalable", quality_curves, tests))
        ref_tests = [n for n in ("Ours-scalable",) if n in quality_curves]
        for ref in ("Ours-single-layer", "Ours-simulcast", "JPEG2000-layered", *field_names):
            if ref in quality_curves:
                steps = (f"; single-layer models: {_single_steps(config)}"
                         if ref in ("Ours-single-layer", "Ours-simulcast") else "")
                sections.append(format_bd_section(
                    f"Quality: scalable model against {ref} (positive BD-rate = cost of the "
                    f"scalable model in extra bits{steps})", ref, quality_curves, ref_tests))

    # spatial
    spatial = load("spatial")
    res_anchor = load_json(os.path.join(out, "per_image", "j2k_resolutions.json"))
    spatial_curves = {}
    point_rows = []
    if spatial is not None:
        sp_pts = layer_points(spatial)
        avg = average_points(sp_pts)
        for j, p in enumerate(avg):
            p["level"] = j + 1
        docs["spatial_scalable"] = _doc(
            "Ours-spatial", avg, f"spatial-scalable model, filters {config.get('spatial_filters')}, "
            f"lambdas {config.get('spatial_lmbdas')}, {config.get('spatial_steps')} steps; layer k "
            "compared with pyramid level k (Lanczos); rate = streams 1..k over level k's pixels; "
            f"mean over {len(sp_pts)} images", True)
        results_io.write_results(os.path.join(out, "spatial_scalable.json"),
                                 docs["spatial_scalable"])
        spatial_curves["Ours-spatial"] = docs["spatial_scalable"]
        field_level = {}
        for j in range(num_levels):
            anchors_at_level = {}
            if res_anchor:
                per_img = [[lvls[j] for lvls in d["resolution_levels"]] for d in res_anchor]
                stem = f"j2k_resolution_level{j + 1}"
                docs[stem] = _doc(f"JPEG2000-resolution-L{j + 1}", average_points(per_img),
                                  "one RLCP JPEG 2000 codestream per full-resolution target "
                                  f"{list(RESOLUTION_TARGETS_BPP)} bpp, truncated/decoded at "
                                  f"level {j + 1} of {num_levels} (reduce="
                                  f"{num_levels - 1 - j}); bpp over that level's pixels", False)
                per_img = [d["single"][j] for d in res_anchor]
                stem2 = f"j2k_single_level{j + 1}"
                docs[stem2] = _doc(f"JPEG2000-single-L{j + 1}", average_points(per_img),
                                   f"single-layer JPEG 2000 of the level-{j + 1} Lanczos image at "
                                   f"{list(RESOLUTION_TARGETS_BPP)} bpp", False)
                anchors_at_level[docs[stem]["name"]] = docs[stem]
                anchors_at_level[docs[stem2]["name"]] = docs[stem2]
            if j == num_levels - 1:
                single_docs = singles
            else:
                single_docs = [load(f"single_{k + 1}_level{j + 1}") for k in range(num_layers)]
            if all(s is not None for s in single_docs):
                stem = f"single_layer_level{j + 1}"
                docs[stem] = _doc(f"Ours-single-layer-L{j + 1}",
                                  average_points(single_layer_points(single_docs)),
                                  "our single-layer models (quality protocol) applied to the "
                                  f"level-{j + 1} image", False)
                anchors_at_level[docs[stem]["name"]] = docs[stem]
            for stem in field.SWEEP_STEMS:
                key = stem if j == num_levels - 1 else f"{stem}_level{j + 1}"
                if key in docs:  # lower levels are named -L<j> already, the full size not
                    name = docs[key]["name"] + (f"-L{j + 1}" if key == stem else "")
                    anchors_at_level[name] = field_level[name] = docs[key]
            for name, doc in anchors_at_level.items():
                if name not in field_level:
                    spatial_curves[name] = doc
                point = avg[j]
                cmp = bd.point_vs_curve(point, doc, "psnr")
                point_rows.append(dict(layer=j + 1, resolution=(
                    f"{point.get('width', 0):.0f}x{point.get('height', 0):.0f}"
                    if point.get("width") else f"level {j + 1}"), bpp=point["bpp"],
                    psnr=point["psnr"], anchor=name, **cmp))
        for stem, doc in docs.items():
            if stem.startswith(("j2k_resolution_level", "j2k_single_level", "single_layer_level")):
                results_io.write_results(os.path.join(out, f"{stem}.json"), doc)
        plot.plot_rd(spatial_curves, os.path.join(out, "rd_spatial.png"),
                     f"Spatial scalability per resolution, Kodak ({len(sp_pts)} images)")
        if field_level:
            plot.plot_rd({"Ours-spatial": docs["spatial_scalable"], **field_level},
                         os.path.join(out, "rd_anchors_spatial.png"),
                         f"Spatial layers against the field's anchors at each resolution, "
                         f"Kodak ({len(sp_pts)} images)")
        sections.append(
            "### Spatial: each layer of the spatial model against anchors at that resolution\n\n"
            "The spatial model has ONE point per resolution (one lambda per layer), so no BD "
            "integral exists; the table gives the rate difference at equal PSNR and the PSNR "
            "difference at equal rate against each anchor curve at that resolution "
            "(piecewise-linear interpolation in log rate; n/a outside the anchor's range or where the anchor's PSNR is not increasing with rate). "
            "Negative rate diff / positive PSNR diff = the spatial layer is better.\n\n"
            + format_point_table(point_rows))
    evals = [(name, load(stem)) for name, stem in
             [("Ours-scalable", "quality")]
             + [(f"Ours-single-layer {k + 1}", f"single_{k + 1}") for k in range(num_layers)]
             + [("Ours-spatial", "spatial")]]
    estimates = [row for name, doc in evals if doc is not None
                 for row in estimate_rows(name, doc)]
    if estimates:
        with open(os.path.join(out, "estimated_bits.json"), "w", encoding="utf-8") as f:
            json.dump(estimates, f, indent=2)
            f.write("\n")
        sections.append(
            "### Estimated bits: the entropy model's estimate (eval_bpp) against the real rate\n\n"
            "Per layer, eval_bpp / real bpp - 1, as mean and worst over the images: against "
            "the range-coded strings (payload_bpp) and against the stream files (actual_bpp, "
            "which adds each stream's header, about 70 bytes).\n\n"
            + format_estimate_table(estimates))
    text = ["# Rate-distortion protocol results\n",
            f"Configuration: {json.dumps(dict(config))}\n",
            "BD-rate / BD-PSNR: PyPI `bjontegaard` (1.3.0), Akima interpolation, 4 points per "
            "curve minimum, means over images of per-image bpp/PSNR/MS-SSIM.\n",
            "## Curves (means over images)\n", format_curve_table(docs), "## BD tables\n"]
    text += sections
    with open(os.path.join(out, "bd_table.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(text))
    return docs


def load_json(path):
    """The JSON document at `path`, or None when there is none."""
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def portable_comparison(curves: Mapping[str, Mapping], checkpoints: Mapping[str, str],
                        steps: Mapping[str, object]) -> Dict:
    """The exact-vs-float comparison of the `portable` stage from two eval results documents
    (``curves["exact"]``, ``curves["float"]``): mean per-layer points, BD-rate and BD-PSNR of
    exact against float (anchor), and the ratio of all stream bytes."""
    points = {path: average_points(layer_points(doc)) for path, doc in curves.items()}
    rate = bd.bd_rate_result(*bd.curve_arrays(points["float"]), *bd.curve_arrays(points["exact"]))
    psnr = bd.bd_psnr_result(*bd.curve_arrays(points["float"]), *bd.curve_arrays(points["exact"]))
    total = {path: sum(e["bytes"] for image in doc["images"] for e in image["layers"])
             for path, doc in curves.items()}
    return dict(checkpoints=dict(checkpoints), steps=dict(steps),
                images=len(curves["exact"]["images"]),
                bd_rate_percent=rate.value, bd_rate_note=rate.reason or rate.note,
                bd_psnr_db=psnr.value, bytes_ratio=total["exact"] / total["float"],
                points={path: [{k: p[k] for k in ("bpp", "psnr", "ms_ssim")} for p in pts]
                        for path, pts in points.items()})
