"""Training on tf.distribute: the strategy of `--strategy`, the chief, and the data.

- `default`: one device (TensorFlow's default strategy).
- `mirrored`: tf.distribute.MirroredStrategy over all visible GPUs; without GPUs over
  `--cpu_replicas` logical CPU devices (for tests and trying it on a laptop).
- `multi_worker`: tf.distribute.MultiWorkerMirroredStrategy configured by TF_CONFIG; the
  chief (task type "chief", or worker 0 when there is none) writes the checkpoints.

`--batchsize` is the global batch: tf.distribute splits every batch across replicas, each
replica's loss is divided by the replica count (so summed gradients are those of the loss
averaged over the global batch) and metrics are averaged over replicas.

Distributed iterators cannot be saved in a checkpoint, so under `mirrored`/`multi_worker` the
data order is not resumed but reseeded from the step (`seed + step`): a resumed run sees a new,
reproducible sequence of crops instead of repeating the first ones.
"""

import json
import os
import shutil
import tempfile

STRATEGIES = ("default", "mirrored", "multi_worker")
# Seconds a collective (gradient all-reduce) may wait for a peer before failing: a dead
# worker ends the others with an error instead of a hang.
COLLECTIVE_TIMEOUT = 120


class DistributeError(RuntimeError):
    """The strategy cannot be set up (the message says why and what to do)."""


def _tf_config():
    text = os.environ.get("TF_CONFIG")
    if not text:
        return {}
    try:
        config = json.loads(text)
    except ValueError as error:
        raise DistributeError(f"TF_CONFIG is not valid JSON ({error}): fix the environment "
                              "variable") from None
    if not isinstance(config, dict):
        raise DistributeError("TF_CONFIG must be a JSON object with 'cluster' and 'task'")
    return config


def is_chief():
    """True unless TF_CONFIG names this process a non-chief task of a cluster."""
    config = _tf_config()
    task = config.get("task") or {}
    kind, index = task.get("type", "worker"), int(task.get("index", 0))
    if kind == "chief":
        return True
    if "chief" in (config.get("cluster") or {}):
        return False
    return kind == "worker" and index == 0


def make_strategy(name, cpu_replicas=2, timeout_seconds=COLLECTIVE_TIMEOUT):
    """The tf.distribute strategy called `name`; call before any other TensorFlow work."""
    import tensorflow as tf
    if name not in STRATEGIES:
        raise DistributeError(f"unknown --strategy {name!r}: use one of {', '.join(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=timeout_seconds)
    if name == "mirrored":
        # Physical, not logical, devices: listing logical ones initializes TensorFlow, after
        # which the CPU can no longer be split into logical devices.
        if tf.config.list_physical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        if cpu_replicas < 1:
            raise DistributeError(f"--cpu_replicas must be at least 1 (got {cpu_replicas})")
        cpu = tf.config.list_physical_devices("CPU")[0]
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas)
        except RuntimeError:
            pass  # already initialized (a second strategy in one process): use what exists
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        if len(devices) < cpu_replicas:
            raise DistributeError(f"TensorFlow was initialized with {len(devices)} logical CPU "
                                  f"device(s) before --cpu_replicas {cpu_replicas} could split "
                                  "the CPU: create the strategy first")
        return tf.distribute.MirroredStrategy(devices, cross_device_ops=(
            tf.distribute.ReductionToOneDevice(reduce_to_device=devices[0])))
    config = _tf_config()
    if not config.get("cluster"):
        raise DistributeError("--strategy multi_worker needs TF_CONFIG naming the cluster and "
                              "this task (see README, 'Training on several GPUs or machines')")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (ValueError, tf.errors.OpError) as error:
        raise DistributeError(f"cannot join the cluster of TF_CONFIG ({error}): check its "
                              "addresses and task") from None


def distribute_dataset(strategy, dataset):
    """`dataset` (global batches) split across the strategy's workers and replicas.

    AUTO sharding: by file where the pipeline reads files with reader datasets (the spatial
    model's TFRecords, when there are at least as many files as workers), otherwise by
    element (each worker keeps every n-th global batch, so crops differ between workers).
    """
    import tensorflow as tf
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.AUTO
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def distributed_step(strategy, train_step):
    """A tf.function (batch, stop) -> metrics averaged over all replicas of all workers.

    `stop` (1.0 where this process received SIGINT/SIGTERM) is averaged too: a positive
    "stop" metric tells every worker to save and exit after the same step.
    """
    import tensorflow as tf

    def replica_step(batch, stop):
        metrics = dict(train_step(batch))
        metrics["stop"] = stop
        return metrics

    @tf.function
    def step(batch, stop):
        per_replica = strategy.run(replica_step, (batch, stop))
        return {name: strategy.reduce(tf.distribute.ReduceOp.MEAN, value, axis=None)
                for name, value in per_replica.items()}
    return step


class WriteDir:
    """The directory this process writes checkpoints and summaries to.

    The chief writes to `checkpoint_dir`; other workers must take part in saving (the
    strategy's variables are saved collectively) but into a temporary directory deleted on
    exit.
    """

    def __init__(self, checkpoint_dir, chief):
        self.chief = chief
        self.path = checkpoint_dir if chief else tempfile.mkdtemp(prefix="worker_ckpt_")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)
