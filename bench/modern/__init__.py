"""The anchors the field reports, beside JPEG 2000: HEVC intra (x265, the BPG setting), JPEG XL
(libjxl), AVIF (libaom), a JPEG XL progressive curve decoded from byte prefixes, and HEVC
simulcast (see docs/anchors.md).

Modules: tools (external programs: presence, versions, runs), rate (matching a rate by a codec
parameter), hevc, jxl (+ libjxl, the C API for progressive coding), avif (one codec each, with
its settings and command lines), curves (per-image sweeps and rate-matched curves, the
per-image documents the RD report reads).  Every codec measures on its decoded 8-bit RGB
pixels with pipeline.metrics; rates are real file sizes.
"""
