"""Cost of portable coding (issue 9): the exact scale-index path against the float one.

    python -m bench.portable [--kodak DIR] [--checkpoint_dir DIR] [--images 3] [--runs 3] \
        [--out bench/results/portable.json]

Two copies of one quality-scalable hyperprior model with the same weights and the same stored
coding tables: one computes the decoder-side scale indexes with the integer hyper-synthesis
(`exact_indexes=True`, what the codec uses), the other with the float hyper-synthesis as tfc
does (`exact_indexes=False`, not portable). On the first --images Kodak images
(--kodak; seeded synthetic 768x512 images when not given or empty):

- coding time (wall clock and CPU time), alternating exact and float (order swapped every run), median of --runs after
  one traced warm-up call: encode of the streams (Codec.encode without reconstructions, the
  sender's work) and decode of every layer (Codec.decode, only the top layer synthesized);
- bytes of every stream file on both paths: the rate cost of quantizing the hyper-synthesis
  after training, at equal weights (the symbols, hence the pixels, are the same on both paths:
  only the probability tables selected differ).

--checkpoint_dir: a trained quality hyperprior model (a train_quality.py directory or a
pretrained folder). Without it, an untrained model of the default configuration whose
hyperprior transforms are scaled up so that its scale indexes spread (timing only: its bytes
say nothing about a trained model's rate cost).
Timings on a shared machine are noisy: the ratios within one run are what count.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

PATHS = ("exact", "float")
# wall-clock and CPU (all threads of this process) seconds; CPU time is the steadier measure
# on a shared machine, where other processes stretch the wall clock.
TIMES = ("encode_s", "encode_cpu_s", "decode_s", "decode_cpu_s")


def _clocks():
    return time.perf_counter(), time.process_time()


def stress_hyperprior(model):
    """Scale an untrained model's hyperprior transforms so that its scale indexes spread over
    the table range (an untrained model's all clip to 0); the cross-configuration tests use it
    too."""
    import numpy as np
    rng = np.random.default_rng(0)
    biases = [entropy.hyper_synthesis.layers[-1].bias_parameter for entropy in model.entropy]
    # Distinct scales for every channel of every layer, so that the indexes spread even
    # where a latent is too small for the positions to differ.
    scales = rng.permutation(np.geomspace(5, 50, sum(int(b.shape[0]) for b in biases)))
    start = 0
    for entropy, bias in zip(model.entropy, biases):
        for layer in entropy.hyper_analysis.layers + entropy.hyper_synthesis.layers:
            layer.kernel_parameter.real.assign(layer.kernel_parameter.real * 3.0)
            layer.kernel_parameter.imag.assign(layer.kernel_parameter.imag * 3.0)
        bias.assign(scales[start:start + bias.shape[0]].astype(np.float32))
        start += bias.shape[0]


def set_index_path(model, tables, path):
    """Prepare `model`'s coding with `tables`, its scale indexes from the integer network
    (path "exact", what the codec uses) or from the float hyper-synthesis ("float", as tfc)."""
    for entropy in model.entropy:
        entropy.exact_indexes = path == "exact"
    model.prepare_coding(tables)


def build_codecs(checkpoint_dir):
    """{"exact": Codec, "float": Codec}: same weights, same tables; and a description."""
    from bench.results_io import shown_path
    from codec.streams import Codec
    from models.config import ModelConfig
    from models.factory import build_model
    if checkpoint_dir:
        from pipeline.checkpoints import load_coding_tables, restore_trained_model
        models = [restore_trained_model(checkpoint_dir, "quality") for _ in PATHS]
        tables = load_coding_tables(checkpoint_dir, models[0])
        source = f"trained: {shown_path(checkpoint_dir, '--checkpoint_dir')}"
    else:
        import tensorflow as tf
        tf.random.set_seed(0)
        config = ModelConfig.default("quality")
        models = [build_model(config) for _ in PATHS]
        stress_hyperprior(models[0])
        models[1].set_weights(models[0].get_weights())
        tables = models[0].coding_tables()
        source = "untrained, default configuration, hyperprior transforms scaled x3"
    if models[0].config.entropy_model != "hyperprior":
        raise SystemExit("error: --checkpoint_dir must hold a hyperprior model (the factorized "
                         "model has no scale indexes)")
    for path, model in zip(PATHS, models):
        set_index_path(model, tables, path)
    return dict(zip(PATHS, map(Codec, models))), source


def list_inputs(kodak, count):
    """(name, uint8 image) of the first `count` Kodak images, or synthetic ones."""
    from codec.image import read_image
    paths = sorted(glob.glob(os.path.join(kodak, "*.png")))[:count] if kodak else []
    if paths:
        return [(os.path.basename(p), read_image(p)) for p in paths]
    from bench.speed import synthetic_image
    return [(f"synthetic{seed}", synthetic_image(512, 768, seed)) for seed in range(count)]


def measure(codecs, name, image, runs, folder):
    """Median encode/decode seconds and stream bytes per path for one image."""
    num_layers = codecs["exact"].config.num_layers
    levels = [image] * num_layers
    folders = {path: os.path.join(folder, name, path) for path in PATHS}
    times = {path: {key: [] for key in TIMES} for path in PATHS}
    for run in range(runs + 1):  # run 0: the traced warm-up, not counted
        for path in (PATHS if run % 2 else PATHS[::-1]):
            start = _clocks()
            codecs[path].encode(levels, folders[path], reconstruct=False)
            encoded = _clocks()
            codecs[path].decode(folders[path], last_only=True)
            decoded = _clocks()
            if run:
                for clock, (a, b, c) in enumerate(zip(start, encoded, decoded)):
                    times[path][TIMES[clock]].append(b - a)
                    times[path][TIMES[clock + 2]].append(c - b)
    result = {"image": name, "size": list(image.shape[:2])}
    for path in PATHS:
        sizes = [os.path.getsize(p) for p in
                 sorted(glob.glob(os.path.join(folders[path], "stream_*.tfci")))]
        result[path] = {key: statistics.median(values) for key, values in times[path].items()}
        result[path]["stream_bytes"] = sizes
    for key in TIMES:
        result[f"{key[:-2]}_ratio"] = result["exact"][key] / result["float"][key]
    result["bytes_ratio"] = sum(result["exact"]["stream_bytes"]) / sum(
        result["float"]["stream_bytes"])
    return result


def summarize(results):
    """Ratios over all images: total exact time (bytes) / total float time (bytes)."""
    def total(path, key):
        return sum(r[path][key] if key != "stream_bytes" else sum(r[path][key])
                   for r in results)
    return {f"{key}_ratio": total("exact", key) / total("float", key)
            for key in TIMES + ("stream_bytes",)}


def main(argv=None):
    from bench.results_io import shown_command
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", default=None)
    parser.add_argument("--kodak", default=None, help="Folder of Kodak PNGs.")
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=os.path.join("bench", "results", "portable.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    codecs, source = build_codecs(args.checkpoint_dir)
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for name, image in list_inputs(args.kodak, args.images):
            result = measure(codecs, name, image, args.runs, folder)
            results.append(result)
            times = ", ".join(
                f"{key[:-2]} {result[key[:-2] + '_ratio']:.3f} "
                f"({result['exact'][key]:.3f}/{result['float'][key]:.3f} s)" for key in TIMES)
            print(f"{name}: exact/float: {times}, bytes {result['bytes_ratio']:.4f} "
                  f"({sum(result['exact']['stream_bytes'])}/"
                  f"{sum(result['float']['stream_bytes'])})", flush=True)
    summary = summarize(results)
    print("all images: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
    doc = {"model": source, "layers": codecs["exact"].config.filters, "runs": args.runs,
           "summary": summary, "images": results,
           "command": shown_command("bench.portable", argv or sys.argv[1:])}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
