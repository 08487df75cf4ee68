"""The first image of a fresh process against the steady state (issue 23).

    python -m bench.first_image --image KODAK/kodim01.png [--modes quality,spatial] [--runs 3]
        [--baseline DIR] [--out bench/results/first_image.json]

For each mode, with its shipped model: one fresh process compresses the image to .lsic bytes
(all layers: a sender's work, pipeline.api) 1 + --runs times, another decompresses them (top
layer only: a receiver's work) 1 + --runs times. Each reports its start-up (imports, model
load), its first call and the median of the later ones; overhead = first - steady, measured
in the same process, in wall and in process CPU seconds (the steadier figure on a loaded
machine). Both go through pipeline.api.ScalableCodec, which a --baseline tree (e.g. a `git
archive` of main) has too: its processes run the same measurement on its code, one after the
other with ours. Then the whole-process wall time of `lsic.py compress` and `lsic.py
decompress`, and Pillow's JPEG 2000 on the same image for scale.
Prints a table and writes JSON (--out).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "bench", "results", "first_image.json")
TARGET_OVERHEAD = 3.0  # seconds: the bound on first - steady


def _child(kind, mode, image_path, folder, runs):
    """In a fresh process (run from the tree measured): JSON of start-up, first and steady."""
    started = time.monotonic()
    from codec.image import read_image
    from pipeline.api import ScalableCodec
    imported = time.monotonic()
    codec = ScalableCodec.load(os.path.join("pretrained", mode))
    loaded = time.monotonic()
    process_cpu_at_load = time.process_time()  # imports and model load, CPU seconds
    image = read_image(image_path)
    path = os.path.join(folder, f"{mode}.lsic")
    if kind == "compress":
        def call():
            with open(path, "wb") as f:
                f.write(codec.compress(image))
    else:
        with open(path, "rb") as f:
            data = f.read()
        call = lambda: codec.decompress(data, top_only=True)  # noqa: E731
    times, cpu = [], []
    for _ in range(1 + runs):
        start, start_cpu = time.monotonic(), time.process_time()
        call()
        times.append(time.monotonic() - start)
        cpu.append(time.process_time() - start_cpu)
    steady, steady_cpu = statistics.median(times[1:]), statistics.median(cpu[1:])
    print(json.dumps(dict(kind=kind, mode=mode, imports=imported - started,
                          load=loaded - imported, first=times[0], steady=steady,
                          later=times[1:], overhead=times[0] - steady,
                          ratio=times[0] / steady, first_cpu=cpu[0], steady_cpu=steady_cpu,
                          overhead_cpu=cpu[0] - steady_cpu,
                          load_cpu=process_cpu_at_load)), flush=True)


def _spawn(tree, *args):
    """Run this module's child in `tree` (its code, its pretrained/); the child's JSON."""
    env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args],
                            cwd=tree, env=env, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"child {args} in {tree} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _wall(*args):
    start = time.monotonic()
    result = subprocess.run([sys.executable, os.path.join(REPO, "lsic.py"), *args], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"lsic.py {' '.join(args)} failed:\n{result.stderr[-2000:]}")
    return time.monotonic() - start


def _jpeg2000(image_path, runs):
    import io
    from PIL import Image
    image = Image.open(image_path).convert("RGB")
    encode, decode = [], []
    for _ in range(runs):
        start = time.monotonic()
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[24])
        encode.append(time.monotonic() - start)
        start = time.monotonic()
        Image.open(io.BytesIO(buffer.getvalue())).load()
        decode.append(time.monotonic() - start)
    return dict(encode=statistics.median(encode), decode=statistics.median(decode))


def measure(image_path, modes, runs, baseline=None):
    trees = {"ours": REPO} | ({"baseline": os.path.abspath(baseline)} if baseline else {})
    rows = []
    for mode in modes:
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory() as folder:
                for kind in ("compress", "decompress"):
                    row = _spawn(tree, kind, mode, image_path, folder, str(runs))
                    rows.append(dict(row, tree=name))
    walls = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode in modes:
            path = os.path.join(folder, f"{mode}.lsic")
            walls[mode] = dict(
                compress=_wall("compress", image_path, path, "--model", mode),
                decompress=_wall("decompress", path, os.path.join(folder, f"{mode}.png")),
                info=_wall("info", path))
    return dict(image=os.path.basename(image_path), runs=runs, target_overhead=TARGET_OVERHEAD, rows=rows,
                lsic_wall=walls, jpeg2000_pillow=_jpeg2000(image_path, 3),
                load_average=os.getloadavg())


def report(results):
    lines = ["wall seconds (imports, load, first call, steady call, first - steady), then the "
             "same calls in process CPU seconds",
             f"{'tree':<9}{'mode':<9}{'call':<11}{'imports':>8}{'load':>7}{'first':>8}"
             f"{'steady':>8}{'overhead':>9} |{'cpu:start':>10}{'first':>7}{'steady':>7}"
             f"{'overhead':>9}"]
    for r in results["rows"]:
        lines.append(f"{r['tree']:<9}{r['mode']:<9}{r['kind']:<11}{r['imports']:>8.2f}"
                     f"{r['load']:>7.2f}{r['first']:>8.2f}{r['steady']:>8.2f}"
                     f"{r['overhead']:>9.2f} |{r['load_cpu']:>10.2f}{r['first_cpu']:>7.2f}"
                     f"{r['steady_cpu']:>7.2f}{r['overhead_cpu']:>9.2f}")
    for mode, wall in results["lsic_wall"].items():
        lines.append(f"lsic.py {mode}: whole process compress {wall['compress']:.2f} s, "
                     f"decompress {wall['decompress']:.2f} s, info {wall['info']:.2f} s")
    j2k = results["jpeg2000_pillow"]
    lines.append(f"JPEG 2000 (Pillow): encode {j2k['encode']:.3f} s, decode {j2k['decode']:.3f} s;"
                 f" load average {results['load_average'][0]:.1f}")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, mode, image_path, folder, runs = argv[1:]
        return _child(kind, mode, image_path, folder, int(runs))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", required=True,
                        help="The photo to code (e.g. kodim01.png of Kodak).")
    parser.add_argument("--modes", default="quality,spatial")
    parser.add_argument("--runs", type=int, default=3, help="Timed calls after the first.")
    parser.add_argument("--baseline", default=None,
                        help="Another tree (e.g. a git archive of main) to measure alike.")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if not os.path.exists(args.image):
        print(f"nothing to do: no image at {args.image}")
        return 0
    results = measure(args.image, args.modes.split(","), args.runs, args.baseline)
    print(report(results))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
