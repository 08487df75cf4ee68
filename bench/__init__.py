"""Benchmark tools: classic-codec anchors, Bjontegaard deltas, results I/O and RD plots.

Modules:
  bench.anchors      JPEG 2000 (layered / single / resolution levels), JPEG, WebP anchors via Pillow.
  bench.bd           BD-rate and BD-PSNR through the PyPI package `bjontegaard`.
  bench.results_io   CompressAI-style results JSON (read/write).
  bench.plot         Rate-distortion plots (matplotlib, Agg).
"""
