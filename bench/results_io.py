"""RD results as JSON in CompressAI's results schema.

    {
      "name": "JPEG2000-layered",
      "description": "free text",
      "results": {"bpp": [...], "psnr-rgb": [...], "ms-ssim-rgb": [...]},
      ...optional extra top-level keys, e.g. "scalable": true, "meta": {...}
    }

This is the shape ``compressai.utils.plot`` (and CompressAI's eval scripts) read: it takes
``data["results"]["bpp"]`` and ``data["results"][metric]``.  ``ms-ssim-rgb`` holds the raw
MS-SSIM value (0..1); plots convert it to dB as -10*log10(1-v).  Extra per-point lists (e.g.
"bytes", "layer") may sit next to them in "results"; CompressAI ignores them.

JSON has no inf/NaN: a non-finite number (PSNR of a lossless point) or a missing MS-SSIM is
written as null and read back as None.
"""
from __future__ import annotations

import json
import math
import numbers
import os
from typing import Dict, List, Mapping, Sequence

from codec import image as image_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REQUIRED_KEYS = ("bpp", "psnr-rgb", "ms-ssim-rgb")
_POINT_TO_SCHEMA = {"bpp": "bpp", "psnr": "psnr-rgb", "ms_ssim": "ms-ssim-rgb"}
_SCHEMA_TO_POINT = {v: k for k, v in _POINT_TO_SCHEMA.items()}


def _clean(value):
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return value
    return value if math.isfinite(value) else None


def to_results(name: str, points: Sequence[Mapping], description: str = "",
               extra_point_keys: Sequence[str] = (), **top_level) -> Dict:
    """Results document from a list of point dicts ({"bpp", "psnr", "ms_ssim", ...}, as the
    anchors return them). ``extra_point_keys`` (e.g. ("bytes", "layer")) are copied into
    "results" as lists; ``top_level`` keyword arguments (e.g. scalable=True) are added to the
    document."""
    results = {"bpp": [], "psnr-rgb": [], "ms-ssim-rgb": []}
    for key in extra_point_keys:
        results[key] = []
    for p in points:
        for key, schema_key in _POINT_TO_SCHEMA.items():
            results[schema_key].append(_clean(p.get(key)))
        for key in extra_point_keys:
            results[key].append(_clean(p.get(key)))
    doc = {"name": str(name), "description": str(description), "results": results}
    for key, value in top_level.items():
        if key in ("name", "description", "results"):
            raise ValueError(f"{key!r} is a schema key, not an extra top-level key")
        doc[key] = value
    validate(doc)
    return doc


def validate(doc: Mapping) -> None:
    """Raises ValueError unless ``doc`` has the schema (equal-length numeric lists)."""
    for key in ("name", "description", "results"):
        if key not in doc:
            raise ValueError(f"results document lacks {key!r}")
    results = doc["results"]
    if not isinstance(results, Mapping):
        raise ValueError('"results" must be an object')
    for key in REQUIRED_KEYS:
        if key not in results:
            raise ValueError(f'"results" lacks {key!r}')
    lengths = {key: len(values) for key, values in results.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"result lists differ in length: {lengths}")
    for key in REQUIRED_KEYS:
        for v in results[key]:
            if v is not None and not isinstance(v, (int, float)):
                raise ValueError(f"non-numeric value {v!r} in {key!r}")
    if any(v is None for v in results["bpp"]):
        raise ValueError("bpp values must all be present")


def dumps(doc: Mapping) -> str:
    validate(doc)
    return json.dumps(doc, indent=2, allow_nan=False) + "\n"


def write_results(path: str, doc: Mapping) -> str:
    """Writes a results document as JSON (atomically, creating the folder); returns path."""
    text = dumps(doc)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    image_lib.write_file_atomic(path, text.encode("utf-8"))
    return path


def read_results(path: str) -> Dict:
    """Reads and validates a results document."""
    with open(path, "r", encoding="utf-8") as f:
        doc = json.load(f)
    validate(doc)
    return doc


def to_points(doc: Mapping) -> List[Dict]:
    """Back to a list of point dicts with keys bpp/psnr/ms_ssim (plus any extra lists)."""
    results = doc["results"]
    n = len(results["bpp"])
    points = []
    for i in range(n):
        p = {}
        for key, values in results.items():
            p[_SCHEMA_TO_POINT.get(key, key)] = values[i]
        points.append(p)
    return points


def is_scalable(doc: Mapping) -> bool:
    """True for a curve whose points come from one scalable bitstream (top-level
    "scalable": true)."""
    return bool(doc.get("scalable", False))


def shown_path(path, flag=None):
    """`path` as results record it (no machine's paths): a relative path as given; an absolute
    one relative to the repository when inside it, else ``$FLAG`` (the flag that named it, in
    capitals) or, without a flag, its last component."""
    path = str(path)
    if not os.path.isabs(path):
        return path
    if path == REPO or path.startswith(REPO + os.sep):
        return os.path.relpath(path, REPO)
    return "$" + flag.lstrip("-").upper() if flag else os.path.basename(path.rstrip(os.sep))


def shown_command(module, argv):
    """``python -m <module> <argv>`` with every absolute path shown as shown_path does."""
    words, flag = ["python", "-m", module], None
    for arg in argv:
        words.append(shown_path(arg, flag) if os.path.isabs(arg) else arg)
        flag = arg if arg.startswith("--") else None
    return " ".join(words)
