"""Where trained models live: config.json, TF checkpoints and the coding tables in one
directory.

The coding tables (`coding_tables.npz`: every entropy model's range-coding tables and
integer hyper-synthesis, see models/entropy/) are computed once from a checkpoint's float
weights and stored beside it, tagged with that checkpoint's weights digest. Encoders and
decoders that load the directory use the stored integers, so streams decode on any machine
that has the same file. A missing or stale file (other weights) is rebuilt on load and saved
when the directory is writable.
"""

import io
import os
import sys
import zipfile

import numpy as np
import tensorflow as tf

from codec.image import write_file_atomic
from models.config import ConfigError, ModelConfig
from models.factory import build_model

TABLES_NAME = "coding_tables.npz"
_WEIGHTS_KEY = "weights_digest"  # not a valid table name (those hold a "/")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot serve the request."""


def latest_checkpoint(directory):
    """Path prefix of the newest complete checkpoint in `directory`, or None."""
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


def load_trained_model(directory, mode, **requested):
    """Build the model saved in `directory`, restore its weights and prepare it for coding.

    mode: the mode the caller needs ("quality" or "spatial"); requested: fields given
    explicitly by the user (e.g. filters=[...]) that must agree with the saved configuration.
    Raises ConfigError or CheckpointError with a one-line explanation.
    """
    config = ModelConfig.load(directory)
    if config.mode != mode:
        raise ConfigError(f"'{directory}' holds a {config.mode}-scalable model, not a "
                          f"{mode}-scalable one: use eval_{config.mode}.py or another "
                          "--checkpoint_dir")
    config.check_matches(directory, **requested)
    path = latest_checkpoint(directory)
    if path is None:
        raise CheckpointError(f"'{directory}' has a config.json but no checkpoint: "
                              "training has not saved one yet")
    model = build_model(config)
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"checkpoint '{path}' does not match its config.json "
                              f"({type(error).__name__}: {first_line[:200]})") from None
    model.prepare_coding(load_coding_tables(directory, model))
    return model


def _read_tables(path, weights_digest):
    """The tables stored at `path` for these weights; None when missing, stale or damaged."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            tables = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        print(f"note: {path} is unreadable ({error}); computing the coding tables again",
              file=sys.stderr, flush=True)
        return None
    if bytes(tables.pop(_WEIGHTS_KEY, np.zeros(0, np.uint8))) != weights_digest:
        return None
    return tables


def save_coding_tables(directory, model, tables):
    """Write `tables` (of `model`'s weights) into `directory` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **tables,
             **{_WEIGHTS_KEY: np.frombuffer(model.weights_digest(), np.uint8)})
    write_file_atomic(os.path.join(directory, TABLES_NAME), buffer.getvalue())


def load_coding_tables(directory, model):
    """The coding tables of `model`'s (restored) weights, from `directory/coding_tables.npz`;
    computed from the weights and saved there when missing or stale (kept in memory, with a
    note, when the directory is read-only)."""
    path = os.path.join(directory, TABLES_NAME)
    tables = _read_tables(path, model.weights_digest())
    if tables is None:
        tables = model.coding_tables()
        try:
            save_coding_tables(directory, model, tables)
        except OSError as error:
            print(f"note: cannot write {path} ({error.strerror or error}); the coding tables "
                  "are used from memory (streams decode only where the same tables are "
                  "computed: copy a coding_tables.npz made beside this checkpoint)",
                  file=sys.stderr, flush=True)
    return tables
