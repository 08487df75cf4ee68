"""Quantization in the loop (issue 9): the hyper-synthesis trained as the integer network that
computes the scale indexes at coding time (--integer_hyper_synthesis)."""
import numpy as np
import pytest
import tensorflow as tf

from bench.portable import stress_hyperprior
from codec.image import write_png
from models.config import ModelConfig
from models.factory import build_model
from helpers import functions_run_eagerly, run_script_in_process, smooth_image

CONFIG = ModelConfig(mode="quality", layer_names=["B", "e1"], filters=[8, 8],
                     lmbdas=[250.0, 50.0], entropy_model="hyperprior")


def _stressed_model():
    """A tiny model whose scale indexes spread over the table range (bench.portable)."""
    tf.random.set_seed(0)
    model = build_model(CONFIG)
    stress_hyperprior(model)
    model.set_integer_hyper_synthesis(True)
    return model


def test_training_indexes_and_bits_equal_the_integer_coding_path():
    """On the same latent, the training form's scale indexes (from the coder's side values)
    equal the integer network's bit for bit, and the estimated bits equal those of coding."""
    model = _stressed_model()
    model.prepare_coding()
    rng = np.random.default_rng(0)
    for entropy in model.entropy:
        tensor = tf.constant(rng.normal(0, 8, (2, 16, 24, 8)).astype(np.float32))
        _, _, _, coded_bits, (_, side_symbols) = entropy.compress(tensor)
        shape = tf.shape(tensor)[1:3]
        exact = entropy._coding_indexes(side_symbols, shape).numpy()
        trained = entropy._indexes(entropy.side_coder.dequantize(side_symbols), shape).numpy()
        assert len(np.unique(exact)) > 10  # spread, not saturated at one table
        np.testing.assert_array_equal(trained, exact)
        _, bits = entropy(tensor, training=False)
        np.testing.assert_allclose(bits.numpy(), coded_bits.numpy(), rtol=1e-5)
        # Without quantization in the loop the training form's indexes are not the coded ones.
        entropy.integer_hyper_synthesis = False
        floats = entropy._indexes(entropy.side_coder.dequantize(side_symbols), shape).numpy()
        entropy.integer_hyper_synthesis = True
        assert np.mean(np.clip(floats, 0, 63) != exact) > 0.05


def test_gradients_pass_straight_through_the_integer_network():
    model = _stressed_model()
    entropy = model.entropy[0]
    tensor = tf.constant(np.random.default_rng(1).normal(0, 8, (2, 16, 16, 8)), tf.float32)
    with tf.GradientTape() as tape:
        _, bits = entropy(tensor, training=True)
        loss = tf.reduce_sum(bits)
    variables = entropy.hyper_synthesis.trainable_variables + entropy.hyper_analysis.trainable_variables
    gradients = tape.gradient(loss, variables)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in gradients)
    assert all(np.any(g.numpy() != 0) for g in gradients)


def test_factorized_model_has_nothing_to_quantize():
    model = build_model(ModelConfig(mode="quality", layer_names=["B"], filters=[4],
                                    lmbdas=[1.0], entropy_model="factorized"))
    with pytest.raises(ValueError, match="no hyper-synthesis"):
        model.set_integer_hyper_synthesis(True)


def test_fine_tune_from_a_float_checkpoint_runs_and_resumes(tmp_path):
    """A float run resumed as a fine-tune with --integer_hyper_synthesis (same checkpoint
    variables); the factorized model refuses the flag in one line."""
    for seed in range(2):
        write_png(str(tmp_path / f"image{seed}.png"), smooth_image(96, 96, seed))
    run = str(tmp_path / "run")
    common = ["--train_glob", str(tmp_path / "*.png"), "--checkpoint_dir", run,
              "--filters", "4", "--lmbdas", "250", "--patchsize", "64", "--batchsize", "2",
              "--preprocess_threads", "1", "--checkpoint_secs", "1000", "--log_every", "1"]
    # One layer and two runs, their steps run eagerly: tracing a step costs ~10 CPU-s here.
    for last_step, flags, expected in ((2, [], "from step 0"),
                                       (3, ["--integer_hyper_synthesis"], "resuming from step 2")):
        with functions_run_eagerly():
            code, out, err = run_script_in_process(
                "train_quality.py", common + ["--last_step", str(last_step)] + flags)
        assert code == 0, out + err
        assert expected in out and f"done: step {last_step}" in out, out
        assert ("integer hyper-synthesis" in out) == bool(flags), out
    code, out, err = run_script_in_process(
        "train_quality.py", common[:3] + [str(tmp_path / "factorized"), "--filters", "4",
                                          "--lmbdas", "1", "--entropy_model", "factorized",
                                          "--integer_hyper_synthesis"])
    assert code == 1 and err.startswith("error: --integer_hyper_synthesis") and \
        "factorized" in err and len(err.strip().splitlines()) == 1, err
