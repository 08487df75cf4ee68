"""RD curves compared: Bjontegaard deltas (BD-rate, BD-PSNR) through the PyPI package
``bjontegaard`` (1.3.0), and one point against a curve (``point_vs_curve``).

Method: ``akima`` by default (piecewise Akima interpolation, the package's recommendation and
the one used in recent JVET/MPEG practice), ``pchip`` also allowed (``cubic``, the original
VCEG-M33 global cubic fit, is accepted too but not recommended).  Rates are taken as log10,
as in the package: BD-rate interpolates log10(rate) as a function of the metric and averages
over the overlapping metric interval; BD-PSNR interpolates the metric as a function of
log10(rate) and averages over the overlapping log-rate interval.

Conventions: BD-rate is in percent, negative = the test codec needs fewer bits for the same
quality; BD-PSNR is in dB, positive = test is better.

When a value cannot be computed honestly the functions return None and say why (a warning
from ``bd_rate``/``bd_psnr``; the reason string from ``bd_rate_result``/``bd_psnr_result``):
- fewer than ``min_points`` points in a curve.  The package itself accepts 2 or 3 points for
  akima/pchip (Akima falls back to a straight line for 2), but the BD convention (VCEG-M33,
  common test conditions) is 4 rate points, so ``min_points=4`` by default; pass
  ``min_points=2`` or 3 to accept shorter curves knowingly ('cubic' always needs 4).
- non-finite values (e.g. PSNR = inf for a lossless point) or rates <= 0.
- points are sorted by rate first; then rates and metric values must both be strictly
  increasing (duplicate rates or an RD curve that goes down cannot be interpolated as a
  function either way).
- no overlap between the two curves along the integration axis.
An overlap below ``min_overlap`` (0.75, the package default) still gives a value but is
reported in ``BDResult.note``.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import bjontegaard

from pipeline import metrics

DEFAULT_METHOD = "akima"
METHODS = ("akima", "pchip", "cubic")
MIN_POINTS = 4
MIN_OVERLAP = 0.75


class BDResult(NamedTuple):
    value: Optional[float]   # None when it cannot be computed
    reason: Optional[str]    # why value is None
    overlap: Optional[float]  # overlap fraction of the integration interval (0..1)
    note: Optional[str] = None  # e.g. low overlap


def _clean_curve(rate, metric, min_points: int, label: str):
    """Sorted float arrays, or (None, None, reason)."""
    rate = np.asarray(rate, dtype=np.float64).ravel()
    metric = np.asarray(metric, dtype=np.float64).ravel()
    if rate.shape != metric.shape:
        return None, None, f"{label}: {rate.size} rates but {metric.size} metric values"
    if rate.size < min_points:
        return None, None, (f"{label}: {rate.size} point(s), BD needs at least {min_points} "
                            "(min_points)")
    if not (np.all(np.isfinite(rate)) and np.all(np.isfinite(metric))):
        return None, None, f"{label}: non-finite rate or metric value (e.g. inf PSNR)"
    if np.any(rate <= 0):
        return None, None, f"{label}: rates must be > 0 (log scale)"
    order = np.argsort(rate, kind="stable")
    rate, metric = rate[order], metric[order]
    if np.any(np.diff(rate) <= 0):
        return None, None, f"{label}: duplicate rates"
    if np.any(np.diff(metric) <= 0):
        return None, None, (f"{label}: metric not strictly increasing with rate "
                            f"({np.round(metric, 3).tolist()})")
    return rate, metric, None


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    lo, hi = max(a.min(), b.min()), min(a.max(), b.max())
    total = max(a.max(), b.max()) - min(a.min(), b.min())
    return max(hi - lo, 0.0) / total if total > 0 else 0.0


def _bd(kind: str, rate_anchor, metric_anchor, rate_test, metric_test, method: str,
        min_points: int, min_overlap: float) -> BDResult:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "cubic":
        min_points = max(min_points, 4)
    if min_points < 2:
        raise ValueError("min_points must be >= 2")
    ra, ma, why = _clean_curve(rate_anchor, metric_anchor, min_points, "anchor")
    if why:
        return BDResult(None, why, None)
    rt, mt, why = _clean_curve(rate_test, metric_test, min_points, "test")
    if why:
        return BDResult(None, why, None)
    if kind == "rate":
        overlap = _overlap(ma, mt)
        axis = "metric"
    else:
        overlap = _overlap(np.log10(ra), np.log10(rt))
        axis = "log-rate"
    if overlap <= 0:
        return BDResult(None, f"curves do not overlap along the {axis} axis", 0.0)
    fn = bjontegaard.bd_rate if kind == "rate" else bjontegaard.bd_psnr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # overlap is reported through BDResult.note instead
        value = float(fn(ra, ma, rt, mt, method, require_matching_points=False, min_overlap=0))
    if not math.isfinite(value):
        return BDResult(None, "bjontegaard returned a non-finite value", overlap)
    note = None
    if overlap < min_overlap:
        note = f"only {overlap:.0%} overlap along the {axis} axis"
    return BDResult(value, None, overlap, note)


def bd_rate_result(rate_anchor, psnr_anchor, rate_test, psnr_test, method: str = DEFAULT_METHOD,
                   min_points: int = MIN_POINTS, min_overlap: float = MIN_OVERLAP) -> BDResult:
    """BD-rate (percent) with the reason when it cannot be computed."""
    return _bd("rate", rate_anchor, psnr_anchor, rate_test, psnr_test, method, min_points,
               min_overlap)


def bd_psnr_result(rate_anchor, psnr_anchor, rate_test, psnr_test, method: str = DEFAULT_METHOD,
                   min_points: int = MIN_POINTS, min_overlap: float = MIN_OVERLAP) -> BDResult:
    """BD-PSNR (dB, or the unit of whatever metric is given) with the reason when None."""
    return _bd("psnr", rate_anchor, psnr_anchor, rate_test, psnr_test, method, min_points,
               min_overlap)


def _value_or_warn(result: BDResult, what: str) -> Optional[float]:
    if result.value is None:
        warnings.warn(f"{what} not computed: {result.reason}", stacklevel=3)
    return result.value


def bd_rate(rate_anchor, psnr_anchor, rate_test, psnr_test, method: str = DEFAULT_METHOD,
            min_points: int = MIN_POINTS) -> Optional[float]:
    """BD-rate in percent (negative = test saves bits), or None with a warning saying why."""
    return _value_or_warn(bd_rate_result(rate_anchor, psnr_anchor, rate_test, psnr_test, method,
                                         min_points), "BD-rate")


def bd_psnr(rate_anchor, psnr_anchor, rate_test, psnr_test, method: str = DEFAULT_METHOD,
            min_points: int = MIN_POINTS) -> Optional[float]:
    """BD-PSNR in dB (positive = test better), or None with a warning saying why."""
    return _value_or_warn(bd_psnr_result(rate_anchor, psnr_anchor, rate_test, psnr_test, method,
                                         min_points), "BD-PSNR")


# ----------------------------------------------------------------------------------------------
# Tables

_METRIC_KEYS = {
    "psnr": ("psnr", "psnr-rgb"),
    "ms_ssim": ("ms_ssim", "ms-ssim-rgb", "ms-ssim"),
}


def curve_arrays(curve, metric: str = "psnr") -> Tuple[List[float], List[float]]:
    """(bpp, metric) from any of: a list of point dicts ({"bpp", "psnr", "ms_ssim"}); a mapping
    with "bpp" and metric lists (our keys or CompressAI's "psnr-rgb"/"ms-ssim-rgb"); a
    CompressAI results document ({"results": {...}}); or a (bpp_list, metric_list) pair.
    ``metric`` is "psnr", "ms_ssim" (raw MS-SSIM) or "ms_ssim_db" (-10*log10(1-v))."""
    base = "ms_ssim" if metric == "ms_ssim_db" else metric
    if base not in _METRIC_KEYS:
        raise ValueError(f"metric must be psnr, ms_ssim or ms_ssim_db, got {metric!r}")
    if isinstance(curve, Mapping) and "results" in curve:
        curve = curve["results"]
    if isinstance(curve, Mapping):
        rates = list(curve["bpp"])
        key = next((k for k in _METRIC_KEYS[base] if k in curve), None)
        if key is None:
            raise KeyError(f"no {base} values in curve (keys: {sorted(curve)})")
        values = list(curve[key])
    elif isinstance(curve, tuple) and len(curve) == 2:
        rates, values = list(curve[0]), list(curve[1])
    else:
        rates = [p["bpp"] for p in curve]
        key = next((k for k in _METRIC_KEYS[base] if curve and k in curve[0]), None)
        if curve and key is None:
            raise KeyError(f"no {base} values in points (keys: {sorted(curve[0])})")
        values = [p[key] for p in curve]
    if any(v is None for v in values):
        values = [math.nan if v is None else v for v in values]
    if metric == "ms_ssim_db":
        values = [metrics.ms_ssim_db(v) for v in values]
    return [float(r) for r in rates], [float(v) for v in values]


def _log_rate_curve(rate, metric):
    """(log10 rates, metric values) of a curve's finite points, or None unless they form an RD
    curve (at least 2 points; rate and metric strictly increasing, as BD requires)."""
    pairs = [(float(r), float(m)) for r, m in zip(rate, metric)
             if r is not None and m is not None and math.isfinite(float(r))
             and math.isfinite(float(m))]
    rate, metric, why = _clean_curve([p[0] for p in pairs], [p[1] for p in pairs], 2, "anchor")
    return None if why else (np.log10(rate), metric)


def interp_log_rate(anchor_bpp: Sequence[float], anchor_metric: Sequence[float],
                    metric: float) -> Optional[float]:
    """Rate of the anchor at ``metric`` (piecewise linear in log10 rate), None outside."""
    curve = _log_rate_curve(anchor_bpp, anchor_metric)
    if curve is None or not curve[1][0] <= metric <= curve[1][-1]:
        return None
    return float(10 ** np.interp(metric, curve[1], curve[0]))


def interp_metric(anchor_bpp: Sequence[float], anchor_metric: Sequence[float],
                  bpp: float) -> Optional[float]:
    """Metric of the anchor at ``bpp`` (piecewise linear in log10 rate), None outside."""
    curve = _log_rate_curve(anchor_bpp, anchor_metric)
    if curve is None or not curve[0][0] <= np.log10(bpp) <= curve[0][-1]:
        return None
    return float(np.interp(np.log10(bpp), curve[0], curve[1]))


def point_vs_curve(point: Mapping, anchor, metric: str = "psnr") -> Dict:
    """One RD point against an anchor curve: rate difference (%) at equal metric and metric
    difference at equal rate, by piecewise-linear interpolation in log rate (a single point
    has no BD integral).  None where the point lies outside the anchor's range."""
    bpp, vals = curve_arrays(anchor, metric)
    value = point.get(metric)
    out = {"rate_diff": None, "metric_diff": None}
    if value is None or point.get("bpp") is None:
        return out
    r = interp_log_rate(bpp, vals, float(value))
    if r is not None:
        out["rate_diff"] = 100.0 * (float(point["bpp"]) / r - 1.0)
    m = interp_metric(bpp, vals, float(point["bpp"]))
    if m is not None:
        out["metric_diff"] = float(value) - m
    return out


def bd_table(reference_name: str, curves: Dict[str, object], metric: str = "psnr",
             method: str = DEFAULT_METHOD, min_points: int = MIN_POINTS) -> List[Dict]:
    """One row per curve other than the reference: BD-rate and BD-<metric> against
    ``curves[reference_name]``.

    Row keys: "name", "points", "bd_rate" (percent or None), "bd_metric" (metric units or
    None), "metric", "method", "note" (reasons for None / low-overlap notes, or "")."""
    if reference_name not in curves:
        raise KeyError(f"reference curve {reference_name!r} not in {sorted(curves)}")
    ra, ma = curve_arrays(curves[reference_name], metric)
    rows = []
    for name, curve in curves.items():
        if name == reference_name:
            continue
        rt, mt = curve_arrays(curve, metric)
        r = bd_rate_result(ra, ma, rt, mt, method, min_points)
        d = bd_psnr_result(ra, ma, rt, mt, method, min_points)
        notes = []
        for label, res in (("BD-rate", r), ("BD-" + metric.upper().replace("_", "-"), d)):
            if res.reason:
                notes.append(f"{label}: {res.reason}")
            elif res.note:
                notes.append(f"{label}: {res.note}")
        # identical reasons for both (e.g. too few points) are said once
        if r.reason and r.reason == d.reason:
            notes = [r.reason]
        rows.append({"name": name, "points": len(rt), "bd_rate": r.value, "bd_metric": d.value,
                     "metric": metric, "method": method, "note": "; ".join(notes)})
    return rows


def format_markdown(rows: Sequence[Dict], reference_name: Optional[str] = None) -> str:
    """Markdown table of ``bd_table`` rows."""
    metric = rows[0]["metric"] if rows else "psnr"
    method = rows[0]["method"] if rows else DEFAULT_METHOD
    unit = {"psnr": "dB", "ms_ssim_db": "dB", "ms_ssim": ""}.get(metric, "")
    head = f"BD-{metric.upper().replace('_', '-')}" + (f" ({unit})" if unit else "")
    lines = []
    if reference_name:
        lines.append(f"Anchor: {reference_name}; interpolation: {method}; "
                     "negative BD-rate = fewer bits than the anchor.\n")
    lines.append(f"| Curve | Points | BD-rate (%) | {head} | Note |")
    lines.append("|---|---:|---:|---:|---|")
    for row in rows:
        br = "n/a" if row["bd_rate"] is None else f"{row['bd_rate']:+.2f}"
        bm = "n/a" if row["bd_metric"] is None else f"{row['bd_metric']:+.3f}"
        note = str(row.get("note", "")).replace("|", "\\|")
        lines.append(f"| {row['name']} | {row['points']} | {br} | {bm} | {note} |")
    return "\n".join(lines) + "\n"
