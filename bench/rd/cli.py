"""Flags, profiles and the stage loop of the RD protocol (python -m bench.rd)."""
from __future__ import annotations

import argparse
import os
import time

import bench.rd
from bench.rd.stages import REPO, Protocol, log
from models.config import ENTROPY_MODELS

STAGES = ("train_quality", "train_single", "tfrecords", "train_spatial", "export",
          "eval_quality", "eval_spatial", "anchors", "aggregate", "eval_lowres")
# How create_tfrecords.py makes the spatial examples: cut into patches of tfrecord_patchsize,
# or whole photos (--whole_images, tfrecord_patchsize being the smallest side kept).
TFRECORD_EXAMPLES = ("patches", "whole_images")
# Run only when named in --stages.
OPTIONAL_STAGES = ("portable",)
# The anchors stage's curves: JPEG 2000 (Pillow) and bench.modern's.
ANCHOR_CODECS = ("j2k", "hevc_intra", "jxl", "avif", "jxl_progressive", "hevc_simulcast")

PROFILES = {
    # CPU scale: 1000 steps; about an hour end to end on 2 idle cores (see bench/README.md).
    "cpu": dict(filters=[32, 40, 48, 64], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=64,
                batchsize=8, steps=1000, learning_rate=1e-3,
                spatial_filters=[32, 32, 32], spatial_lmbdas=[400.0, 300.0, 200.0],
                spatial_patchsize=128, spatial_batchsize=2, spatial_steps=1000,
                tfrecord_patchsize=256, tfrecord_examples="patches", lr_schedule="constant"),
    # The shipped models (pretrained/): sized for the 40 MB cap in float16 (see README,
    # "Shipped models") and trained on this 2-core CPU across sessions, with a decay at 85 %.
    # Spatial crops of 512 pixels (the paper's) give the base layer 128x128 images: 8x8
    # latents, as the quality model's 128 patches (smaller ones leave its rates astray on whole
    # images: README, "Shipped models"); batch 2 keeps the pixels per step of 8 x 256. The
    # crops come at random from whole photos of at least 512 pixels (79 of the 148). The shipped
    # spatial run stopped at 22000 steps (its rate lowered to 2e-4 after a NaN at step 3791 of
    # 5e-4, README "Shipped models"). The shipped quality and spatial models were then
    # continued to 50000 and 45000 steps with docs/training-recipe.md's recipe: evaluate them
    # with --models pretrained --steps 50000 --spatial_steps 45000 --single_steps 25000, so
    # that the tables state each side's steps.
    "ship": dict(filters=[48, 48, 64, 64], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=128,
                 batchsize=8, steps=25000, learning_rate=5e-4,
                 spatial_filters=[48, 48, 48], spatial_lmbdas=[400.0, 300.0, 200.0],
                 spatial_patchsize=512, spatial_batchsize=2, spatial_steps=22000,
                 tfrecord_patchsize=512, tfrecord_examples="whole_images",
                 lr_schedule="decay"),
    # The paper's sizes (ARCHITECTURE.md): GPU protocol, flags only.
    "gpu": dict(filters=[96, 120, 144, 196], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=256,
                batchsize=8, steps=20000, learning_rate=1e-4,
                spatial_filters=[96, 96, 96], spatial_lmbdas=[400.0, 300.0, 200.0],
                spatial_patchsize=512, spatial_batchsize=8, spatial_steps=20000,
                tfrecord_patchsize=512, tfrecord_examples="patches", lr_schedule="constant"),
    # Smoke test of the whole pipeline (minutes).
    "tiny": dict(filters=[8, 8, 8, 8], lmbdas=[250.0, 100.0, 50.0, 25.0], patchsize=64,
                 batchsize=2, steps=3, learning_rate=1e-4,
                 spatial_filters=[8, 8, 8], spatial_lmbdas=[400.0, 300.0, 200.0],
                 spatial_patchsize=64, spatial_batchsize=2, spatial_steps=3,
                 tfrecord_patchsize=128, tfrecord_examples="patches", lr_schedule="constant"),
}


def _ints(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _floats(text):
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.rd",
                                description=bench.rd.__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_dir", default=os.path.join(REPO, "data", "train"),
                   help="Training images: a folder with subfolders of photos (default) or, with "
                        "--no_recursive, a folder/glob given to the train scripts as is.")
    p.add_argument("--no_recursive", dest="train_recursive", action="store_false")
    p.add_argument("--kodak", default=os.path.join(REPO, "data", "kodak"),
                   help="Evaluation images.")
    p.add_argument("--out", default="bench/results", help="JSON, plots, BD table.")
    p.add_argument("--work_dir", default=None,
                   help="Checkpoints, streams, reconstructions (default runs/rd/<profile>).")
    p.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all), or "
                        f"the optional {','.join(OPTIONAL_STAGES)}")
    p.add_argument("--max_images", type=int, default=0, help="Only the first N images (smoke).")
    p.add_argument("--entropy_model", default="hyperprior", choices=list(ENTROPY_MODELS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint_secs", type=float, default=120)
    p.add_argument("--preprocess_threads", type=int, default=2)
    p.add_argument("--no_ms_ssim", action="store_true", help="anchors: PSNR only")
    p.add_argument("--anchor_codecs", default=",".join(ANCHOR_CODECS),
                   help="anchors stage: which anchors (j2k = the JPEG 2000 ones; the others "
                        "need their tools, docs/anchors.md, and are skipped without them)")
    p.add_argument("--models", choices=("trained", "pretrained"), default="trained",
                   help="Evaluate the checkpoints the train stages wrote under --work_dir, or "
                        "the shipped folders under pretrained/ (no training needed).")
    for key, value in PROFILES["cpu"].items():
        kind = _ints if isinstance(value, list) and isinstance(value[0], int) else \
            _floats if isinstance(value, list) else type(value)
        p.add_argument(f"--{key}", type=kind, default=None, help=f"overrides the profile's {key}")
    p.add_argument("--qat_dir", default=None,
                   help="portable stage: a quality checkpoint fine-tuned with "
                        "--integer_hyper_synthesis, coded with the exact scale indexes")
    p.add_argument("--float_dir", default=None,
                   help="portable stage: the float fine-tune from the same start and steps, "
                        "coded with tfc's float scale indexes")
    p.add_argument("--portable_pairs", default="quality,qat",
                   help="portable stage: which comparisons to run (quality: the model at equal "
                        "weights; qat: --qat_dir against --float_dir)")
    p.add_argument("--single_steps", type=int, default=None,
                   help="steps of each single-layer model (default: --steps)")
    args = p.parse_args(argv)
    for key, value in PROFILES[args.profile].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.single_steps is None:
        args.single_steps = args.steps
    if args.work_dir is None:
        args.work_dir = os.path.join(REPO, "runs", "rd", args.profile)
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    args.portable_pairs = [s.strip() for s in args.portable_pairs.split(",") if s.strip()]
    args.anchor_codecs = [s.strip() for s in args.anchor_codecs.split(",") if s.strip()]
    if set(args.anchor_codecs) - set(ANCHOR_CODECS):
        p.error(f"--anchor_codecs: choose from {','.join(ANCHOR_CODECS)}")
    unknown = sorted(set(args.stages) - set(STAGES + OPTIONAL_STAGES))
    if unknown:
        p.error(f"unknown stages {unknown}; choose from {STAGES + OPTIONAL_STAGES}")
    if args.tfrecord_examples not in TFRECORD_EXAMPLES:
        p.error(f"--tfrecord_examples must be one of {', '.join(TFRECORD_EXAMPLES)}")
    if bool(args.qat_dir) != bool(args.float_dir):
        p.error("--qat_dir and --float_dir go together (the two fine-tunes to compare)")
    if len(args.filters) != len(args.lmbdas):
        p.error("--filters and --lmbdas need one value per layer")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    needs_train = any(s.startswith("train") or s == "tfrecords" for s in args.stages)
    needs_kodak = any(s.startswith("eval") or s in ("anchors", "portable")
                      for s in args.stages)
    for needed, path, what in ((needs_train, args.train_dir, "training images"),
                               (needs_kodak, args.kodak, "evaluation images")):
        if needed and not os.path.exists(path):
            print(f"no {what} at {path}: skipping the RD protocol (nothing to do)")
            return 0
    proto = Protocol(args)
    start = time.monotonic()
    for stage in STAGES + OPTIONAL_STAGES:
        if stage in args.stages:
            log(f"stage {stage}")
            proto.timed(stage, getattr(proto, f"stage_{stage}"))
            log(f"stage {stage} done ({proto.times[stage]:.0f} s, total "
                f"{time.monotonic() - start:.0f} s)")
    if "eval_lowres" in args.stages:
        log("stage aggregate (again, with the low-resolution single-layer results)")
        proto.stage_aggregate()
    log(f"all done in {time.monotonic() - start:.0f} s")
    return 0
