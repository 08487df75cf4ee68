"""Flags and error handling shared by the command-line scripts.

TensorFlow loads only once the flags are parsed (models.config is TensorFlow-free), so
`--help` and flag errors are instant and the log level below applies to TF's start-up noise.
"""

import os
import sys

from absl import app
from absl.flags import argparse_flags

from models.config import (DEFAULT_TILE, DEFAULTS, DOWNSAMPLING, ENTROPY_MODELS, ConfigError,
                           ModelConfig, SettingsError, layer_names)
from pipeline.locking import DirectoryLock

# TensorFlow prints CUDA/cuDNN registration noise at import; keep the console for our output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130


def _int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def _float_list(text):
    return [float(v) for v in text.split(",") if v.strip()]


def parser(description):
    return argparse_flags.ArgumentParser(
        description=description, formatter_class=argparse_flags.argparse.ArgumentDefaultsHelpFormatter)


def add_layer_flags(parser, mode, with_defaults=True):
    """The authors' per-layer flags (--num_filters_B, --lmbdaB, --lmbda1, ...) plus lists.

    with_defaults=False (evaluation) leaves them unset so the saved configuration rules.
    """
    defaults = DEFAULTS[mode]
    names = defaults["layer_names"]
    for name, filters in zip(names, defaults["filters"]):
        parser.add_argument(f"--num_filters_{name}", type=int,
                            default=filters if with_defaults else None,
                            help=f"Filters of layer {name}.")
    parser.add_argument(
        "--filters", type=_int_list, default=None,
        help="Comma-separated filters per layer, base first (e.g. 8,16 for a 2-layer model); "
             "overrides the --num_filters_* flags and sets the number of layers.")
    if with_defaults:
        for k, (name, lmbda) in enumerate(zip(names, defaults["lmbdas"])):
            flag = "lmbdaB" if k == 0 else f"lmbda{k}"
            parser.add_argument(f"--{flag}", type=float, default=lmbda,
                                help=f"Rate weight of layer {name} (larger = fewer bits).")
        parser.add_argument(
            "--lmbdas", type=_float_list, default=None,
            help="Comma-separated lambdas per layer, base first; goes with --filters.")
    parser.add_argument("--entropy_model", choices=list(ENTROPY_MODELS),
                        default="hyperprior" if with_defaults else None,
                        help="Entropy model of every layer.")


def requested_filters(args, mode):
    """Filters the user asked for: --filters, else the per-layer flags (None where unset)."""
    if args.filters:
        return args.filters
    filters = [getattr(args, f"num_filters_{name}") for name in DEFAULTS[mode]["layer_names"]]
    return None if any(f is None for f in filters) else filters


def config_from_flags(args, mode):
    """The ModelConfig the training flags describe."""
    default_names = DEFAULTS[mode]["layer_names"]
    filters = requested_filters(args, mode)
    lmbdas = args.lmbdas or [getattr(args, "lmbdaB" if k == 0 else f"lmbda{k}")
                             for k in range(len(default_names))]
    if len(lmbdas) != len(filters):
        raise ConfigError(f"--filters gives {len(filters)} layers but there are "
                             f"{len(lmbdas)} lambdas: give --lmbdas with one value per layer")
    if mode == "spatial" and len(filters) < 2:
        raise ConfigError("a spatial-scalable model needs at least 2 layers")
    return ModelConfig(mode=mode, layer_names=layer_names(len(filters)), filters=filters,
                       lmbdas=lmbdas, entropy_model=args.entropy_model)


def error_message(error):
    """An error's message for the command line: the settings it names become their flags
    (the flags are the settings' names: --num_layers, --checkpoint_dir, ...)."""
    if isinstance(error, SettingsError):
        return error.naming(lambda name: f"--{name}")
    return str(error)


def run(main, parse_args, errors, needs_tensorflow=lambda args: True):
    """Run an absl main; the given error types become one 'error: ...' line and exit 1.

    TensorFlow loads once the flags are parsed (so `--help` and flag errors are instant) but
    still inside absl's start-up, where it must (_load_tensorflow_before_absl_init_ends).
    needs_tensorflow(args) False skips it (commands that never run a model).
    """
    def parse(argv):
        args = parse_args(argv)
        if needs_tensorflow(args):
            _load_tensorflow_before_absl_init_ends()
        return args

    def guarded(args):
        try:
            return main(args)
        except errors as error:
            print(f"error: {error_message(error)}", file=sys.stderr, flush=True)
            if getattr(error, "exit_at_once", False):  # see training.WorkersFailed
                sys.stdout.flush()
                os._exit(EXIT_ERROR)
            sys.exit(EXIT_ERROR)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr, flush=True)
            sys.exit(EXIT_INTERRUPTED)
    app.run(guarded, flags_parser=parse)


def _load_tensorflow_before_absl_init_ends():
    """Import TensorFlow while absl's app.run is still parsing flags, never later in main.

    TensorFlow 2.14's import registers an absl init callback (tf.distribute's test
    combinations). Once app.run's start-up is over such callbacks run at once: in the middle
    of that import, before TensorFlow switches to eager execution. Every tf.function then
    sees a graph as its outer context, `tensor == 1` becomes an identity test (False), and
    tensorflow_compression's GDN takes its `alpha != 1` branch, dropping the absolute value:
    the shipped quality model coded a photo at 20.8 / 15.9 / 11.9 / 6.3 dB per layer instead
    of 28.4 / 29.7 / 30.8 / 31.3. models.layers.check_traced_functions_compare_tensors
    detects it; tests/test_cli.py::test_tensorflow_loaded_by_cli_run_keeps_traced_comparisons.
    """
    import tensorflow  # noqa: F401


def add_training_flags(parser):
    """Flags common to both train scripts."""
    parser.add_argument("--last_step", type=int, default=20000, help="Train up to this step.")
    parser.add_argument("--learning_rate", type=float, default=1e-4,
                        help="Adam learning rate (before any decay). On resume, the rate and "
                             "schedule of the rerun's flags apply.")
    parser.add_argument("--lr_schedule", choices=("constant", "decay"), default="constant",
                        help="constant: the paper's fixed rate. decay: multiply the rate by "
                             "--decay_factor from --decay_start_fraction of --last_step on "
                             "(a function of the global step, so a resume continues it).")
    parser.add_argument("--decay_start_fraction", type=float, default=0.85,
                        help="With --lr_schedule decay: where the decay starts, as a fraction "
                             "of --last_step.")
    parser.add_argument("--decay_factor", type=float, default=0.1,
                        help="With --lr_schedule decay: the rate's factor after the decay.")
    parser.add_argument("--init_from", default=None,
                        help="Start a new run from the weights of this trained model (a "
                             "pretrained folder or a training run of the same configuration) "
                             "instead of random ones; ignored when --checkpoint_dir already "
                             "has a checkpoint to resume. The optimizer starts afresh.")
    parser.add_argument("--init_step", type=int, default=0,
                        help="With --init_from: the step the new run counts from (e.g. the "
                             "steps the initial model was trained for), so --last_step and "
                             "the schedule continue that run's count.")
    parser.add_argument("--integer_hyper_synthesis", action="store_true",
                        help="Quantization in the loop: the hyperprior's scale indexes are "
                             "computed in training as the integer hyper-synthesis computes them "
                             "when coding (quantized weights and activations, straight-through "
                             "gradients), so the rate trained is the rate coded. For a short "
                             "fine-tune at the end of training (hyperprior only; checkpoints "
                             "are the same with or without it).")
    parser.add_argument("--preprocess_threads", type=int, default=16,
                        help="Parallel image decoding calls.")
    parser.add_argument("--checkpoint_secs", type=float, default=300,
                        help="Seconds between checkpoints (one is also saved at the end).")
    parser.add_argument("--log_every", type=int, default=100,
                        help="Steps between progress lines and TensorBoard summaries.")
    parser.add_argument("--seed", type=int, default=None, help="Seed of the data order and crops.")
    parser.add_argument("--verbose", "-V", action="store_true",
                        help="Progress every 10 steps and TensorFlow's own log messages.")
    parser.add_argument("--clean_orphans", action="store_true",
                        help="Delete the checkpoints in --checkpoint_dir that its 'checkpoint' "
                             "state file does not list (they are only reported otherwise).")
    parser.add_argument("--strategy", choices=["default", "mirrored", "multi_worker"],
                        default="default",
                        help="tf.distribute strategy: mirrored = all GPUs of this machine "
                             "(or --cpu_replicas logical CPUs without GPUs); multi_worker = "
                             "the machines of TF_CONFIG. --batchsize is the global batch.")
    parser.add_argument("--cpu_replicas", type=int, default=2,
                        help="Logical CPU devices for --strategy mirrored without GPUs.")
    parser.add_argument("--collective_timeout", type=float, default=None,
                        help="Seconds a cross-worker exchange may wait before the run stops "
                             "with an error (a dead worker); default: "
                             "pipeline.distribute.COLLECTIVE_TIMEOUT.")
    _add_break_lock_flag(parser, "--checkpoint_dir")


def add_downscale_flags(parser, sources=True):
    """--downscale (and --downscale_sources): random antialiased downscaling before the crop."""
    parser.add_argument("--downscale", type=_float_list, default=None,
                        help="LOW,HIGH: downscale each training image by a factor drawn in "
                             "[LOW, HIGH] on every visit, before the crop (e.g. 0.5,1.0); "
                             "softens JPEG blocking, ringing and sensor noise."
                             + ("" if sources else " Applies to every example (each level "
                                "of the pyramid by the same factor)."))
    if not sources:
        return
    parser.add_argument("--downscale_sources", choices=("jpeg", "all"), default="jpeg",
                        help="With --downscale: which images it applies to (by content, not "
                             "name: jpeg = JPEG files only).")


def _add_break_lock_flag(parser, flag):
    parser.add_argument("--break_lock", action="store_true",
                        help=f"Take over the lock of {flag} even if another host holds it "
                             "(only when that run is known to be gone).")


def check_training_flags(args):
    """Reject values no training can use; apply --verbose."""
    for name in ("batchsize", "patchsize", "last_step", "preprocess_threads", "log_every"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1 (got {getattr(args, name)})")
    if args.patchsize % DOWNSAMPLING:
        raise ConfigError(f"--patchsize {args.patchsize} must be a multiple of {DOWNSAMPLING} "
                          f"(the analysis transform downsamples by {DOWNSAMPLING})")
    downscale = getattr(args, "downscale", None)
    if downscale is not None and (len(downscale) != 2 or not 0 < downscale[0] <= downscale[1] <= 1):
        raise ConfigError(f"--downscale {','.join(map(str, downscale))} must be LOW,HIGH "
                          "with 0 < LOW <= HIGH <= 1 (e.g. 0.5,1.0)")
    if args.init_step < 0 or (args.init_step and not args.init_from):
        raise ConfigError("--init_step must be non-negative and goes with --init_from")
    if args.init_from is not None and not os.path.isdir(args.init_from):
        raise ConfigError(f"--init_from '{args.init_from}' is not a directory: give a "
                          "pretrained folder or a training run")
    if args.learning_rate <= 0 or args.checkpoint_secs < 0:
        raise ConfigError("--learning_rate must be positive and --checkpoint_secs non-negative")
    if not 0 <= args.decay_start_fraction <= 1 or args.decay_factor <= 0:
        raise ConfigError("--decay_start_fraction must be in [0, 1] and --decay_factor "
                          "positive")
    if args.integer_hyper_synthesis and args.entropy_model != "hyperprior":
        raise ConfigError(f"--integer_hyper_synthesis trains the hyperprior's scale indexes: "
                          f"the {args.entropy_model} entropy model has none (drop the flag)")
    if args.verbose:
        args.log_every = min(args.log_every, 10)
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        import tensorflow as tf
        tf.get_logger().setLevel("ERROR")
    # The strategy configures devices and the cluster: before any other TensorFlow work.
    from pipeline import distribute
    args.distribution = (None if args.strategy == "default" else
                         distribute.make_strategy(
                             args.strategy, args.cpu_replicas,
                             args.collective_timeout or distribute.COLLECTIVE_TIMEOUT))
    if args.distribution and args.batchsize % args.distribution.num_replicas_in_sync:
        raise ConfigError(f"--batchsize {args.batchsize} (the global batch) must be a "
                          f"multiple of the {args.distribution.num_replicas_in_sync} replicas")


def add_resample_flag(parser):
    """--resample: the filter that makes the half and quarter images (codec.image)."""
    from codec.image import DEFAULT_RESAMPLE, RESAMPLE_FILTERS
    parser.add_argument(
        "--resample", choices=list(RESAMPLE_FILTERS), default=DEFAULT_RESAMPLE,
        help="Filter that derives the half- and quarter-resolution images from the full one "
             "(Pillow, anti-aliased). Use the same filter for training data and evaluation.")


def add_eval_flags(parser, mode):
    """Flags common to both eval scripts (filters are optional: the saved config rules)."""
    parser.add_argument("--output_folder", default="output",
                        help="Where streams, reconstructions and results.json go (one "
                             "subfolder per image when several are given).")
    parser.add_argument("--checkpoint_dir", default=None,
                        help="A directory written by the matching train script, or a "
                             "pretrained folder; default: the model shipped in "
                             "pretrained/<mode>.")
    add_layer_flags(parser, mode, with_defaults=False)
    parser.add_argument("--decompress", action="store_true",
                        help="Only decode the streams in --output_folder (as a receiver "
                             "would: no input image needed) and write the rec PNGs.")
    parser.add_argument("--num_layers", type=int, default=None,
                        help="Decode only the first k layers (reads only their streams).")
    parser.add_argument("--last_layer_only", action="store_true",
                        help="With --decompress: write only the top decoded layer's PNG "
                             "(skips synthesizing the layers below it; faster).")
    _add_break_lock_flag(parser, "--output_folder")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE,
                        help="Run the analysis and synthesis transforms over tiles of about "
                             "this many pixels per side (with overlapping halos, cropped), so "
                             "that memory stays bounded for large photos; images no larger "
                             "than a tile are coded whole. 0: never tile. The streams do not "
                             "depend on it beyond float rounding.")


def load_codec(args, mode):
    """The trained model of --checkpoint_dir as a Codec, checked against explicit flags."""
    import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    from codec.streams import Codec
    from pipeline.checkpoints import load_trained_model
    from pipeline.pretrained import shipped_model_dir
    if args.checkpoint_dir is None:
        args.checkpoint_dir = shipped_model_dir(mode)
        if not os.path.isdir(args.checkpoint_dir):
            raise ConfigError(f"no {mode} model is shipped in {args.checkpoint_dir}: pass "
                              f"--checkpoint_dir (a directory train_{mode}.py wrote)")
    filters = requested_filters(args, mode)
    given = {name: getattr(args, f"num_filters_{name}")
             for name in DEFAULTS[mode]["layer_names"]}
    given = {name: value for name, value in given.items() if value is not None}
    if filters is None and given:
        # Only some per-layer flags (e.g. --num_filters_B): check those against the saved
        # filters instead of ignoring them.
        saved = ModelConfig.load(args.checkpoint_dir)
        filters = [given.pop(name, value) for name, value in zip(saved.layer_names, saved.filters)]
        filters += list(given.values())  # flags of layers the checkpoint does not have
    requested = dict(filters=filters, entropy_model=args.entropy_model)
    return Codec(load_trained_model(args.checkpoint_dir, mode, **requested), tile=args.tile)


# The smallest latent side (at training) of a layer whose rates were measured to stay
# calibrated on whole photos: 8 (patches of 128 in quality mode; the shipped quality model is
# within 0.4 % on 1024x768 photos). Spatial base layers trained on 4x4 and 5x5 latents were
# 41 % and 62 % off on whole Kodak images (README, "Shipped models").
CALIBRATED_LATENT_SIDE = 8


def small_patch_note(config, patchsize):
    """A note when `patchsize` gives the lowest layer latents smaller than
    CALIBRATED_LATENT_SIDE: every latent element then lies within the analysis transform's
    reach of a patch border, and on larger images the entropy model's rates, estimated and
    actual, can go astray. None otherwise."""
    levels_below = config.num_layers - 1 if config.mode == "spatial" else 0
    side = patchsize >> levels_below
    latent = side // DOWNSAMPLING
    if latent >= CALIBRATED_LATENT_SIDE:
        return None
    smallest = (DOWNSAMPLING * CALIBRATED_LATENT_SIDE) << levels_below
    return (f"note: at --patchsize {patchsize} layer {config.layer_names[0]} trains on "
            f"{side}x{side} images ({latent}x{latent} latents): its rates can go astray on "
            f"larger images; use --patchsize {smallest} or more for models meant for photos")


def train_from_flags(args, config, make_dataset):
    """Run the training driver with the common flags, holding --checkpoint_dir's lock (taken
    before anything is written, by the chief only; see pipeline/locking.py); a signal exits
    130 after saving. make_dataset(seed) -> the dataset of global batches."""
    from pipeline import distribute, training
    from pipeline.checkpoints import report_orphans
    from pipeline.schedule import StepSchedule
    schedule = StepSchedule(args.learning_rate, args.lr_schedule, args.last_step,
                            args.decay_start_fraction, args.decay_factor)
    chief = distribute.is_chief()
    note = small_patch_note(config, args.patchsize)
    if note and chief:
        print(note, flush=True)
    if args.distribution:  # reseeded from the step on resume (see pipeline/distribute.py)
        dataset = lambda step: make_dataset(None if args.seed is None else args.seed + step)
    else:
        dataset = make_dataset(args.seed)
    with DirectoryLock(args.checkpoint_dir, "trained", "--checkpoint_dir", args.break_lock,
                       chief=chief):
        if chief:
            report_orphans(args.checkpoint_dir, remove=args.clean_orphans)
        try:
            training.train(config, dataset, args.checkpoint_dir, args.last_step,
                           learning_rate=schedule, checkpoint_secs=args.checkpoint_secs,
                           log_every=args.log_every,
                           strategy=args.distribution, chief=chief,
                           integer_hyper_synthesis=args.integer_hyper_synthesis,
                           init_from=args.init_from, init_step=args.init_step)
        except training.Interrupted as stop:
            print(stop, flush=True)
            raise SystemExit(EXIT_INTERRUPTED)


def evaluate_from_flags(args, mode, level_reader=None):
    """Evaluate --input_image, or with --decompress only decode --output_folder's streams.

    level_reader(num_layers) -> (path -> images per layer); None: the image for every layer.
    """
    from pipeline import evaluation
    from codec.image import list_images
    if not args.decompress and not args.input_image:
        raise ConfigError("--input_image is required (or --decompress to decode existing "
                          "streams)")
    if args.last_layer_only and not args.decompress:
        raise ConfigError("--last_layer_only applies to --decompress only (evaluation "
                          "measures every layer): add --decompress or drop it")
    if args.tile < 0:
        raise ConfigError(f"--tile {args.tile} must be 0 (no tiling) or a tile side in pixels")
    inputs = None if args.decompress else list_images(args.input_image)
    with DirectoryLock(args.output_folder, "written", "--output_folder", args.break_lock):
        codec = load_codec(args, mode)
        if args.decompress:
            evaluation.decompress_folders(codec, args.output_folder, args.num_layers,
                                          args.last_layer_only)
            return
        make_levels = level_reader(codec.config.num_layers) if level_reader else None
        evaluation.evaluate(codec, inputs, args.output_folder, args.num_layers, make_levels)
