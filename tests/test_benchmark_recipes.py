"""The benchmark workers' training recipes: the OptG paper's schedule and coupled weight decay."""

import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsparse

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import workers  # noqa: E402


def test_the_default_recipe_is_adam_at_the_given_rate():
    optimizer = workers.optimizer(keras, dict(learning_rate=1e-3, epochs=15), steps_per_epoch=10)
    assert isinstance(optimizer, keras.optimizers.Adam)
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)


def test_the_paper_recipe_warms_up_linearly_then_decays_by_cosine_to_zero():
    job = dict(recipe="paper", learning_rate=0.1, epochs=10, warmup_epochs=2)
    optimizer = workers.optimizer(keras, job, steps_per_epoch=5)
    assert isinstance(optimizer, keras.optimizers.SGD) and optimizer.momentum == 0.9
    schedule = optimizer._learning_rate
    rate = {step: float(schedule(step)) for step in (0, 5, 10, 30, 50)}
    assert rate[0] == 0.0 and rate[5] == pytest.approx(0.05) and rate[10] == pytest.approx(0.1)
    assert rate[30] == pytest.approx(0.05 * (1 + np.cos(np.pi * 20 / 40)))  # cosine over the 40 steps after warm-up
    assert rate[50] == pytest.approx(0.0, abs=1e-9)


def test_weight_decay_is_coupled_and_reaches_pruned_kernel_entries():
    model = tfsparse.prune(workers.build(keras, "lenet_300_100", (28, 28), weight_decay=5e-4))
    weight = tfsparse.masked_weights(model)[0]
    weight.mask.assign(np.zeros(weight.mask.shape, "float32"))
    with tf.GradientTape() as tape:
        penalty = sum(model.losses)
    gradient = tape.gradient(penalty, weight.kernel)
    np.testing.assert_allclose(gradient, 5e-4 * keras.ops.convert_to_numpy(weight.kernel), rtol=1e-5, atol=1e-12)
    assert not workers.build(keras, "lenet_300_100", (28, 28)).losses


def test_a_dense_method_job_trains_the_unpruned_model_on_the_recipe(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 28, 28), dtype="float32"), rng.integers(0, 10, 64)
    np.savez(tmp_path / "data.npz", x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
    job = dict(kind="method", method="dense", model="lenet_300_100", data=str(tmp_path / "data.npz"), epochs=6,
               batch_size=32, sparsity=0.0, seed=0, learning_rate=0.1, recipe="paper", warmup_epochs=5,
               weight_decay=5e-4)
    result = workers.method_job(job)
    assert result["sparsity"] == 0.0 and result["history"] == []
    assert 0.0 <= result["accuracy"] <= 1.0
    held_out = 64 - int(0.9 * 64)  # validation: trains on the first 57 examples, scores the last 7
    correct = workers.method_job(dict(job, validation=True))["accuracy"] * held_out
    assert correct == pytest.approx(round(correct), abs=1e-4)
