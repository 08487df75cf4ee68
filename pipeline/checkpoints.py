"""Where trained models live: config.json plus TF checkpoints in one directory."""

import os

import tensorflow as tf

from models.config import ConfigError, ModelConfig, SettingsError
from models.factory import build_model


class CheckpointError(SettingsError, ValueError):
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
                          "checkpoint_dir", ["checkpoint_dir"])
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
    model.prepare_coding()
    return model
