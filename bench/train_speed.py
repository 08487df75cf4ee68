"""Training throughput of the quality-scalable model: each speed-up option against the old step.

    python -m bench.train_speed [--profile cpu] [--rounds 3] [--steps 5] [--xla]
        [--train_glob 'photos/*/*'] [--out bench/results/train_speed.json]

Builds the model of a bench.rd profile (filters, lambdas, patch and batch size; hyperprior)
once per variant, all from the same seed, and times `train_step` (traced, optimizer included):

- "irfft_float32": tfc's own kernel rebuild (irfft2d of the RDFT parameters), float32 convs:
  the step as it was before this bench;
- "matmul_float32": the kernel rebuilt with one matmul (layers.SignalConv2D, the default);
- with --xla, "matmul_float32_xla": the default step under tf.function(jit_compile=True).

The variants run in alternating rounds (--steps steps each, after two untimed steps) so that
the load of a shared machine hits them alike; per variant the median s/step over rounds and its
ratio to the old step. The input pipeline (pipeline.data.patch_dataset on --train_glob, the
train scripts' reader) is timed alone as s/batch, next to the step it has to feed. Prints a
table and writes JSON (--out). Timings are noisy: only the ratios within one run count.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import time

BASELINE = "irfft_float32"
# name -> (kernel rebuild, jit_compile)
VARIANTS = {
    "irfft_float32": ("irfft", False),
    "matmul_float32": ("matmul", False),
    "matmul_float32_xla": ("matmul", True),
}


def make_step(config, rebuild, xla, seed=0):
    """A traced train step of a fresh model built from `seed` with the given options."""
    import tensorflow as tf
    from models.factory import build_model
    from models.layers import set_kernel_rebuild
    tf.keras.utils.set_random_seed(seed)
    model = build_model(config)
    set_kernel_rebuild(model, rebuild)
    optimizer = tf.keras.optimizers.Adam(1e-4)
    model.compile(optimizer=optimizer)
    optimizer.build(model.trainable_variables)
    return tf.function(model.train_step, jit_compile=xla)


def time_steps(step, batch, steps):
    """Seconds per step over `steps` calls (each waits for its loss)."""
    start = time.perf_counter()
    for _ in range(steps):
        float(step(batch)["loss"])
    return (time.perf_counter() - start) / steps


def time_pipeline(files, patchsize, batchsize, batches, threads):
    """Seconds per batch of the training reader alone, after its first batch."""
    from pipeline import data
    iterator = iter(data.patch_dataset(files, patchsize, batchsize, threads, seed=0))
    next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    return (time.perf_counter() - start) / batches


def main(argv=None):
    from bench.rd.cli import PROFILES
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="Timed steps per variant and round.")
    p.add_argument("--variants", default="irfft_float32,matmul_float32",
                   help=f"Comma-separated, from {', '.join(VARIANTS)}.")
    p.add_argument("--xla", action="store_true", help="Add matmul_float32_xla.")
    p.add_argument("--train_glob", default=None,
                   help="Photos for the input-pipeline timing and the batch (a seeded random "
                        "batch when not given or none match).")
    p.add_argument("--preprocess_threads", type=int, default=16)
    p.add_argument("--out", default=os.path.join("bench", "results", "train_speed.json"))
    args = p.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    if args.xla and "matmul_float32_xla" not in names:
        names.append("matmul_float32_xla")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}")

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    from models.config import ModelConfig
    profile = PROFILES[args.profile]
    filters, patch, batchsize = profile["filters"], profile["patchsize"], profile["batchsize"]
    config = ModelConfig(mode="quality", layer_names=["B"] + [f"e{k}" for k in
                                                              range(1, len(filters))],
                         filters=list(filters), lmbdas=list(profile["lmbdas"]),
                         entropy_model="hyperprior")
    files = sorted(f for f in glob.glob(args.train_glob or "") if os.path.isfile(f))
    pipeline = None
    if files:
        from pipeline import data
        files = data.training_images(args.train_glob, patch)
        batch = next(iter(data.patch_dataset(files, patch, batchsize, 1, seed=0)))
        pipeline = time_pipeline(files, patch, batchsize, 10 * args.steps,
                                 args.preprocess_threads)
    else:
        batch = tf.random.stateless_uniform((batchsize, patch, patch, 3), seed=(1, 2))

    steps = {}
    for name in names:
        steps[name] = make_step(config, *VARIANTS[name])
        for _ in range(2):  # trace, then one warm step
            float(steps[name](batch)["loss"])
    times = {name: [] for name in names}
    for round_index in range(args.rounds):
        for name in names:
            times[name].append(time_steps(steps[name], batch, args.steps))
        print(f"round {round_index + 1}/{args.rounds}: " + "  ".join(
            f"{n} {times[n][-1]:.3f}" for n in names), flush=True)

    median = {n: statistics.median(t) for n, t in times.items()}
    base = median.get(BASELINE)
    print(f"\nprofile {args.profile}: filters {filters}, patch {patch}, batch {batchsize}; "
          f"median of {args.rounds} rounds x {args.steps} steps")
    print(f"{'variant':<22}{'s/step':>10}{'speed-up':>10}")
    for name in names:
        speedup = base / median[name] if base else None
        print(f"{name:<22}{median[name]:>10.3f}" + (f"{speedup:>9.2f}x" if speedup else ""))
    if pipeline is not None:
        print(f"input pipeline alone: {pipeline:.3f} s/batch ({len(files)} photos)")
    doc = dict(profile=args.profile, filters=list(filters), patchsize=patch,
               batchsize=batchsize, rounds=args.rounds, steps=args.steps,
               seconds_per_step={n: times[n] for n in names},
               median_seconds_per_step=median,
               speedup_vs_baseline={n: (base / median[n] if base else None) for n in names},
               baseline=BASELINE, pipeline_seconds_per_batch=pipeline,
               photos=len(files), cpu=_cpu_name())
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {args.out}")


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return None
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines()
                 if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in info.splitlines()
                  if line.startswith("flags")), [])
    return dict(name=name, amx_bf16="amx_bf16" in flags, avx512_bf16="avx512_bf16" in flags)


if __name__ == "__main__":
    main()
