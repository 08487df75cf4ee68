"""Where trained models live: config.json plus TF checkpoints (a training run) or plus
float16 weights (a shipped model, see pipeline/pretrained.py) in one directory."""

import os
import re
import shutil

import tensorflow as tf

from models.config import ConfigError, ModelConfig, SettingsError
from models.factory import build_model
from pipeline import pretrained


class CheckpointError(SettingsError, ValueError):
    """A checkpoint directory that cannot serve the request."""


def latest_checkpoint(directory):
    """Path prefix of the newest complete checkpoint in `directory`, or None."""
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


# What tf.train.CheckpointManager writes per checkpoint: ckpt-<step>.index and
# ckpt-<step>.data-<shard>-of-<shards>, through a ckpt-<step>_temp/ folder while saving.
_CHECKPOINT_FILE = re.compile(r"(ckpt-\d+)(\.index|\.data-\d+-of-\d+|_temp)")


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
    if pretrained.is_pretrained(directory):
        try:
            pretrained.load_weights(model, directory)
        except pretrained.PretrainedError as error:
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


def load_trained_model(directory, mode, **requested):
    """`restore_trained_model`, then prepared for coding."""
    model = restore_trained_model(directory, mode, **requested)
    model.prepare_coding()
    return model
