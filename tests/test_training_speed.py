"""Training speed-ups and the learning-rate schedule (issue 10): the matmul kernel rebuild
and a schedule that resumes with the rerun's flags."""
import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig
from models.layers import conv, set_kernel_rebuild
from pipeline import training
from pipeline.schedule import StepSchedule

CONFIG = ModelConfig(mode="quality", layer_names=["B", "e1"], filters=[8, 8],
                     lmbdas=[250.0, 50.0], entropy_model="hyperprior")


def _random(shape, seed=0):
    return tf.constant(np.random.default_rng(seed).uniform(size=shape).astype(np.float32))


@pytest.mark.parametrize("stride, kernel", [("down", 5), ("up", 5), ("1", 3)])
def test_matmul_kernel_and_gradient_match_tfc_irfft(stride, kernel):
    layer = conv(6, stride, kernel=kernel)
    layer(tf.zeros((1, 8, 8, 4)))
    parameter = layer.kernel_parameter
    for variable in (parameter.real, parameter.imag):
        variable.assign(tf.random.stateless_normal(variable.shape, seed=(1, 2)))
    weights = tf.random.stateless_normal(layer.kernel.shape, seed=(3, 4))
    results = {}
    for method in ("matmul", "irfft"):
        set_kernel_rebuild(layer, method)
        with tf.GradientTape() as tape:
            kernel_value = layer.kernel
            loss = tf.reduce_sum(kernel_value * weights)
        results[method] = (kernel_value.numpy(), tape.gradient(loss, parameter.real).numpy())
    np.testing.assert_allclose(results["matmul"][0], results["irfft"][0], atol=1e-5)
    np.testing.assert_allclose(results["matmul"][1], results["irfft"][1], atol=1e-4)
    with pytest.raises(ValueError, match="unknown kernel rebuild"):
        set_kernel_rebuild(layer, "fft")


def test_schedule_values():
    constant = StepSchedule(1e-3)
    assert constant.value(0) == constant.value(10 ** 6) == 1e-3
    decay = StepSchedule(1e-3, "decay", last_step=1000, decay_start_fraction=0.85,
                         decay_factor=0.1)
    assert decay.decay_step == 850
    assert decay.value(0) == decay.value(849) == 1e-3
    assert decay.value(850) == decay.value(999) == pytest.approx(1e-4)
    with pytest.raises(ValueError):
        StepSchedule(1e-3, "cosine")


def _batches():
    return tf.data.Dataset.range(1000).map(
        lambda i: tf.random.stateless_uniform((1, 64, 64, 3), seed=tf.stack([i, 0])))


def _recording(rates):
    def make(function):
        model = function.__self__

        def step(batch):
            rates.append(float(model.optimizer.learning_rate.numpy()))
            return function(batch)
        return step
    return make


def test_checkpoint_resumes_with_the_rerun_schedule(tmp_path, capsys):
    """A run at rate 1e-3 resumed with a decay schedule: it loads, the restored rate variable
    is overridden by the rerun's schedule, which continues by step."""
    directory = str(tmp_path / "run")
    first, second = [], []
    training.train(CONFIG, _batches(), directory, 2, learning_rate=1e-3,
                   checkpoint_secs=1e9, make_step=_recording(first))
    schedule = StepSchedule(5e-4, "decay", last_step=5, decay_start_fraction=0.6,
                            decay_factor=0.1)
    capsys.readouterr()
    training.train(CONFIG, _batches(), directory, 5, learning_rate=schedule,
                   checkpoint_secs=1e9, log_every=1, make_step=_recording(second))
    out = capsys.readouterr().out
    assert "resuming from step 2" in out
    assert first == pytest.approx([1e-3, 1e-3])
    assert second == pytest.approx([5e-4, 5e-5, 5e-5])  # steps 2, 3 (= decay step), 4
    assert "lr 5e-05" in out and "eta " in out
