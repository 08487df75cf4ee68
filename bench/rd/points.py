"""Per-image RD points from the eval scripts' results.json documents (no TensorFlow)."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Optional, Sequence


def layer_points(results: Mapping, num_layers: Optional[int] = None) -> List[List[Dict]]:
    """Per-image list of per-layer points from an eval results.json document.

    Point k: bpp = actual_bpp (bytes of layers 1..k over layer k's pixels), psnr, ms_ssim,
    bytes (of layer k's stream alone), plus height/width when present."""
    out = []
    for image in results["images"]:
        layers = image["layers"][:num_layers] if num_layers else image["layers"]
        pts = []
        for k, entry in enumerate(layers, start=1):
            p = dict(bpp=float(entry["actual_bpp"]), psnr=entry.get("psnr"),
                     ms_ssim=entry.get("ms_ssim"), bytes=int(entry["bytes"]), layer=k,
                     eval_bpp=entry.get("eval_bpp"))
            for key in ("height", "width"):
                if key in entry:
                    p[key] = int(entry[key])
            pts.append(p)
        out.append(pts)
    return out


def image_key(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def per_image(results: Mapping) -> Dict[str, Dict]:
    """{image stem: image entry} of an eval results.json document."""
    return {image_key(im["image"]): im for im in results["images"]}


def single_layer_points(single_results: Sequence[Mapping]) -> List[List[Dict]]:
    """Per-image points of the single-layer anchors: point k = model k's only layer.

    ``single_results``: results.json documents of the single-layer models in layer order; the
    images are matched by file stem (all documents must hold the same images)."""
    maps = [per_image(doc) for doc in single_results]
    keys = list(maps[0])
    for m in maps[1:]:
        if set(m) != set(keys):
            raise ValueError("single-layer results cover different images")
    out = []
    for key in keys:
        pts = []
        for k, m in enumerate(maps, start=1):
            e = m[key]["layers"][0]
            pts.append(dict(bpp=float(e["actual_bpp"]), psnr=e.get("psnr"),
                            ms_ssim=e.get("ms_ssim"), bytes=int(e["bytes"]), layer=k))
        out.append(pts)
    return out


def simulcast_points(single_per_image: Sequence[Sequence[Mapping]]) -> List[List[Dict]]:
    """Simulcast per image: rate of layer k = sum of the single-layer rates (bytes) of models
    1..k over the image's pixels; quality = single-layer model k's quality."""
    out = []
    for pts in single_per_image:
        total_bytes, total_bpp, sim = 0, 0.0, []
        for p in pts:
            total_bytes += int(p["bytes"])
            total_bpp += float(p["bpp"])
            sim.append(dict(bpp=total_bpp, psnr=p.get("psnr"), ms_ssim=p.get("ms_ssim"),
                            bytes=total_bytes, layer=p.get("layer")))
        out.append(sim)
    return out
