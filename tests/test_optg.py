import json
import math
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsparse
from tfsparse.masking import optimizer_slots
from tfsparse.methods import OptG
from tfsparse_app import cli, zoo

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def hand_made_layer():
    model = tfsparse.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, use_bias=False)]),
                           **OptG(0.5).layer_options)
    weight = tfsparse.masked_weights(model)[0]
    weight.kernel.assign(np.array([[1.0, -2.0], [0.5, 3.0], [-1.5, 0.25]], "float32"))
    weight.mask.assign(np.array([[1, 0], [1, 1], [0, 1]], "float32"))
    return model, weight


def test_scores_start_at_zero_and_are_written_by_the_optimizer():
    model, weight = hand_made_layer()
    for variable in (weight.score, weight.state("score_velocity")):
        assert variable.trainable and variable.overwrite_with_gradient
        assert np.all(keras.ops.convert_to_numpy(variable) == 0)
    assert not weight.state("score_learning_rate").trainable


def test_straight_through_gradients_and_the_score_sgd_step():
    model, weight = hand_made_layer()
    score0 = np.array([[0.1, -0.2], [0.0, 0.3], [0.05, 0.0]], "float32")
    velocity0 = np.array([[1.0, 0.0], [-1.0, 2.0], [0.5, 0.5]], "float32")
    weight.score.assign(score0)
    weight.state("score_velocity").assign(velocity0)
    weight.state("score_learning_rate").assign(0.5)
    x = np.array([[1.0, 2.0, 3.0]], "float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True))  # dL/dW_eff[i, j] = x[i]
    gradients = dict(zip(["kernel", "score", "velocity"], tape.gradient(
        loss, [weight.kernel, weight.score, weight.state("score_velocity")])))
    g = np.repeat(x.T, 2, axis=1)
    kernel = keras.ops.convert_to_numpy(weight.kernel)
    mask = keras.ops.convert_to_numpy(weight.mask)
    np.testing.assert_allclose(gradients["kernel"], g * mask)  # the kernel gets g * m
    straight_through = g * kernel  # the score gets the signed g * W everywhere, pruned entries included
    new_velocity = 0.9 * velocity0 + straight_through
    np.testing.assert_allclose(gradients["velocity"], new_velocity, rtol=1e-6)
    np.testing.assert_allclose(gradients["score"], score0 - 0.5 * new_velocity, rtol=1e-6)
    # The forward value is exactly the mask.
    np.testing.assert_array_equal(model(x, training=True), x @ (kernel * mask))


def test_a_training_step_with_adam_applies_exactly_the_score_update(mnist_subset):
    model = tfsparse.prune(zoo.lenet_300_100(), **OptG(0.5).layer_options)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    x, y = mnist_subset.x_train[:64], mnist_subset.y_train[:64]
    for weight in tfsparse.masked_weights(model):
        weight.state("score_learning_rate").assign(0.25)
    g = tfsparse.dense_gradients(model, x, y)
    kernels = {w.name: keras.ops.convert_to_numpy(w.kernel) for w in tfsparse.masked_weights(model)}
    model.train_on_batch(x, y)
    slots = optimizer_slots(model.optimizer)
    for weight in tfsparse.masked_weights(model):
        expected = -0.25 * keras.ops.convert_to_numpy(g[weight.name]) * kernels[weight.name]
        np.testing.assert_allclose(keras.ops.convert_to_numpy(weight.score), expected, rtol=1e-4, atol=1e-9)
        assert id(weight.score) not in slots  # Adam keeps no moments for the scores
        assert not np.array_equal(keras.ops.convert_to_numpy(weight.kernel), kernels[weight.name])


class MaskRecorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.kept = []

    def on_epoch_begin(self, epoch, logs=None):
        self.kept.append(sum(int(np.sum(w.mask)) for w in tfsparse.masked_weights(self.model)))


def test_schedule_global_top_k_and_mask_learning_rate_follow_the_formulas(mnist_subset):
    method, recorder = OptG(0.9), MaskRecorder()
    model = tfsparse.prune(zoo.lenet_300_100(), **method.layer_options)
    learning_rate = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=10, decay_rate=0.5)
    model.compile(keras.optimizers.SGD(learning_rate, momentum=0.9), LOSS, metrics=["accuracy"])
    steps_per_epoch = math.ceil(2000 / 100)
    model.fit(mnist_subset.x_train[:2000], mnist_subset.y_train[:2000], batch_size=100, epochs=6, verbose=0,
              callbacks=[method, recorder])
    total = sum(w.size for w in tfsparse.masked_weights(model))
    last = sigmoid(6 / 2 - 1)
    for epoch, (record, kept) in enumerate(zip(method.history, recorder.kept)):
        sparsity = 0.9 * sigmoid(epoch - 3) / last
        assert record["sparsity"] == pytest.approx(sparsity)
        assert kept == round(total * (1 - sparsity))  # one global top-k, exact count
        weight_rate = 0.05 * 0.5 ** (epoch * steps_per_epoch / 10)
        assert record["mask_learning_rate"] == pytest.approx(weight_rate * sigmoid(epoch - 3), rel=1e-5)
    assert method.history[-1]["sparsity"] == pytest.approx(0.9)
    assert tfsparse.sparsity(model) == pytest.approx(0.9, abs=1e-5)
    assert any(record["flip_fraction"] > 0 for record in method.history[1:])


def test_pruned_weights_regrow_with_their_values_when_their_score_rises():
    model, weight = hand_made_layer()
    model.compile(keras.optimizers.SGD(0.1), "mse")
    kernel = keras.ops.convert_to_numpy(weight.kernel).copy()
    # Entry (0, 1) is pruned but scores highest; entry (1, 0) is active but scores lowest.
    weight.score.assign(np.array([[0.5, 9.0], [-3.0, 0.7], [-1.0, 0.6]], "float32"))
    method = OptG(0.5, epochs=2)
    method.set_model(model)
    method.on_train_begin()
    method.on_epoch_begin(1)  # sparsity 0.5 * sigmoid(0) / sigmoid(0) = 0.5: keep 3 of 6
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight.mask), [[0, 1], [0, 1], [0, 1]])
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight.kernel), kernel)  # values kept
    assert method.history[-1]["flip_fraction"] == pytest.approx(3 / 6)  # (0, 0), (0, 1), (1, 0)


def test_saved_model_keeps_scores_and_computes_the_same(mnist_subset, tmp_path):
    method = OptG(0.8)
    model = tfsparse.prune(zoo.lenet_300_100(), **method.layer_options)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(mnist_subset.x_train[:512], mnist_subset.y_train[:512], batch_size=128, epochs=2, verbose=0,
              callbacks=[method])
    model.save(tmp_path / "optg.keras")
    loaded = keras.models.load_model(tmp_path / "optg.keras")
    x = mnist_subset.x_test[:20]
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)
    for before, after in zip(tfsparse.masked_weights(model), tfsparse.masked_weights(loaded)):
        np.testing.assert_array_equal(after.score, before.score)
        assert after.score.overwrite_with_gradient
    np.testing.assert_allclose(tfsparse.strip(loaded)(x), model(x), atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match="target_sparsity"):
        OptG(1.0)
    with pytest.raises(ValueError, match=r"epochs.*Received: epochs=0"):
        OptG(0.9, epochs=0)
    model = tfsparse.prune(zoo.lenet_300_100())
    with pytest.raises(ValueError, match=r"ScoreSGD.*optg.layer_options"):
        OptG(0.9).set_model(model)


def test_command_line_run_writes_the_optg_plot(tmp_path, capsys):
    out = tmp_path / "optg"
    argv = ["run", "--method", "optg", "--dataset", "mnist", "--sparsity", "0.9", "--epochs", "3",
            "--beta", "2", "--max-train", "1200", "--max-test", "300", "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert (out / "optg.png").read_bytes()[:4] == b"\x89PNG"


def test_equal_scores_are_ranked_by_magnitude():
    model, weight = hand_made_layer()  # all scores 0, as at the start of training
    model.compile(keras.optimizers.SGD(0.1), "mse")
    method = OptG(0.5, epochs=2)
    method.set_model(model)
    method.on_train_begin()
    method.on_epoch_begin(1)  # keep 3 of 6: the largest |W| are 3, -2 and -1.5
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight.mask), [[0, 1], [0, 1], [1, 0]])


@pytest.mark.parametrize("epochs, warns", [(6, True), (9, True), (10, False), (15, False)])
def test_a_budget_too_short_for_the_schedule_is_said_with_one_that_works(epochs, warns):
    from tfsparse.methods import BudgetWarning

    method = OptG(0.9)
    method.params = {"epochs": epochs}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.on_train_begin()
    budget = [w for w in caught if issubclass(w.category, BudgetWarning)]
    assert len(budget) == int(warns)
    if warns:
        assert f"OptG over {epochs} epochs" in str(budget[0].message) and "at least 10 epochs" in str(budget[0].message)
