"""Train a spatial-scalable model (layers B at 1/4, e1 at 1/2, e2 at full resolution).

Training data are TFRecords made by create_tfrecords.py. Example (toy size):
  python create_tfrecords.py --input_image photos/ --patchsize 256 --train_tfrecords data/train.tfrecords
  python train_spatial.py --train_tfrecords data/train.tfrecords --checkpoint_dir runs/spatial \
      --filters 16,16,16 --lmbdas 400,300,200 --patchsize 128 --batchsize 4 --last_step 200
"""

from pipeline import cli
from models.config import DOWNSAMPLING, ConfigError, SettingsError
from pipeline.locking import LockError


def parse_args(argv):
    parser = cli.parser(__doc__.splitlines()[0])
    parser.add_argument("--train_tfrecords", default="train.tfrecords",
                        help="TFRecord file, comma-separated files or a glob "
                             "(made by create_tfrecords.py).")
    parser.add_argument("--checkpoint_dir", default="train",
                        help="Where checkpoints, config.json and TensorBoard logs go.")
    cli.add_layer_flags(parser, "spatial")
    parser.add_argument("--batchsize", type=int, default=8, help="Examples per batch.")
    parser.add_argument("--patchsize", type=int, default=512,
                        help="Full-resolution side of the aligned random crops (the half and "
                             "quarter crops are 1/2 and 1/4 of it).")
    cli.add_training_flags(parser)
    cli.add_downscale_flags(parser, sources=False)
    return parser.parse_args(argv[1:])


def main(args):
    from pipeline import data
    config = cli.config_from_flags(args, "spatial")
    cli.check_training_flags(args)
    if config.num_layers > 3:  # the TFRecords hold 3 levels: full, half and quarter
        raise ConfigError(f"a spatial model trained from TFRecords has at most 3 layers "
                          f"(got {config.num_layers} filters): give 2 or 3 values to --filters")
    multiple = DOWNSAMPLING << (config.num_layers - 1)  # the lowest level is coded too
    if args.patchsize % multiple:
        raise ConfigError(f"--patchsize {args.patchsize} must be a multiple of {multiple} "
                          f"for a {config.num_layers}-layer spatial model")
    files = data.check_tfrecords(args.train_tfrecords, args.patchsize)

    def make_dataset(seed):
        dataset = data.pyramid_dataset(files, args.batchsize, args.patchsize, seed=seed,
                                       preprocess_threads=args.preprocess_threads,
                                       downscale=args.downscale)
        if config.num_layers < 3:  # (quarter, half, full) -> the top num_layers levels
            dataset = dataset.map(lambda *levels: levels[3 - config.num_layers:])
        return dataset
    cli.train_from_flags(args, config, make_dataset)


if __name__ == "__main__":
    cli.run(main, parse_args, (SettingsError, LockError))
