"""Where trained models live: config.json with TF checkpoints (a training run) or float16
weights (a shipped model, see pipeline/pretrained.py), and the coding tables, in one
directory.

The coding tables (`coding_tables.npz`: every entropy model's range-coding tables and
integer hyper-synthesis, see models/entropy/) are computed once from a checkpoint's float
weights and stored beside it, tagged with that checkpoint's weights digest and the tables'
version (models/entropy/coding.py). Encoders and
decoders that load the directory use the stored integers, so streams decode on any machine
that has the same file. A missing or stale file (other weights, another version) is rebuilt
on load and saved
when the directory is writable.
"""

import io
import os
import re
import shutil
import sys
import zipfile

import numpy as np
import tensorflow as tf

from codec.image import write_file_atomic
from models.config import ConfigError, ModelConfig, SettingsError
from models.entropy.coding import TABLES_VERSION
from models.factory import build_model

TABLES_NAME = "coding_tables.npz"
WEIGHTS_NAME = "weights.npz"  # a shipped model's float16 weights (pipeline/pretrained.py)
FLOAT16_MAX = float(np.finfo(np.float16).max)
_WEIGHTS_KEY = "weights_digest"  # not a valid table name (those hold a "/")


def _tag(weights_digest):
    """What a tables file is stored with: the weights digest and the tables' version."""
    return np.frombuffer(weights_digest + bytes([TABLES_VERSION]), np.uint8)


class CheckpointError(SettingsError, ValueError):
    """A checkpoint directory that cannot serve the request."""


class PretrainedError(ValueError):
    """A pretrained folder that cannot be written or read."""


def is_pretrained(directory):
    """Whether `directory` holds exported weights rather than a training checkpoint."""
    return os.path.exists(os.path.join(directory, WEIGHTS_NAME))


def _names(model):
    return [variable.name for variable in model.weights]


def save_weights(model, directory):
    """Write `model`'s config and weights (float16) into `directory`; returns the npz path."""
    arrays = {}
    for index, variable in enumerate(model.weights):
        values = variable.numpy()
        if np.max(np.abs(values), initial=0.0) > FLOAT16_MAX:
            raise PretrainedError(f"variable {variable.name} exceeds the float16 range")
        arrays[f"w{index:04d}"] = values.astype(np.float16)
    arrays["names"] = np.array(_names(model))
    model.config.save(directory)
    path = os.path.join(directory, WEIGHTS_NAME)
    temporary = path + ".tmp.npz"
    np.savez(temporary, **arrays)
    with open(temporary, "rb") as f:
        write_file_atomic(path, f.read())
    os.remove(temporary)
    return path


def _same_variable(saved, name):
    """Whether a saved variable name is `name` up to its outer name scopes, which depend on
    how Keras built the layers (models/layers.Sequential), not on the variable."""
    return saved == name or name.endswith("/" + saved) or saved.endswith("/" + name)


def load_weights(model, directory):
    """Assign the float16 weights of `directory` to `model` (built from its config.json)."""
    path = os.path.join(directory, WEIGHTS_NAME)
    try:
        with np.load(path) as arrays:
            names = list(arrays["names"])
            values = [arrays[f"w{index:04d}"] for index in range(len(names))]
    except (OSError, KeyError, ValueError) as error:
        raise PretrainedError(f"'{path}' is not a readable weights file ({error})") from None
    current = _names(model)
    if len(names) != len(current) or not all(map(_same_variable, names, current)) or any(
            v.shape != tuple(w.shape) for v, w in zip(values, model.weights)):
        raise PretrainedError(f"'{path}' does not match the model of its config.json")
    for variable, value in zip(model.weights, values):
        variable.assign(value.astype(np.float32))


def latest_checkpoint(directory):
    """Path prefix of the newest complete checkpoint in `directory`, or None."""
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


# What tf.train.CheckpointManager writes per checkpoint: ckpt-<step>.index and
# ckpt-<step>.data-<shard>-of-<shards>, through a ckpt-<step>_temp/ folder while saving.
_CHECKPOINT_FILE = re.compile(r"(ckpt-\d+)(\.index|\.data-\d+-of-\d+|_temp)")


class CheckpointManager(tf.train.CheckpointManager):
    """tf.train.CheckpointManager whose state file never lists a checkpoint that is gone.

    TensorFlow 2.14 lists the checkpoints it is about to delete, deletes them, then rewrites
    the list: a kill between the two leaves a state file naming missing files. Here the
    list is rewritten first, so such a kill leaves only unlisted files (orphans, reported
    at the next start and removed by --clean_orphans)."""

    def _sweep(self):
        # Relies on the pinned TF's private bookkeeping: an ordered dict of the kept
        # checkpoints, oldest first (keep_checkpoint_every_n_hours is not used here).
        surplus = max(0, len(self._maybe_delete) - (self._max_to_keep or len(self._maybe_delete)))
        doomed = [self._maybe_delete.popitem(last=False)[0] for _ in range(surplus)]
        if not doomed:
            return
        self._record_state()
        for prefix in doomed:
            for path in tf.io.gfile.glob(prefix + ".index") + tf.io.gfile.glob(
                    prefix + ".data-?????-of-?????"):
                tf.io.gfile.remove(path)


def orphan_checkpoints(directory):
    """Checkpoint files and unfinished saves in `directory` that its `checkpoint` state file
    does not list (left by another run writing there, or by a kill mid-save): sorted names.

    Only meaningful while no other process writes there (hold its lock)."""
    if not os.path.isdir(directory):
        return []
    state = tf.train.get_checkpoint_state(directory)
    listed = set()
    if state is not None:
        listed = {os.path.basename(path) for path in
                  [state.model_checkpoint_path, *state.all_model_checkpoint_paths]}
    orphans = []
    for name in os.listdir(directory):
        match = _CHECKPOINT_FILE.fullmatch(name)
        if match and (match.group(2) == "_temp" or match.group(1) not in listed):
            orphans.append(name)
    return sorted(orphans)


def report_orphans(directory, remove=False):
    """Print the orphan checkpoints of `directory`; delete them only when `remove` is True."""
    orphans = orphan_checkpoints(directory)
    if not orphans:
        return []
    names = ", ".join(sorted({_CHECKPOINT_FILE.fullmatch(n).group(1)
                              + ("_temp" if n.endswith("_temp") else "") for n in orphans},
                             key=lambda n: (int(re.search(r"\d+", n).group()), n)))
    state_file = os.path.join(directory, "checkpoint")
    if remove:
        for name in orphans:
            path = os.path.join(directory, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        print(f"removed checkpoints that '{state_file}' does not list: {names}", flush=True)
    else:
        print(f"note: '{state_file}' does not list these checkpoints (left by another run or "
              f"an interrupted save; never resumed from): {names}. They are kept: "
              "--clean_orphans removes them", flush=True)
    return orphans


def restore_trained_model(directory, mode, **requested):
    """Build the model saved in `directory` and restore its trained weights.

    mode: the mode the caller needs ("quality" or "spatial"); requested: fields given
    explicitly by the user (e.g. filters=[...]) that must agree with the saved configuration.
    Raises ConfigError or CheckpointError with a one-line explanation.
    """
    config = ModelConfig.load(directory)
    if config.mode != mode:
        raise ConfigError(f"'{directory}' holds a {config.mode}-scalable model, not a "
                          f"{mode}-scalable one: use eval_{config.mode}.py or another "
                          "checkpoint_dir", ["checkpoint_dir"])
    config.check_matches(directory, **requested)
    model = build_model(config)
    if is_pretrained(directory):
        try:
            load_weights(model, directory)
        except PretrainedError as error:
            raise CheckpointError(str(error)) from None
        return model
    path = latest_checkpoint(directory)
    if path is None:
        raise CheckpointError(f"'{directory}' has a config.json but no checkpoint: "
                              "training has not saved one yet")
    try:
        status = tf.train.Checkpoint(model=model).restore(path)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise CheckpointError(f"checkpoint '{path}' does not match its config.json "
                              f"({type(error).__name__}: {first_line[:200]})") from None
    return model


def initialize_weights(model, directory):
    """Assign the trained weights of `directory` (a pretrained folder or a training run) to
    `model`, whose configuration must be the saved one: the start of a fine-tune."""
    saved = ModelConfig.load(directory)
    if saved.to_json() != model.config.to_json():
        raise ConfigError(f"--init_from '{directory}' holds another model ({saved.mode}, "
                          f"filters {saved.filters}, lambdas {saved.lmbdas}): give the flags "
                          "of that model or another --init_from", ["init_from"])
    source = restore_trained_model(directory, saved.mode)
    for target, value in zip(model.weights, source.weights):
        target.assign(value)


def load_trained_model(directory, mode, **requested):
    """`restore_trained_model`, then prepared for coding with the directory's coding tables
    (built and stored there on first use)."""
    model = restore_trained_model(directory, mode, **requested)
    model.prepare_coding(load_coding_tables(directory, model))
    return model


def _read_tables(path, weights_digest):
    """The tables stored at `path` for these weights; None when missing, stale (other weights
    or version) or damaged."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            tables = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        print(f"note: {path} is unreadable ({error}); computing the coding tables again",
              file=sys.stderr, flush=True)
        return None
    if bytes(tables.pop(_WEIGHTS_KEY, np.zeros(0, np.uint8))) != bytes(_tag(weights_digest)):
        return None
    return tables


def save_coding_tables(directory, model, tables):
    """Write `tables` (of `model`'s weights) into `directory` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **tables,
             **{_WEIGHTS_KEY: _tag(model.weights_digest())})
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
