"""Training speed-ups and the learning-rate schedule (issue 10): the matmul kernel rebuild,
bfloat16 convolutions, and a schedule that resumes with the rerun's flags."""
import numpy as np
import pytest
import tensorflow as tf

from models.config import ModelConfig
from models.factory import build_model
from models.layers import conv, set_conv_precision, set_kernel_rebuild
from pipeline import training
from pipeline.schedule import StepSchedule

CONFIG = ModelConfig(mode="quality", layer_names=["B", "e1"], filters=[8, 8],
                     lmbdas=[250.0, 50.0], entropy_model="hyperprior")
ONE_LAYER = ModelConfig(mode="quality", layer_names=["B"], filters=[4], lmbdas=[250.0],
                        entropy_model="hyperprior")


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


def _variables(model):
    return [(v.name, tuple(v.shape), v.dtype.name) for v in model.variables]


def test_bfloat16_step_is_close_to_float32_and_keeps_float32_variables():
    tf.keras.utils.set_random_seed(0)
    model = build_model(CONFIG)
    batch = _random((1, 64, 64, 3))
    outputs = {}
    for precision in ("float32", "bfloat16"):
        set_conv_precision(model, precision)
        result = model(batch, training=False)
        outputs[precision] = [out["reconstruction"].numpy() for out in result]
        assert all(out["reconstruction"].dtype == tf.float32 for out in result)
    set_conv_precision(model, "float32")
    for f32, bf16 in zip(outputs["float32"], outputs["bfloat16"]):
        np.testing.assert_allclose(bf16, f32, atol=0.05)
    # A bfloat16 training step (traced: tens of seconds for two layers here, so one layer).
    model = build_model(ONE_LAYER)
    before = _variables(model)
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-4))
    model.training_precision = "bfloat16"
    metrics = tf.function(model.train_step)(_random((1, 32, 32, 3)))
    assert np.isfinite(float(metrics["loss"]))
    assert _variables(model) == before
    assert all(dtype == "float32" for _, _, dtype in _variables(model))
    # The precision holds while the step is traced only: eager calls and coding are float32.
    assert all(layer.conv_precision == "float32" for layer in model.submodules
               if hasattr(layer, "conv_precision"))
    with pytest.raises(ValueError, match="unknown precision"):
        set_conv_precision(model, "float16")


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


def _recording(rates, precisions):
    def make(function):
        model = function.__self__

        def step(batch):
            rates.append(float(model.optimizer.learning_rate.numpy()))
            precisions.append(model.training_precision)
            return function(batch)
        return step
    return make


def test_float32_checkpoint_resumes_under_bfloat16_with_the_rerun_schedule(tmp_path, capsys):
    """A float32 run at rate 1e-3 resumed with bfloat16 and a decay schedule: it loads, the
    restored rate variable is overridden by the rerun's schedule, which continues by step."""
    directory = str(tmp_path / "run")
    first, second, precisions = [], [], []
    training.train(CONFIG, _batches(), directory, 2, learning_rate=1e-3,
                   checkpoint_secs=1e9, make_step=_recording(first, precisions))
    schedule = StepSchedule(5e-4, "decay", last_step=5, decay_start_fraction=0.6,
                            decay_factor=0.1)
    capsys.readouterr()
    training.train(CONFIG, _batches(), directory, 5, learning_rate=schedule,
                   checkpoint_secs=1e9, log_every=1, precision="bfloat16",
                   make_step=_recording(second, precisions))
    out = capsys.readouterr().out
    assert "resuming from step 2" in out and "bfloat16 convolutions" in out
    assert first == pytest.approx([1e-3, 1e-3])
    assert second == pytest.approx([5e-4, 5e-5, 5e-5])  # steps 2, 3 (= decay step), 4
    assert precisions == ["float32"] * 2 + ["bfloat16"] * 3
    assert "lr 5e-05" in out and "eta " in out
