"""Classic-codec anchors on an image set (Kodak by default), averaged over images.

    .venv/bin/python -m bench.kodak_anchors [--images DIR_OR_GLOB] [--out DIR]
        [--codecs j2k_layered,j2k_single,j2k_resolution,jpeg,webp,hevc_intra,jxl,avif,
                  jxl_progressive,hevc_simulcast] [--no-ms-ssim] [--verify]

The bench.modern codecs (HEVC intra, JPEG XL, AVIF; JPEG XL progressive and HEVC simulcast at
the layered JPEG 2000 rates) need their tools (docs/anchors.md); without them they are skipped
with a message.

Averages are per-point means over images of bpp, PSNR and MS-SSIM (the usual Kodak protocol).
Writes one CompressAI-style results JSON per codec (bench.results_io) into --out, a plot
(rd_anchors.png) and a BD table against JPEG 2000 single-layer (bd_anchors.md).  When the image
folder does not exist it says so and exits with status 0 (nothing to do).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

J2K_BPPS = (0.25, 0.5, 0.75, 1.0)
JPEG_QUALITIES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
WEBP_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
DEFAULT_IMAGES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                              "data", "kodak")
# bench.modern's: their tools are checked first, and a codec without them is skipped
MODERN = ("hevc_intra", "jxl", "avif", "jxl_progressive", "hevc_simulcast")
CODECS = ("j2k_layered", "j2k_single", "j2k_resolution", "jpeg", "webp") + MODERN


def run(images: str, out: str | None, codecs, ms_ssim: bool = True, verify: bool = False,
        resolution_bpp: float = 1.0, log=print):
    from bench import anchors, bd, plot, results_io
    from codec import image as image_lib

    paths = image_lib.list_images(images)
    jobs = {
        "j2k_layered": ("JPEG2000-layered", "one JPEG 2000 codestream, 4 quality layers "
                        "(irreversible, mct=1, LRCP); rate of layer k = size of the codestream "
                        "truncated after layer k",
                        lambda im: anchors.jpeg2000_layered(im, J2K_BPPS, verify, ms_ssim), True),
        "j2k_single": ("JPEG2000", "one single-layer JPEG 2000 file per rate (irreversible, mct=1)",
                       lambda im: anchors.jpeg2000_single_sweep(im, J2K_BPPS, ms_ssim), False),
        "j2k_resolution": ("JPEG2000-resolutions", "one JPEG 2000 codestream (RLCP, "
                           f"{resolution_bpp} bpp) decoded at 1/4, 1/2, 1 resolution against "
                           "Lanczos-downsampled references; bpp over each level's pixels",
                           lambda im: anchors.jpeg2000_resolution_levels(
                               im, 3, resolution_bpp, verify, ms_ssim), True),
        "jpeg": ("JPEG", "libjpeg via Pillow, 4:2:0, optimized Huffman",
                 lambda im: anchors.jpeg_sweep(im, JPEG_QUALITIES, ms_ssim), False),
        "webp": ("WebP", "libwebp via Pillow, method 6",
                 lambda im: anchors.webp_sweep(im, WEBP_QUALITIES, ms_ssim), False),
    }
    from bench.modern import curves
    from bench.rd import field
    for stem in MODERN:
        if stem in curves.SWEEPS:
            module, params = curves.SWEEPS[stem]
            jobs[stem] = (module.NAME, field.STEMS[stem],
                          lambda im, m=module, p=params: curves.sweep(m, im, p, ms_ssim), False)
        elif stem == "jxl_progressive":
            jobs[stem] = (curves.MATCHED[stem][0], "one progressive JPEG XL file per image "
                          f"decoded from prefixes of {list(J2K_BPPS)} bpp",
                          lambda im: curves.jxl_progressive(im, J2K_BPPS, ms_ssim), True)
        else:
            jobs[stem] = (curves.MATCHED[stem][0], "independent HEVC intra streams nearest "
                          f"{list(J2K_BPPS)} bpp, rates summed",
                          lambda im: curves.simulcast(curves.hevc, curves.hevc.SEARCH_GRID, im,
                                                      J2K_BPPS, ms_ssim), True)
    docs = {}
    for codec in codecs:
        gone = curves.absent(codec) if codec in MODERN else []
        if gone:
            log(f"{codec}: skipped, {', '.join(gone)} not found here (docs/anchors.md)")
            continue
        name, description, fn, scalable = jobs[codec]
        start = time.perf_counter()
        per_image = [fn(image_lib.read_image(p)) for p in paths]
        seconds = time.perf_counter() - start
        if any(pts is None for pts in per_image):
            log(f"{name}: {sum(pts is None for pts in per_image)} images skipped (a prefix too "
                "short to render)")
            per_image = [pts for pts in per_image if pts is not None]
        if not per_image:
            continue
        avg = anchors.average_points(per_image)
        log(f"{name}: {len(paths)} images, {seconds:.1f} s")
        for p in avg:
            ms = "" if p["ms_ssim"] is None else f"  MS-SSIM {p['ms_ssim']:.4f}"
            log(f"  bpp {p['bpp']:.4f}  PSNR {p['psnr']:.2f} dB{ms}  bytes {p['bytes']:.0f}")
        extra = [k for k in ("bytes", "layer", "target_bpp", "quality", "reduce", "height",
                             "width", "param") if k in avg[0]]
        tool = dict(tool=curves.tool(codec)) if codec in MODERN else {}
        docs[codec] = results_io.to_results(
            name, avg, f"{description}; mean over {len(per_image)} images of "
            f"{results_io.shown_path(images, '--images')}",
            extra_point_keys=extra, scalable=scalable, seconds=round(seconds, 2), **tool)
    if out:
        for codec, doc in docs.items():
            results_io.write_results(os.path.join(out, f"{codec}.json"), doc)
        rd = {doc["name"]: doc for c, doc in docs.items() if c != "j2k_resolution"}
        if rd:
            plot.plot_rd(rd, os.path.join(out, "rd_anchors.png"),
                         f"Anchors, mean over {len(paths)} images")
        if "j2k_single" in docs and len(rd) > 1:
            rows = bd.bd_table("JPEG2000", rd)
            text = bd.format_markdown(rows, "JPEG2000 (single layer)")
            with open(os.path.join(out, "bd_anchors.md"), "w", encoding="utf-8") as f:
                f.write(text)
            log(text)
    return docs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", default=DEFAULT_IMAGES)
    parser.add_argument("--out", default=None, help="folder for results JSON/plot/BD table")
    parser.add_argument("--codecs", default="j2k_layered,j2k_single",
                        help=f"comma-separated subset of {','.join(CODECS)}")
    parser.add_argument("--no-ms-ssim", action="store_true", help="PSNR only (no TensorFlow)")
    parser.add_argument("--verify", action="store_true",
                        help="check truncated streams decode like forced layers/reduce")
    parser.add_argument("--resolution-bpp", type=float, default=1.0)
    args = parser.parse_args(argv)
    codecs = [c.strip() for c in args.codecs.split(",") if c.strip()]
    unknown = sorted(set(codecs) - set(CODECS))
    if unknown:
        parser.error(f"unknown codecs {unknown}; choose from {CODECS}")
    if not os.path.exists(args.images.split("*")[0].rstrip("/") or "/"):
        print(f"no images at {args.images}: nothing to do")
        return 0
    run(args.images, args.out, codecs, not args.no_ms_ssim, args.verify, args.resolution_bpp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
