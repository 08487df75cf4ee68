"""Rate-distortion protocol: train, evaluate on Kodak, aggregate into JSON + plots + BD tables.

One command (CPU scale, see bench/README.md for the exact command and the GPU flags):

    .venv/bin/python -m bench.rd --train_dir PHOTOS_DIR --kodak KODAK_DIR \
        --out bench/results --profile cpu

Stages (each one resumable; run them all, or a subset with --stages):

  train_quality    the quality-scalable model (hyperprior, 4 layers) with train_quality.py
  train_single     one single-layer model per layer of the quality model: same filters and
                   lambda as that layer, same data, steps, patch and batch (``--filters F
                   --lmbdas L``: a one-element layer list = Balle et al. 2018)
  tfrecords        create_tfrecords.py on the training images (spatial training data)
  train_spatial    the spatial-scalable model (3 layers) with train_spatial.py
  eval_quality     eval_quality.py on Kodak for the scalable and each single-layer model
  eval_spatial     eval_spatial.py on Kodak
  anchors          JPEG 2000 layered, matched per image to our layer rates; JPEG 2000
                   resolution levels and single-layer JPEG 2000 per resolution (PSNR only)
  aggregate        reads the results.json files only: CompressAI JSON per curve,
                   rd_quality.png, rd_spatial.png, bd_table.md, protocol.json
  eval_lowres      the single-layer models on the Lanczos-downsampled Kodak at the spatial
                   model's lower resolutions (1/4, 1/2), for the per-resolution comparison;
                   last because it is optional (budget): aggregate runs again after it
  portable         (only when named in --stages) the rate cost of portable coding: the quality
                   model coded with the exact integer scale indexes (eval_quality.py) against
                   tfc's float ones (bench.rd.float_indexes), same weights; with --qat_dir and
                   --float_dir, a --integer_hyper_synthesis fine-tune (exact) against a float
                   fine-tune (float). BD-rate per pair in <out>/portable_rd.json

Training stages call the train scripts, which resume from their checkpoints (a finished
stage leaves ``rd_done.json`` with its step and is skipped).  Each evaluation stage writes its
``results.json`` (eval scripts' format) and is skipped when it exists for the same checkpoint
step.  Checkpoints, streams and reconstructions go under --work_dir; the per-image
results.json files are copied into ``<out>/per_image/``.

All averages are means over images of per-image values (bpp from real stream sizes, RGB PSNR
and MS-SSIM from the same metric code as eval_*.py).  BD-rate / BD-PSNR use the PyPI package
``bjontegaard`` with Akima interpolation (bench.bd).

When the training or the Kodak folder is absent, the command says so and exits 0.

Modules: cli (flags, profiles, the stage loop), stages (the Protocol that runs the scripts),
points (eval results.json -> per-image RD points, simulcast), report (curves, JSON, plots,
bd_table.md).  Curve interpolation and BD-rate are bench.bd's.
"""
