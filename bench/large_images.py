"""Camera-size photos: peak memory and time of tiled coding, and MS-SSIM speed (issue 11).

    nice python -m bench.large_images [--sizes 1728x1152,4000x3000,6000x4000]
        [--out bench/results/large_images.json]

The quality-scalable model with the paper's filters (96, 120, 144, 196) and the hyperprior,
untrained (memory and time do not depend on training). The inputs are a real photo (Kodak's
kodim01 when present, else scikit-image's astronaut) upscaled to each size.

- per size, in a fresh subprocess: peak RSS (VmHWM) of what eval_quality.py does with one
  image (pipeline.evaluation.evaluate_image: encode with every layer's reconstruction, decode
  of all layers from the files, PSNR and MS-SSIM of each) with the default tile
  (models/tiling.py), and the encode and decode seconds per megapixel;
- at the first size (2 MP): the tiled/whole time ratio (encode with reconstructions, and
  decode), whole (tile 0) and tiled alternating in one process, median of --runs;
- MS-SSIM of the four layers of a 12 MP evaluation, and of one layer: pipeline/metrics.ms_ssim
  (compiled with Numba, pipeline/ms_ssim.py) against eager tf.image.ssim_multiscale (what
  metrics.py did at first), alternating, and the values of both and of a float64 run.

Writes JSON after each part (a later failure keeps what was measured).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from bench.results_io import shown_command
from bench.speed import DEFAULT_FILTERS, REPO, build_codec, median_time, peak_rss_mib, photo

DEFAULT_SIZES = "1728x1152,4000x3000,6000x4000"  # 2, 12 and 24 MP


def code_child(width, height, tile):
    """In a fresh process: what eval_quality.py does with one image (encode with
    reconstructions, decode every layer from the files, PSNR and MS-SSIM of every layer);
    one JSON line with the peak RSS, the times and the peak of every stage
    (bench/memory_stages.py)."""
    from bench.memory_stages import StageRecorder, instrument
    from pipeline.evaluation import evaluate_image
    codec = build_codec(DEFAULT_FILTERS, (250.0, 100.0, 50.0, 25.0), "hyperprior")
    codec.tile = tile
    image = photo(width, height)
    result = dict(size=f"{width}x{height}", megapixels=width * height / 1e6, tile=tile)
    setup_peak = peak_rss_mib()  # building the model and the photo
    recorder = StageRecorder()  # resets VmHWM per stage, keeping the maximum
    instrument(recorder, codec.model, eager=False)
    with tempfile.TemporaryDirectory() as folder, recorder.stage("evaluate_image"):
        start = time.perf_counter()
        layers, result["encode_s"], result["decode_s"] = evaluate_image(
            codec, "photo", [image] * len(DEFAULT_FILTERS), folder, len(DEFAULT_FILTERS))
        result["metrics_s"] = (time.perf_counter() - start - result["encode_s"]
                               - result["decode_s"])
    result["stream_bytes"] = [layer["bytes"] for layer in layers]
    result["psnr"] = [layer["psnr"] for layer in layers]
    result["peak_rss_mib"] = max([setup_peak, peak_rss_mib()]
                                 + [row["peak_mib"] for row in recorder.rows])
    result["stages"] = recorder.rows
    for key in ("encode", "decode"):
        result[f"{key}_s_per_mp"] = result[f"{key}_s"] / result["megapixels"]
    print("RESULT " + json.dumps(result), flush=True)


def run_child(width, height, tile):
    cmd = [sys.executable, "-m", "bench.large_images", "--child", f"{width}x{height}",
           "--tile", str(tile)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
        return dict(size=f"{width}x{height}", tile=tile,
                    error=f"exit {proc.returncode}{killed}: {(proc.stderr or proc.stdout)[-800:]}")
    return json.loads(lines[-1][len("RESULT "):])


def tiled_over_whole(width, height, tile, runs):
    """Encode (with reconstructions) and decode times, whole image vs tiled, alternating."""
    codec = build_codec(DEFAULT_FILTERS, (250.0, 100.0, 50.0, 25.0), "hyperprior")
    image = photo(width, height)
    levels = [image] * len(DEFAULT_FILTERS)
    times = {"whole": dict(encode=[], decode=[]), "tiled": dict(encode=[], decode=[])}
    with tempfile.TemporaryDirectory() as folder:
        for run in range(runs + 1):  # the first round traces: not counted
            for name, value in (("whole", 0), ("tiled", tile)):
                codec.tile = value
                encode_s, _, _ = median_time(lambda: codec.encode(levels, folder), 1, 0)
                decode_s, _, _ = median_time(lambda: codec.decode(folder), 1, 0)
                if run:
                    times[name]["encode"].append(encode_s)
                    times[name]["decode"].append(decode_s)
    import statistics
    out = dict(size=f"{width}x{height}", tile=tile, runs=runs, times=times)
    for part in ("encode", "decode"):
        out[f"{part}_ratio"] = (statistics.median(times["tiled"][part])
                                / statistics.median(times["whole"][part]))
    out["total_ratio"] = (
        statistics.median([e + d for e, d in zip(times["tiled"]["encode"], times["tiled"]["decode"])])
        / statistics.median([e + d for e, d in zip(times["whole"]["encode"], times["whole"]["decode"])]))
    return out


MS_SSIM_JPEG_QUALITIES = (10, 30, 50, 80)  # four decoded "layers", as eval measures them


def ms_ssim_speed(width, height, runs):
    """MS-SSIM of every layer of one evaluation, as eval does it, and of one layer alone:
    pipeline.metrics.ms_ssim against eager tf.image.ssim_multiscale (what metrics.py called
    before), alternating, on a width x height photo and four JPEG-compressed copies of it
    (wall seconds, and the process's CPU seconds); the values of both and of a float64 run
    of the definition."""
    import io
    import statistics
    import numpy as np
    import tensorflow as tf
    from PIL import Image
    from pipeline import metrics
    reference = photo(width, height)
    layers = []
    for quality in MS_SSIM_JPEG_QUALITIES:
        buffer = io.BytesIO()
        Image.fromarray(reference).save(buffer, "JPEG", quality=quality)
        layers.append(np.asarray(Image.open(buffer).convert("RGB")))

    def compiled(images):
        return [metrics.ms_ssim(reference, layer) for layer in images]

    def eager(images):
        return [float(tf.image.ssim_multiscale(tf.constant(reference, tf.float32),
                                               tf.constant(layer, tf.float32), 255.0,
                                               filter_size=metrics.MS_SSIM_FILTER_SIZE))
                for layer in images]
    functions = dict(compiled=compiled, eager=eager)
    times = {f"{name}{part}": [] for name in functions for part in ("", "_single")}
    values, first, cpu = {}, {}, {name: [] for name in times}
    for run in range(runs + 1):  # the first round traces and compiles: reported apart
        for name, function in functions.items():  # alternating: the same load for both
            for part, images in (("", layers), ("_single", layers[:1])):
                start, start_cpu = time.perf_counter(), time.process_time()
                result = function(images)
                seconds = time.perf_counter() - start
                if part == "":
                    values[name] = result
                if run:
                    times[name + part].append(seconds)
                    cpu[name + part].append(time.process_time() - start_cpu)
                else:
                    first[name + part] = seconds
    float64 = [metrics.ms_ssim(reference, layer, "float64") for layer in layers]
    median = {name: statistics.median(seconds) for name, seconds in times.items()}
    return dict(size=f"{width}x{height}", layers=len(layers), runs=runs, times=times,
                process_cpu_s=cpu, first_round_s=first,
                compiled_s=median["compiled"], eager_s=median["eager"],
                speedup=median["eager"] / median["compiled"],
                single_call=dict(compiled_s=median["compiled_single"],
                                 eager_s=median["eager_single"],
                                 speedup=median["eager_single"] / median["compiled_single"]),
                compiled_values=values["compiled"], eager_values=values["eager"],
                float64_values=float64,
                compiled_minus_float64=max(abs(a - b)
                                           for a, b in zip(values["compiled"], float64)),
                eager_minus_float64=max(abs(a - b) for a, b in zip(values["eager"], float64)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES, help="WxH,...; 'none': no memory runs")
    p.add_argument("--tile", type=int, default=None, help="default: models.tiling.DEFAULT_TILE")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ms_ssim_size", default="4000x3000", help="WxH; 'none' skips it")
    p.add_argument("--skip_ratio", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "large_images.json"))
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from models.tiling import DEFAULT_TILE
    tile = DEFAULT_TILE if args.tile is None else args.tile
    if args.child:
        code_child(*(int(v) for v in args.child.split("x")), tile)
        return 0
    sizes = ([] if args.sizes == "none"
             else [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")])
    report = dict(filters=list(DEFAULT_FILTERS), entropy_model="hyperprior", tile=tile,
                  command=shown_command("bench.large_images", sys.argv[1:]),
                  started=time.strftime("%Y-%m-%d %H:%M:%S"),
                  load_average_start=os.getloadavg(), memory=[])

    def save():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)

    for width, height in sizes:  # memory first, while this process is small
        result = run_child(width, height, tile)
        report["memory"].append(result)
        print(json.dumps(result), flush=True)
        save()
    peaks = [r.get("peak_rss_mib") for r in report["memory"][1:]]
    if len(peaks) == 2 and all(peaks):
        report["peak_growth_12_to_24_mp"] = peaks[1] / peaks[0]
    if sizes and not args.skip_ratio:
        report["tiled_over_whole"] = tiled_over_whole(*sizes[0], tile, args.runs)
        print(json.dumps(report["tiled_over_whole"]), flush=True)
        save()
    if args.ms_ssim_size != "none":
        report["ms_ssim"] = ms_ssim_speed(*(int(v) for v in args.ms_ssim_size.split("x")),
                                          args.runs)
        print(json.dumps(report["ms_ssim"]), flush=True)
    report["load_average_end"] = os.getloadavg()
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
