"""Evaluate a quality model as eval_quality.py does, but with tfc's float scale indexes.

    python -m bench.rd.float_indexes --checkpoint_dir DIR --input_image KODAK --output_folder OUT

For measurement only (the `portable` stage of bench.rd): the decoder-side scale indexes come
from the float hyper-synthesis, truncated, as tensorflow-compression computes them, instead of
the integer network. Same weights and stored tables, so the latents and the pixels are those of
eval_quality.py; only the probability tables selected, hence the rate, differ. Its streams are
NOT portable (they decode only where the float convolutions round alike); the results.json has
eval_quality.py's format.
"""
from __future__ import annotations

import argparse
import os


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint_dir", required=True)
    parser.add_argument("--input_image", required=True)
    parser.add_argument("--output_folder", required=True)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from bench.portable import set_index_path
    from codec.image import list_images
    from codec.streams import Codec
    from pipeline import evaluation
    from pipeline.checkpoints import load_coding_tables, restore_trained_model
    model = restore_trained_model(args.checkpoint_dir, "quality")
    set_index_path(model, load_coding_tables(args.checkpoint_dir, model), "float")
    evaluation.evaluate(Codec(model), list_images(args.input_image), args.output_folder)


if __name__ == "__main__":
    main()
