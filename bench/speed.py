"""Speed and memory of the quality-scalable codec against simulcast (issue 5).

    .venv/bin/python -m bench.speed [--image kodim01.png] [--runs 5] [--out bench/results/speed.json]

Weights as they come (untrained: timing does not need training).  For each entropy model
(hyperprior, factorized), on a 768x512 image (Kodak's kodim01 when present, else a seeded
synthetic image of that size):

- encode time (all 4 layers, through codec.streams.Codec, stream files written): streams
  only (a sender's work) and with every layer's reconstruction (what eval_*.py does);
- decode time for k = 1..4 (Codec.decode: read + check streams, decode, write PNGs): layer k's
  image only (the lower layers entropy-decoded but not synthesized) and layers 1..k's images;
- simulcast measured in the same run: four independent one-layer models (a one-element
  ModelConfig layer list) of 96, 120, 144, 196 filters.  Simulcast encode = the four encodes
  summed; decode of quality k = single-layer model k's stream alone; decode of qualities 1..k
  = single-layer decodes 1..k summed;
- median of --runs runs after --warmup runs (the first call traces the tf.functions), and the
  number of traces of the coding functions (equal to their number: nothing retraced);
- images/s and megapixels/s (encode, and decode of all layers);
- per layer: actual bits (payload strings) / estimated bits (likelihoods) and header bytes of
  the stream file (file size minus payload);
- a breakdown of where the time goes (per-layer analysis, prediction, entropy coding and
  synthesis as separate traced functions), to tell what is avoidable;
- training step time at batch 8, patch 256 (--train_steps timed steps after one traced step)
  and its ratio to the four single-layer steps summed (both entropy models by default);
- peak resident memory (Linux VmHWM) of a 4000x3000 encode + decode in a fresh subprocess,
  next to a subprocess that only builds the model (TensorFlow + weights) and one that codes
  with the single-layer model of the largest filters (hyperprior only unless
  --memory_entropy_models says otherwise); measured first, while this process is small.

Prints a table and writes JSON (--out).  Timings on a shared machine are noisy: the ratios
within one run are what count.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DEFAULT_FILTERS = (96, 120, 144, 196)
DEFAULT_LMBDAS = (250.0, 100.0, 50.0, 25.0)
DEFAULT_IMAGE = os.path.join(REPO, "data", "kodak", "kodim01.png")


# ----------------------------------------------------------------------------------------------
# Pure helpers (tested)


def photo(width, height, path=DEFAULT_IMAGE):
    """A real photo (uint8) upscaled to width x height (bicubic)."""
    import numpy as np
    from PIL import Image
    if not os.path.exists(path):
        from pipeline.sample_photos import data_folder
        path = os.path.join(data_folder(), "astronaut.png")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((width, height), Image.BICUBIC))


def median_time(fn, runs: int, warmup: int):
    """(median seconds over ``runs`` calls after ``warmup`` calls, all times, last result)."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def ratio(a, b):
    return None if not a or not b else float(a) / float(b)


def throughput(seconds, height, width):
    """(images/s, megapixels/s) for one image of height x width coded in ``seconds``."""
    if not seconds:
        return None, None
    return 1.0 / seconds, height * width / 1e6 / seconds


def header_bytes(file_size: int, strings) -> int:
    """Stream bytes that are not payload."""
    return int(file_size) - sum(len(s) for s in strings)


def synthetic_image(height, width, seed=0):
    """Smooth colour gradients plus texture noise (uint8), deterministic."""
    import numpy as np
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([128 + 100 * np.sin(x / 53.0 + c) * np.cos(y / 37.0 - c) for c in range(3)],
                    axis=-1)
    noise = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def format_table(report) -> str:
    lines = []
    for em, r in report["entropy_models"].items():
        lines.append(f"== {em} ({report['image']['width']}x{report['image']['height']}, "
                     f"filters {report['filters']}, median of {report['runs']} runs) ==")
        s, m, q = r["scalable"], r["simulcast"], r["ratio"]
        lines.append(f"{'':28}{'scalable':>10}{'simulcast':>11}{'ratio':>8}")
        rows = [("encode, streams only (s)", s["encode_s"], m["encode_s"], q["encode"]),
                ("encode + reconstructions", s["encode_reconstruct_s"],
                 m["encode_reconstruct_s"], q["encode_reconstruct"])]
        for k in range(len(s["decode_s"])):
            rows.append((f"decode layer {k + 1} only (s)", s["decode_s"][k], m["decode_s"][k],
                         q["decode"][k]))
        for k in range(1, len(s["decode_s"])):
            rows.append((f"decode layers 1..{k + 1} (s)", s["decode_all_s"][k],
                         m["decode_all_s"][k], q["decode_all"][k]))
        for label, a, b, c in rows:
            lines.append(f"{label:28}{a:>10.3f}{b:>11.3f}{c:>8.2f}")
        lines.append(f"  scalable encode {s['encode_images_per_s']:.2f} images/s = "
                     f"{s['encode_mp_per_s']:.2f} MP/s; decode (all layers) "
                     f"{s['decode_images_per_s']:.2f} images/s = {s['decode_mp_per_s']:.2f} MP/s; "
                     f"simulcast encode {m['encode_images_per_s']:.2f} images/s = "
                     f"{m['encode_mp_per_s']:.2f} MP/s")
        lines.append(f"  traced coding functions {s['traces']['functions']}, traces "
                     f"{s['traces']['traces']} (equal: no retracing across "
                     f"{report['warmup'] + report['runs']} calls each)")
        lines.append("  per layer: actual/estimated bits, header bytes")
        for layer in s["layers"]:
            lines.append(f"    {layer['name']:<4} payload {layer['payload_bytes']:>8} B  "
                         f"actual/est {layer['actual_over_estimated']:.4f}  "
                         f"header {layer['header_bytes']} B")
        if r.get("breakdown"):
            lines.append("  breakdown per layer (s): " + ", ".join(
                f"{k}={v:.3f}" for k, v in r["breakdown"].items()))
        if r.get("train"):
            t = r["train"]
            lines.append(f"  train step b{t['batch']} p{t['patch']}: scalable {t['scalable_step_s']:.2f} s, "
                         f"singles summed {t['singles_step_s_sum']:.2f} s, ratio "
                         f"{t['ratio']:.2f}")
        if r.get("memory"):
            lines.append(format_memory(r["memory"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Measurements (TensorFlow)


def build_codec(filters, lmbdas, entropy_model):
    from models.config import ModelConfig, layer_names
    from codec.streams import Codec
    from models.factory import build_model
    config = ModelConfig(mode="quality", layer_names=layer_names(len(filters)),
                         filters=list(filters),
                         lmbdas=list(lmbdas), entropy_model=entropy_model)
    model = build_model(config)
    model.prepare_coding()
    return Codec(model)


def measure_codec(codec, image, runs, warmup, folder):
    """Encode / decode timings and per-layer bits of one codec on one image.

    encode_s: streams only (a sender's work, no synthesis); encode_reconstruct_s: streams and
    every layer's reconstruction (what eval_*.py does). decode_s[k-1]: the image of layer k
    alone (lower layers decoded, not synthesized); decode_all_s[k-1]: the images of layers
    1..k. Both decodes read and check the stream files and write the PNGs.
    """
    from codec import bitstream
    n = codec.config.num_layers
    levels = [image] * n
    enc_s, enc_all, encoded = median_time(lambda: codec.encode(levels, folder, False),
                                          runs, warmup)
    enc_rec_s, _, _ = median_time(lambda: codec.encode(levels, folder), runs, warmup)
    dec, dec_all = [], []
    for k in range(1, n + 1):
        dec.append(median_time(lambda: codec.decode(folder, k, last_only=True), runs,
                               warmup)[0])
        dec_all.append(dec[-1] if k == 1 else
                       median_time(lambda: codec.decode(folder, k), runs, warmup)[0])
    layers = []
    for name, (size, est_bits, _) in zip(codec.config.layer_names, encoded):
        path = os.path.join(folder, bitstream.stream_filename(name))
        with open(path, "rb") as f:
            stream = bitstream.decode(f.read(), path)
        payload = stream.payload_size
        layers.append(dict(name=name, file_bytes=int(size), payload_bytes=int(payload),
                           header_bytes=header_bytes(size, stream.strings),
                           actual_bits=8 * payload, estimated_bits=float(est_bits),
                           actual_over_estimated=ratio(8 * payload, est_bits)))
    return dict(encode_s=enc_s, encode_runs=enc_all, encode_reconstruct_s=enc_rec_s,
                decode_s=dec, decode_all_s=dec_all, layers=layers,
                traces=codec.model.coding_trace_counts())


def compare(scal, singles):
    """Simulcast figures from the single-layer measurements, and the scalable/simulcast
    ratios. Simulcast encode = the single encodes summed; simulcast decode at quality k =
    single model k alone; decode of all qualities 1..k = singles 1..k summed."""
    sim = dict(encode_s=sum(s["encode_s"] for s in singles),
               encode_reconstruct_s=sum(s["encode_reconstruct_s"] for s in singles),
               decode_s=[s["decode_s"][0] for s in singles],
               decode_all_s=[sum(s["decode_s"][0] for s in singles[:k + 1])
                             for k in range(len(singles))],
               single_encode_s=[s["encode_s"] for s in singles],
               single_layers=[s["layers"][0] for s in singles])
    ratios = dict(encode=ratio(scal["encode_s"], sim["encode_s"]),
                  encode_reconstruct=ratio(scal["encode_reconstruct_s"],
                                           sim["encode_reconstruct_s"]),
                  decode=[ratio(a, b) for a, b in zip(scal["decode_s"], sim["decode_s"])],
                  decode_all=[ratio(a, b) for a, b in zip(scal["decode_all_s"],
                                                          sim["decode_all_s"])])
    return sim, ratios


def breakdown(codec, image, runs, warmup):
    """Time of each part of the coding path, per layer, on the image's shapes."""
    import tensorflow as tf
    from codec.image import pad_to_multiple
    from models.scalable import PAD_MULTIPLE
    model = codec.model
    x = tf.cast(pad_to_multiple(image, PAD_MULTIPLE), tf.float32)[None] / 255.0
    out, context = {}, None
    for k in range(model.config.num_layers):
        name = model.config.layer_names[k]
        analysis = tf.function(lambda v, k=k: model.analysis[k](v))
        t, _, latent = median_time(lambda: analysis(x), runs, warmup)
        out[f"analysis_{name}"] = t
        if k > 0:
            predict = tf.function(lambda c, k=k: model.predict_latent(k, c, tf.shape(latent)[1:3]))
            t, _, prediction = median_time(lambda: predict(context), runs, warmup)
            out[f"prediction_{name}"] = t
        else:
            prediction = tf.zeros_like(latent)
        ent = model.entropy[k]
        compress = tf.function(ent.compress)  # traced, as in the codec's per-layer functions
        decompress = tf.function(ent.decompress)
        residual = latent - prediction
        t, _, coded = median_time(lambda: compress(residual), runs, warmup)
        out[f"entropy_encode_{name}"] = t
        strings, shapes, residual_hat, _ = coded
        t, _, _ = median_time(lambda: decompress(strings, shapes), runs, warmup)
        out[f"entropy_decode_{name}"] = t
        context = model.extend_context(context, prediction + residual_hat, k)
        synthesis = tf.function(lambda c, k=k: model.synthesis[k](c))
        t, _, _ = median_time(lambda: synthesis(context), runs, warmup)
        out[f"synthesis_{name}"] = t
    return out


def train_step_time(filters, lmbdas, entropy_model, steps, batch=8, patch=256):
    """(median seconds of a training step after one traced step, trace+first step seconds)."""
    import tensorflow as tf
    from models.config import ModelConfig, layer_names
    from models.factory import build_model
    config = ModelConfig(mode="quality", layer_names=layer_names(len(filters)),
                         filters=list(filters),
                         lmbdas=list(lmbdas), entropy_model=entropy_model)
    model = build_model(config)
    optimizer = tf.keras.optimizers.Adam(1e-4)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    step = tf.function(model.train_step)
    data = tf.random.stateless_uniform((batch, patch, patch, 3), seed=(1, 2))
    start = time.perf_counter()
    float(step(data)["loss"])
    first = time.perf_counter() - start
    t, _, _ = median_time(lambda: float(step(data)["loss"]), steps, 0)
    return t, first


def peak_rss_mib():
    """This process's peak resident memory in MiB.

    Linux's VmHWM, which starts afresh at exec: ru_maxrss would carry over the parent's
    resident size at fork (this benchmark's own ~1-2 GiB) and hide the child's real peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def memory_child(kind, height, width, entropy_model, filters):
    """Runs in a subprocess: build the model (kind 'build'), or build it and encode + decode
    a height x width image: the scalable model ('code': streams and reconstructions of every
    layer, then all layers decoded, as eval_quality.py does) or the single-layer model of the
    largest filters ('single_code', simulcast's top quality). Prints JSON with this process's
    peak RSS."""
    if kind == "single_code":
        filters = [max(filters)]
    codec = build_codec(filters, DEFAULT_LMBDAS[:len(filters)], entropy_model)
    result = dict(kind=kind)
    if kind != "build":
        image = synthetic_image(height, width)
        with tempfile.TemporaryDirectory() as folder:
            start = time.perf_counter()
            codec.encode([image] * len(filters), folder)
            result["encode_s"] = time.perf_counter() - start
            start = time.perf_counter()
            codec.decode(folder, len(filters))
            result["decode_s"] = time.perf_counter() - start
    result["peak_rss_mib"] = peak_rss_mib()
    print("MEMORY " + json.dumps(result), flush=True)


MEMORY_KINDS = ("build", "code", "single_code")


def run_memory(height, width, entropy_model, filters):
    """Peak RSS of each MEMORY_KINDS child process (fresh processes, run one at a time)."""
    out = {"size": f"{width}x{height}"}
    for kind in MEMORY_KINDS:
        cmd = [sys.executable, "-m", "bench.speed", "--memory_child", kind,
               "--memory_size", f"{width}x{height}", "--entropy_models", entropy_model,
               "--filters", ",".join(map(str, filters))]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("MEMORY ")]
        if proc.returncode != 0 or not line:
            killed = " (killed: out of memory?)" if proc.returncode in (-9, 137) else ""
            out[f"{kind}_error"] = (f"exit {proc.returncode}{killed}: "
                                    + (proc.stderr or proc.stdout)[-1000:])
            continue
        data = json.loads(line[-1][len("MEMORY "):])
        out[f"{kind}_peak_mib"] = data["peak_rss_mib"]
        for key in ("encode_s", "decode_s"):
            if key in data:
                out[f"{kind}_{key}"] = data[key]
    out["ratio"] = ratio(out.get("code_peak_mib"), out.get("single_code_peak_mib"))
    return out


def format_memory(mm):
    if "code_peak_mib" not in mm:
        return f"  peak RSS {mm['size']}: not measured: {mm.get('code_error', '?')[:300]}"
    line = (f"  peak RSS {mm['size']}: encode+decode {mm['code_peak_mib']:.0f} MiB "
            f"(model only {mm.get('build_peak_mib', float('nan')):.0f} MiB), encode "
            f"{mm['code_encode_s']:.1f} s, decode {mm['code_decode_s']:.1f} s")
    if mm.get("single_code_peak_mib"):
        line += (f"; single-layer top model {mm['single_code_peak_mib']:.0f} MiB, ratio "
                 f"{mm['ratio']:.2f}")
    return line


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--image", default=DEFAULT_IMAGE,
                   help="768x512 test image (a synthetic one when absent)")
    p.add_argument("--size", default="768x512", help="WxH of the synthetic image")
    p.add_argument("--filters", default=",".join(map(str, DEFAULT_FILTERS)))
    p.add_argument("--entropy_models", default="hyperprior,factorized")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--train_steps", type=int, default=2,
                   help="timed training steps (0 = skip the training measurement)")
    p.add_argument("--train_entropy_models", default="hyperprior,factorized")
    p.add_argument("--train_patch", type=int, default=256)
    p.add_argument("--memory_size", default="4000x3000", help="WxH; 'none' skips memory")
    p.add_argument("--memory_entropy_models", default="hyperprior")
    p.add_argument("--no_breakdown", action="store_true")
    p.add_argument("--out", default=os.path.join(REPO, "bench", "results", "speed.json"))
    p.add_argument("--memory_child", choices=MEMORY_KINDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    filters = [int(v) for v in args.filters.split(",")]
    lmbdas = list(DEFAULT_LMBDAS[:len(filters)]) + [25.0] * max(0, len(filters) - 4)
    ems = [e for e in args.entropy_models.split(",") if e]
    if args.memory_child:
        w, h = (int(v) for v in args.memory_size.split("x"))
        memory_child(args.memory_child, h, w, ems[0], filters)
        return 0

    from bench import results_io
    from codec.image import read_image
    w, h = (int(v) for v in args.size.split("x"))
    if args.image and os.path.exists(args.image):
        image, source = read_image(args.image), results_io.shown_path(args.image, "--image")
    else:
        image, source = synthetic_image(h, w), f"synthetic {w}x{h}"
    height, width = image.shape[:2]
    import tensorflow as tf
    report = dict(image=dict(source=source, height=height, width=width), filters=filters,
                  runs=args.runs, warmup=args.warmup, entropy_models={},
                  threads=dict(intra=tf.config.threading.get_intra_op_parallelism_threads(),
                               inter=tf.config.threading.get_inter_op_parallelism_threads(),
                               cpus=os.cpu_count()),
                  load_average_start=os.getloadavg(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
    def save():
        if args.out:
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)

    # Memory first, while this process holds no model: the children's peaks are large and
    # the machine's memory is shared with this process.
    memory = {}
    if args.memory_size != "none":
        mw, mh = (int(v) for v in args.memory_size.split("x"))
        for em in ems:
            if em in args.memory_entropy_models.split(","):
                memory[em] = run_memory(mh, mw, em, filters)
                print(f"{em}:\n" + format_memory(memory[em]), flush=True)
    for em in ems:
        start = time.perf_counter()
        entry = {}
        with tempfile.TemporaryDirectory() as tmp:
            codec = build_codec(filters, lmbdas, em)
            scal = measure_codec(codec, image, args.runs, args.warmup, os.path.join(tmp, "s"))
            singles = []
            for k, (f, l) in enumerate(zip(filters, lmbdas)):
                c1 = build_codec([f], [l], em)
                singles.append(measure_codec(c1, image, args.runs, args.warmup,
                                             os.path.join(tmp, f"single{k}")))
            sim, ratios = compare(scal, singles)
            ips, mps = throughput(scal["encode_s"], height, width)
            scal.update(encode_images_per_s=ips, encode_mp_per_s=mps)
            ips, mps = throughput(scal["decode_all_s"][-1], height, width)
            scal.update(decode_images_per_s=ips, decode_mp_per_s=mps)
            ips, mps = throughput(sim["encode_s"], height, width)
            sim.update(encode_images_per_s=ips, encode_mp_per_s=mps)
            entry.update(scalable=scal, simulcast=sim, ratio=ratios)
            if not args.no_breakdown:
                entry["breakdown"] = breakdown(codec, image, args.runs, args.warmup)
        if args.train_steps and em in args.train_entropy_models.split(","):
            t_s, first_s = train_step_time(filters, lmbdas, em, args.train_steps,
                                           patch=args.train_patch)
            singles_t = [train_step_time([f], [l], em, args.train_steps,
                                         patch=args.train_patch) for f, l in zip(filters, lmbdas)]
            entry["train"] = dict(batch=8, patch=args.train_patch, steps=args.train_steps,
                                  scalable_step_s=t_s, scalable_first_step_s=first_s,
                                  singles_step_s=[t for t, _ in singles_t],
                                  singles_step_s_sum=sum(t for t, _ in singles_t),
                                  ratio=ratio(t_s, sum(t for t, _ in singles_t)))
        if em in memory:
            entry["memory"] = memory[em]
        entry["seconds"] = time.perf_counter() - start
        report["entropy_models"][em] = entry
        print(format_table(dict(report, entropy_models={em: entry})), flush=True)
        save()  # after each entropy model: a later failure keeps what was measured
    report["load_average_end"] = os.getloadavg()
    save()
    if args.out:
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
