import json
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsparse
from tfsparse import allocation
from tfsparse.mask_functions import set_learning_rate
from tfsparse.methods import ASLP, EdgePopup, Supermask
from tfsparse_app import cli, zoo

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def prepared(method, model_fn=zoo.lenet_300_100):
    model = tfsparse.prune(model_fn(), **method.layer_options)
    model.compile(keras.optimizers.SGD(0.1), LOSS, metrics=["accuracy"])
    return model


class WeightRecorder(keras.callbacks.Callback):
    """Copies of every non-mask variable when training starts (after the method's init)."""

    def on_train_begin(self, logs=None):
        self.frozen = {v.path: keras.ops.convert_to_numpy(v).copy() for v in self.model.weights
                       if v.name in ("kernel", "bias")}


@pytest.mark.parametrize("method", [ASLP(), Supermask(), EdgePopup(0.3)], ids=["aslp", "supermask", "edge-popup"])
def test_only_scores_and_scales_learn_the_weights_stay_frozen(mnist_subset, method):
    model = prepared(method)
    recorder = WeightRecorder()
    model.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=128, epochs=2, verbose=0,
              callbacks=[method, recorder])
    assert len(recorder.frozen) == 6  # three kernels, three biases
    for variable in model.weights:
        if variable.path in recorder.frozen:
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(variable), recorder.frozen[variable.path])
    for weight in tfsparse.masked_weights(model):
        assert np.any(keras.ops.convert_to_numpy(weight.score) != 0)
        assert np.all(keras.ops.convert_to_numpy(weight.layer.bias) == 0)
    assert len(method.history) == 2 and 0 < method.history[-1]["sparsity"] < 1
    stripped = tfsparse.strip(model)
    stripped.compile(loss=LOSS, metrics=["accuracy"])
    _, accuracy = stripped.evaluate(mnist_subset.x_test, mnist_subset.y_test, verbose=0)
    assert accuracy > 0.4  # chance is 0.1: the subnetwork of random weights classifies


def test_frozen_kernels_are_untruncated_kaiming_normal():
    method = ASLP(seed=3)
    model = prepared(method, lambda: keras.Sequential([keras.Input((400,)), keras.layers.Dense(500)]))
    method.set_model(model)
    method.on_train_begin()
    kernel = keras.ops.convert_to_numpy(tfsparse.masked_weights(model)[0].kernel)
    assert kernel.std() == pytest.approx(np.sqrt(2 / 400), rel=0.02)
    assert np.abs(kernel).max() > 3.5 * np.sqrt(2 / 400)  # a truncated normal stops at 2 std


def test_gumbel_mask_is_binary_shared_by_the_batch_with_gradients_to_every_logit():
    method = ASLP(smart_rescale=False)
    model = prepared(method, lambda: keras.Sequential([keras.Input((6,)), keras.layers.Dense(4, use_bias=False)]))
    weight = tfsparse.masked_weights(model)[0]
    weight.score.assign(np.random.default_rng(0).normal(size=(6, 4)).astype("float32"))
    set_learning_rate(weight, "score", 1.0)
    mask_function = weight.layer.mask_function
    with tf.GradientTape() as tape:
        mask = mask_function(weight, training=True)
        loss = tf.reduce_sum(mask * np.arange(24, dtype="float32").reshape(6, 4))
    values = keras.ops.convert_to_numpy(mask)
    assert set(np.unique(values)) <= {0.0, 1.0}
    # With lr 1 and zero velocity the score's "gradient" is score - upstream: upstream is nonzero everywhere
    # but at the entry with coefficient 0.
    upstream = keras.ops.convert_to_numpy(weight.score) - keras.ops.convert_to_numpy(tape.gradient(loss, weight.score))
    assert np.count_nonzero(upstream) == 23 and np.all(upstream[np.arange(24).reshape(6, 4) > 0] > 0)
    # One mask per tensor: identical examples give identical outputs within a batch ...
    x = np.ones((8, 6), "float32")
    out = keras.ops.convert_to_numpy(model(x, training=True))
    assert np.all(out == out[0])
    # ... and a new sample in the next forward pass.
    samples = {mask_function(weight, training=True).numpy().tobytes() for _ in range(5)}
    assert len(samples) > 1


def test_strip_keeps_logits_at_least_zero_and_folds_the_scale():
    method = ASLP()
    model = prepared(method)
    rng = np.random.default_rng(1)
    for weight in tfsparse.masked_weights(model):
        weight.score.assign(rng.normal(size=weight.shape).astype("float32"))
        weight.scale.assign(1.7)
    x = rng.random((16, 28, 28, 1)).astype("float32")
    stripped = tfsparse.strip(model)
    np.testing.assert_allclose(stripped(x), model(x, training=False), atol=1e-5)
    for weight, layer in zip(tfsparse.masked_weights(model), [l for l in stripped.layers if l.weights]):
        expected = 1.7 * keras.ops.convert_to_numpy(weight.kernel) * (keras.ops.convert_to_numpy(weight.score) >= 0)
        np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.kernel), expected, rtol=1e-6)


def test_supermask_final_network_is_rescaled_by_n_over_kept():
    method = Supermask()
    model = prepared(method)
    rng = np.random.default_rng(2)
    for weight in tfsparse.masked_weights(model):
        weight.score.assign(rng.normal(0.5, 1.0, size=weight.shape).astype("float32"))
    stripped = tfsparse.strip(model)
    weight = tfsparse.masked_weights(model)[0]
    keep = keras.ops.convert_to_numpy(weight.score) >= 0
    expected = keras.ops.convert_to_numpy(weight.kernel) * keep * keep.size / keep.sum()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(stripped.get_layer("fc1").kernel), expected, rtol=1e-6)


def test_edge_popup_keeps_exactly_the_fraction_per_layer(mnist_subset):
    method = EdgePopup(0.3, update_every=2)
    model = prepared(method)
    model.fit(mnist_subset.x_train[:1024], mnist_subset.y_train[:1024], batch_size=128, epochs=1, verbose=0,
              callbacks=[method])
    for weight in tfsparse.masked_weights(model):
        assert int(np.sum(weight.mask)) == allocation.keep_count(weight.size, 0.7)
    method.update_masks()  # the kept weights are those with the largest |score|
    for weight in tfsparse.masked_weights(model):
        mask = keras.ops.convert_to_numpy(weight.mask) > 0
        scores = np.abs(keras.ops.convert_to_numpy(weight.score))
        assert scores[mask].min() >= scores[~mask].max()


def test_aslp_model_saves_and_loads(mnist_subset, tmp_path):
    method = ASLP()
    model = prepared(method)
    model.fit(mnist_subset.x_train[:512], mnist_subset.y_train[:512], batch_size=256, epochs=1, verbose=0,
              callbacks=[method])
    model.save(tmp_path / "aslp.keras")
    loaded = keras.models.load_model(tmp_path / "aslp.keras")
    x = mnist_subset.x_test[:10]
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


def test_clear_errors():
    with pytest.raises(ValueError, match=r"keep_fraction.*Received: keep_fraction=0"):
        EdgePopup(0)
    with pytest.raises(ValueError, match="score_learning_rate"):
        ASLP(score_learning_rate=0)
    with pytest.raises(ValueError, match=r"GumbelSoftmaxMask.*layer_options"):
        ASLP().set_model(tfsparse.prune(zoo.lenet_300_100()))


def test_command_line_aslp_reports_the_emerged_sparsity(tmp_path, capsys):
    out = tmp_path / "aslp"
    argv = ["run", "--method", "aslp", "--dataset", "mnist", "--epochs", "2", "--batch-size", "256",
            "--max-train", "1200", "--max-test", "300", "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    result = json.loads((out / "report.json").read_text())
    assert 0.05 < result["metrics"]["sparsity"] < 0.95
    assert (out / "subnetwork.png").read_bytes()[:4] == b"\x89PNG"
