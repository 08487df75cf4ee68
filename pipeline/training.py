"""The training driver of both train scripts.

Checkpoints (model, optimizer, step and data-iterator position) go to the checkpoint
directory every `checkpoint_secs` and at the end; a rerun resumes from the newest one.
SIGINT/SIGTERM save a checkpoint before exiting; a non-finite loss stops training without
overwriting the last good checkpoint. The first batch is read before anything is written, so
unreadable data fail with a TrainingError and no checkpoint directory is created.
TensorBoard scalars go to `<checkpoint_dir>/train`.
"""

import contextlib
import math
import os
import re
import signal
import time

import tensorflow as tf

from pipeline.checkpoints import CheckpointManager, initialize_weights, latest_checkpoint
from pipeline.metrics import psnr_from_mse
from pipeline.schedule import StepSchedule
from models.config import CONFIG_NAME, ConfigError, ModelConfig, SettingsError
from models.factory import build_model
from pipeline import distribute

MAX_CHECKPOINTS = 3


class TrainingError(SettingsError, RuntimeError):
    """Training cannot go on (the message says why and what to do)."""


class WorkersFailed(TrainingError):
    """A step failed across the workers of a tf.distribute cluster (one died or is
    unreachable). TensorFlow's teardown of such a cluster can block for minutes (dataset
    iterator threads and the coordination service wait for the lost peer), so the command
    line exits at once after reporting it."""

    exit_at_once = True
    # What a lost peer raises in a collective or in a distributed iterator.
    CAUSES = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
              tf.errors.DeadlineExceededError)

    def __init__(self, step, error, manager):
        super().__init__(f"training step {step} failed across the workers "
                         f"({_first_line(error)}): a worker died or is unreachable; restart "
                         "all workers to resume from the last checkpoint "
                         f"({manager.latest_checkpoint or 'none'})")


class Interrupted(Exception):
    """Training was stopped by a signal after a checkpoint was saved."""

    def __init__(self, signal_number, step):
        super().__init__(f"stopped by {signal.Signals(signal_number).name} at step {step}; "
                         "checkpoint saved: rerun the same command to resume")
        self.signal_number = signal_number


def prepare_checkpoint_dir(directory, config):
    """Save `config` into a new directory, or check it against the one already saved there."""
    check_checkpoint_dir(directory, config)
    if not os.path.exists(os.path.join(directory, CONFIG_NAME)):
        config.save(directory)


def check_checkpoint_dir(directory, config):
    """ConfigError unless `directory` is new or holds `config`'s model; writes nothing."""
    if os.path.exists(os.path.join(directory, CONFIG_NAME)):
        saved = ModelConfig.load(directory)
        if saved != config:
            differences = [f"{name}: saved {getattr(saved, name)}, asked {getattr(config, name)}"
                           for name in vars(config) if getattr(saved, name) != getattr(config, name)]
            raise ConfigError(f"'{directory}' already holds a different model "
                              f"({'; '.join(differences)}): use a new checkpoint_dir or the "
                              "settings it was trained with", ["checkpoint_dir"])
    elif latest_checkpoint(directory):
        raise ConfigError(f"'{directory}' holds checkpoints but no {CONFIG_NAME}: "
                          "use a new checkpoint_dir", ["checkpoint_dir"])


class _SignalFlag:
    """Records SIGINT/SIGTERM so the loop can save and exit between two steps."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.received = None
        self.previous = {}

    def __enter__(self):
        for number in self.SIGNALS:
            self.previous[number] = signal.signal(number, self._handle)
        return self

    def _handle(self, number, frame):
        if self.received is not None:  # a second Ctrl-C: give up at once
            signal.signal(number, self.previous[number])
            raise KeyboardInterrupt
        self.received = number
        print(f"\n{signal.Signals(number).name} received: saving a checkpoint after this "
              "step (press again to abort without saving)", flush=True)

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def _first_line(error):
    """An error's first line of message, without TensorFlow's {{node ...}} / [Op:...]
    decorations and without the "Graph execution error:" header and its traceback of the
    node (indented lines) that a failure inside a tf.function carries."""
    text = (getattr(error, "message", None) or str(error)).strip()
    text = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", text)
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line[0].isspace()
             and not line.startswith(("Graph execution error:", "Detected at node",
                                      "The error could be from a previous operation"))]
    return lines[0][:300] if lines else type(error).__name__


def _next_batch(iterator, step, manager, first=False, distributed=False):
    """The next batch; a TrainingError when the data cannot be read (or run out), or
    WorkersFailed when a `distributed` iterator fails because a peer was lost."""
    try:
        return next(iterator)
    except (StopIteration, tf.errors.OpError) as error:
        if distributed and isinstance(error, WorkersFailed.CAUSES):
            raise WorkersFailed(step + 1, error, manager) from None
        reason = "it ended" if isinstance(error, StopIteration) else _first_line(error)
        if first:
            raise TrainingError(f"cannot read the training data ({reason}): fix or remove "
                                "the damaged files; training did not start") from None
        raise TrainingError(f"cannot read the training data for step {step + 1} ({reason}): "
                            "training stopped; the last checkpoint is kept "
                            f"({manager.latest_checkpoint or 'none'})") from None


def _restore(checkpoint, state, path):
    """Restore `path` into `checkpoint`. One made under a tf.distribute strategy holds no
    data-iterator position: then the model and optimizer (`state`) only, the data order
    starts afresh."""
    if not any(name.startswith("data/") for name, _ in tf.train.list_variables(path)):
        checkpoint = tf.train.Checkpoint(**state)
    try:
        checkpoint.restore(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise TrainingError(f"cannot resume from '{path}' ({type(error).__name__}): use a new "
                            "checkpoint_dir", ["checkpoint_dir"]) from None


def _format_metrics(metrics, layer_names):
    parts = [f"loss {metrics['loss']:.2f}"]
    for key in ("bpp", "psnr"):
        values = " ".join(f"{name} {metrics[f'{key}_{name}']:.3f}" if key == "bpp" else
                          f"{name} {metrics[f'{key}_{name}']:.2f}" for name in layer_names)
        parts.append(f"{key} [{values}]")
    return "  ".join(parts)


def _duration(seconds):
    """'1h02m', '3m05s' or '12s'."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


def train(config, dataset, checkpoint_dir, last_step, learning_rate=1e-4,
          checkpoint_secs=300, log_every=100, make_step=tf.function,
          strategy=None, chief=True, integer_hyper_synthesis=False, init_from=None,
          init_step=0):
    """Train `config`'s model on `dataset` (endless batches) up to step `last_step`.

    learning_rate: a number (constant) or a schedule.StepSchedule; either way the rate of a
    step is that of this call, also when resuming. integer_hyper_synthesis: train the
    hyperprior's scale indexes as the integer network computes them at coding time
    (quantization in the loop; the variables are the same, so any checkpoint resumes with or
    without it).
    With a tf.distribute `strategy` (see pipeline/distribute.py), `dataset` is a function
    seed_offset -> dataset of global batches (reseeded from the step on resume); only the
    `chief` writes to `checkpoint_dir`, the other workers to a temporary directory.

    init_from: a trained model's directory whose weights start a new run (not a resume),
    counting steps from `init_step`.

    Returns the final step. Raises TrainingError on a non-finite loss, Interrupted after
    saving on SIGINT/SIGTERM, ConfigError when `checkpoint_dir` holds another model.
    """
    with contextlib.ExitStack() as stack:
        write_dir = stack.enter_context(distribute.WriteDir(checkpoint_dir, chief))
        return _train(config, dataset, checkpoint_dir, write_dir.path, last_step, learning_rate,
                      checkpoint_secs, log_every, make_step, strategy, chief,
                      integer_hyper_synthesis, init_from, init_step)


def _train(config, dataset, checkpoint_dir, write_dir, last_step, learning_rate,
           checkpoint_secs, log_every, make_step, strategy, chief,
           integer_hyper_synthesis=False, init_from=None, init_step=0):
    check_checkpoint_dir(checkpoint_dir, config)
    schedule = (learning_rate if isinstance(learning_rate, StepSchedule)
                else StepSchedule(learning_rate))
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = build_model(config)
        model.set_integer_hyper_synthesis(integer_hyper_synthesis)
        # The rate variable is set from the schedule before every step, also right after a
        # restore brought back the old run's value (see schedule.py).
        optimizer = tf.keras.optimizers.Adam(schedule.value(0))
        model.compile(optimizer=optimizer)
        # Create the optimizer's slots now so the step is traced once, not twice.
        optimizer.build(model.trainable_variables)
    # A distributed iterator cannot be checkpointed: it is made after restoring, reseeded.
    iterator = None if strategy else iter(dataset)
    state = dict(model=model, optimizer=optimizer)
    checkpoint = tf.train.Checkpoint(**state, **({} if strategy else dict(data=iterator)))
    latest = latest_checkpoint(checkpoint_dir)
    if latest:
        _restore(checkpoint, state, latest)
        print(f"resuming from step {int(optimizer.iterations.numpy())}", flush=True)
    elif init_from:
        initialize_weights(model, init_from)
        optimizer.iterations.assign(init_step)
        print(f"starting from the weights of {init_from} at step {init_step}", flush=True)
    manager = CheckpointManager(checkpoint, write_dir, MAX_CHECKPOINTS,
                                         step_counter=optimizer.iterations)
    step = int(optimizer.iterations.numpy())
    if strategy:
        iterator = iter(distribute.distribute_dataset(strategy, dataset(step)))
    if step >= last_step:
        print(f"already trained to step {step} (last_step {last_step}): nothing to do")
        return step
    # Unreadable data (that header checks missed) fail here, before anything is written.
    pending = _next_batch(iterator, step, manager, first=True, distributed=bool(strategy))
    if chief:
        prepare_checkpoint_dir(checkpoint_dir, config)

    writer = tf.summary.create_file_writer(os.path.join(write_dir, "train"))
    if strategy:
        distributed_step = distribute.distributed_step(strategy, model.train_step)
        train_step = lambda batch: distributed_step(
            batch, tf.constant(float(stop.received is not None)))
    else:
        train_step = make_step(model.train_step)
    saved_at = time.monotonic()
    window_start, window_steps = time.monotonic(), 0
    print(f"training {config.mode}-scalable model ({config.entropy_model}, layers "
          f"{'/'.join(config.layer_names)}, filters {config.filters}) from step {step} "
          f"to {last_step}; {schedule.describe()}"
          + (", integer hyper-synthesis" if integer_hyper_synthesis else "")
          + (f"; {strategy.num_replicas_in_sync} replicas" if strategy else ""), flush=True)
    with _SignalFlag() as stop, writer.as_default():
        while step < last_step:
            if pending is None:
                try:
                    pending = _next_batch(iterator, step, manager, distributed=bool(strategy))
                except WorkersFailed:
                    writer.flush()  # the process exits at once
                    raise
            batch, pending = pending, None
            optimizer.learning_rate.assign(schedule.value(step))
            try:
                metrics = dict(train_step(batch))
            except tf.errors.OpError as error:
                if not strategy:
                    raise
                writer.flush()
                raise WorkersFailed(step + 1, error, manager) from None
            # Under a strategy all workers stop after the same step, so only the flag reduced
            # over them counts: a signal that arrives during a step goes out with the next.
            stopping = (float(metrics.pop("stop")) > 0 if strategy
                        else stop.received is not None)
            if stopping and not stop.received:
                stop.received = signal.SIGTERM  # another worker was stopped: stop together
            step = int(optimizer.iterations.numpy())
            window_steps += 1
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                kept = manager.latest_checkpoint or "none"
                raise TrainingError(f"loss is {loss} at step {step}: training stopped; the last "
                                    f"good checkpoint is kept ({kept}). Lower the learning rate "
                                    "or check the training data")
            if step % log_every == 0 or step == last_step or stopping:
                seconds = (time.monotonic() - window_start) / window_steps
                rate = schedule.value(step - 1)  # the rate of the update just made
                values = {k: float(v) for k, v in metrics.items()}
                values.update({f"psnr_{name}": psnr_from_mse(values[f"mse_{name}"])
                               for name in config.layer_names})
                for name, value in values.items():
                    tf.summary.scalar(name, value, step=step)
                tf.summary.scalar("seconds_per_step", seconds, step=step)
                tf.summary.scalar("learning_rate", rate, step=step)
                print(f"step {step}/{last_step}  {_format_metrics(values, config.layer_names)}"
                      f"  lr {rate:.3g}  {seconds:.3f} s/step"
                      f"  eta {_duration((last_step - step) * seconds)}", flush=True)
                window_start, window_steps = time.monotonic(), 0
            if stopping:
                manager.save(checkpoint_number=step)
                writer.flush()
                raise Interrupted(stop.received, step)
            if time.monotonic() - saved_at >= checkpoint_secs:
                manager.save(checkpoint_number=step)
                saved_at = time.monotonic()
        path = manager.save(checkpoint_number=step)
    print(f"done: step {step}, checkpoint {path}", flush=True)
    return step
