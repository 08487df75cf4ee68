"""Rate-distortion plots: bpp vs PSNR (RGB) and bpp vs MS-SSIM in dB (-10*log10(1-v)).

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so it works
headless and does not disturb other matplotlib users in the same process.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Mapping, Optional, Sequence, Union

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from bench import results_io
from bench.bd import curve_arrays
from pipeline import metrics

_MARKERS = "os^Dv<>pP*Xh"


def _normalize(curves) -> Dict[str, object]:
    if isinstance(curves, Mapping):
        return dict(curves)
    out = {}
    for doc in curves:  # a sequence of results documents
        out[doc["name"]] = doc
    return out


def _is_scalable(name: str, curve, scalable: Iterable[str]) -> bool:
    if name in set(scalable):
        return True
    return isinstance(curve, Mapping) and results_io.is_scalable(curve)


def _finite_pairs(xs, ys):
    pairs = [(x, y) for x, y in zip(xs, ys)
             if x is not None and y is not None and y == y and abs(y) != float("inf")]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_rd(curves: Union[Mapping[str, object], Sequence[Mapping]], out_png: str,
            title: Optional[str] = None, scalable: Iterable[str] = (),
            dpi: int = 120) -> str:
    """Two panels (bpp vs PSNR, bpp vs MS-SSIM dB), one line with markers per curve.

    ``curves``: {name: curve} where a curve is a CompressAI results document, a list of point
    dicts (bpp/psnr/ms_ssim) or a mapping of lists; or a list of results documents (named by
    their "name").  Curves named in ``scalable`` or whose document has "scalable": true are
    points of ONE scalable bitstream: drawn solid, points connected in layer order and numbered
    1..n; the other curves (separate encodings per rate) are drawn dashed.  Points with no
    MS-SSIM (None) are left out of the right panel.  Writes ``out_png`` and returns its path.
    """
    curves = _normalize(curves)
    scalable = list(scalable)
    fig = Figure(figsize=(12, 4.8))
    FigureCanvasAgg(fig)
    ax_psnr, ax_ms = fig.subplots(1, 2)
    for i, (name, curve) in enumerate(curves.items()):
        marker = _MARKERS[i % len(_MARKERS)]
        is_scal = _is_scalable(name, curve, scalable)
        style = dict(marker=marker, linestyle="-" if is_scal else "--", markersize=5,
                     linewidth=1.6 if is_scal else 1.2, label=name + (" (scalable)" if is_scal
                                                                       else ""))
        bpp, psnr = curve_arrays(curve, "psnr")
        xs, ys = _finite_pairs(bpp, psnr)
        line, = ax_psnr.plot(xs, ys, **style)
        if is_scal:
            for k, (x, y) in enumerate(zip(xs, ys), start=1):
                ax_psnr.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, -10),
                                 fontsize=7, color=line.get_color())
        try:
            bpp, ms = curve_arrays(curve, "ms_ssim")
        except KeyError:
            continue
        ms_db = [None if v != v else metrics.ms_ssim_db(v) for v in ms]  # NaN = missing
        xs, ys = _finite_pairs(bpp, ms_db)
        if xs:
            style["color"] = line.get_color()
            ax_ms.plot(xs, ys, **style)
    ax_psnr.set_xlabel("Rate (bpp)")
    ax_psnr.set_ylabel("PSNR RGB (dB)")
    ax_ms.set_xlabel("Rate (bpp)")
    ax_ms.set_ylabel("MS-SSIM RGB (dB) = -10 log10(1 - MS-SSIM)")
    for ax in (ax_psnr, ax_ms):
        ax.grid(True, alpha=0.4)
        if ax.lines:
            ax.legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(out_png))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(out_png, dpi=dpi)
    return out_png
