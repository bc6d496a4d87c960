import keras
import numpy as np
import pytest
import tensorflow as tf

import tfsparse
from tfsparse import layers as masked_layers
from tfsparse.mask_functions import StraightThroughScores
from conftest import random_mask
from tfsparse.surgery import all_layers, is_pruned

L = keras.layers
# (layer factory, input shape, integer inputs?)
LAYER_CASES = {
    "Dense": (lambda: L.Dense(5), (6,)),
    "EinsumDense": (lambda: L.EinsumDense("ab,bc->ac", output_shape=5, bias_axes="c"), (6,)),
    "Conv1D": (lambda: L.Conv1D(3, 3), (8, 2)),
    "Conv2D": (lambda: L.Conv2D(3, 3), (8, 8, 2)),
    "Conv3D": (lambda: L.Conv3D(3, 2), (4, 4, 4, 2)),
    "Conv1DTranspose": (lambda: L.Conv1DTranspose(3, 3), (8, 2)),
    "Conv2DTranspose": (lambda: L.Conv2DTranspose(3, 3, strides=2), (5, 5, 2)),
    "Conv3DTranspose": (lambda: L.Conv3DTranspose(3, 2), (3, 3, 3, 2)),
    "DepthwiseConv1D": (lambda: L.DepthwiseConv1D(3, depth_multiplier=2), (8, 3)),
    "DepthwiseConv2D": (lambda: L.DepthwiseConv2D(3), (8, 8, 3)),
    "SeparableConv1D": (lambda: L.SeparableConv1D(4, 3), (8, 3)),
    "SeparableConv2D": (lambda: L.SeparableConv2D(4, 3), (8, 8, 3)),
    "Embedding": (lambda: L.Embedding(20, 4), (5,)),
    # RNN cells are masked inside their RNN layer (kernel and recurrent kernel).
    "SimpleRNNCell": (lambda: L.SimpleRNN(4), (6, 3)),
    "GRUCell": (lambda: L.GRU(4), (6, 3)),
    "LSTMCell": (lambda: L.LSTM(4, return_sequences=True), (6, 3)),
}


def make_case(name):
    factory, shape = LAYER_CASES[name]
    inputs = keras.Input(shape, dtype="int32" if name == "Embedding" else "float32")
    model = keras.Model(inputs, factory()(inputs))
    rng = np.random.default_rng(1)
    if name == "Embedding":
        x = rng.integers(0, 20, size=(4, *shape)).astype("int32")
    else:
        x = rng.normal(size=(4, *shape)).astype("float32")
    return model, x


def randomize_masks(model, density=0.5):
    for i, weight in enumerate(tfsparse.masked_weights(model)):
        weight.mask.assign(random_mask(weight.shape, density, seed=i))


def test_every_supported_keras_layer_has_a_case():
    assert {cls.__name__ for cls in masked_layers.MASKED_CLASSES} == set(LAYER_CASES)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_prune_keeps_outputs_and_strip_bakes_in_masks(name):
    model, x = make_case(name)
    pruned = tfsparse.prune(model)
    layer = tfsparse.masked_weights(pruned)[0].layer
    assert type(layer).__name__ == "Masked" + name
    np.testing.assert_array_equal(pruned(x), model(x))  # all-ones masks

    randomize_masks(pruned)
    stripped = tfsparse.strip(pruned)
    assert type(stripped.layers[-1]) is type(model.layers[-1])
    assert not is_pruned(stripped)
    masked_out = keras.ops.convert_to_numpy(pruned(x))
    np.testing.assert_allclose(stripped(x), masked_out, atol=1e-6, rtol=0)
    assert not np.allclose(masked_out, model(x))  # the masks did change the function
    plain_layer = all_layers(stripped)[all_layers(pruned).index(layer)]
    for weight in tfsparse.masked_weights(pruned):
        baked = keras.ops.convert_to_numpy(getattr(plain_layer, weight.attr))
        expected = keras.ops.convert_to_numpy(weight.kernel) * keras.ops.convert_to_numpy(weight.mask)
        np.testing.assert_array_equal(baked, expected)
    # The input model is untouched.
    assert all(not masked_layers.is_masked(l) for l in model.layers)


@pytest.mark.parametrize("name", ["Dense", "Conv2D", "SeparableConv2D", "Embedding", "DepthwiseConv2D"])
def test_variables_are_named_for_users(name):
    model, _ = make_case(name)
    pruned = tfsparse.prune(model, with_score=True, with_scale=True, state_names=("count",))
    names = {v.name for v in pruned.layers[-1].weights}
    for weight in tfsparse.masked_weights(pruned):
        prefix = weight.attr[: -len("kernel")] if weight.attr.endswith("_kernel") else ""
        assert {weight.kernel.name, prefix + "mask", prefix + "score", prefix + "scale", prefix + "count"} <= names
        assert weight.mask.trainable is False and weight.score.trainable is True
        assert weight.scale.shape == ()


@pytest.mark.parametrize("name", ["Dense", "Conv2D", "SeparableConv1D", "EinsumDense", "Embedding"])
def test_save_and_load_round_trips_masks_scores_and_state(tmp_path, name):
    model, x = make_case(name)
    pruned = tfsparse.prune(model, with_score=True, state_names=("count",),
                            mask_function=StraightThroughScores())
    randomize_masks(pruned, density=0.3)
    for i, weight in enumerate(tfsparse.masked_weights(pruned)):
        weight.score.assign(np.random.default_rng(i).normal(size=weight.shape))
        weight.state("count").assign(np.full(weight.shape, 7.0))
    path = tmp_path / "m.keras"
    pruned.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_allclose(loaded(x), pruned(x), atol=1e-6)
    for a, b in zip(tfsparse.masked_weights(pruned), tfsparse.masked_weights(loaded)):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.score, b.score)
        np.testing.assert_array_equal(b.state("count"), 7.0)
    assert isinstance(loaded.layers[-1].mask_function, StraightThroughScores)


@pytest.mark.parametrize("name", ["Dense", "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Embedding"])
def test_dense_gradients_equal_gradient_of_effective_kernel(name):
    model, x = make_case(name)
    pruned = tfsparse.prune(model)
    randomize_masks(pruned)
    y = np.random.default_rng(2).normal(size=keras.ops.shape(pruned(x))).astype("float32")
    pruned.compile(loss="mse")
    grads = tfsparse.dense_gradients(pruned, x, y)

    # Reference: a plain model whose kernel variables hold W * m.
    stripped = tfsparse.strip(pruned)
    stripped.compile(loss="mse")
    layer = stripped.layers[-1]
    by_name = {v.name: v for v in layer.weights}
    kernels = [by_name[w.kernel.name] for w in tfsparse.masked_weights(pruned)]
    with tf.GradientTape() as tape:
        loss = stripped.compute_loss(x=x, y=y, y_pred=stripped(x, training=True))
    references = tape.gradient(loss, kernels)
    for weight, reference in zip(tfsparse.masked_weights(pruned), references):
        dense = np.asarray(tf.convert_to_tensor(grads[weight.name]))
        np.testing.assert_allclose(dense, tf.convert_to_tensor(reference), rtol=1e-4, atol=1e-6)
        pruned_positions = keras.ops.convert_to_numpy(weight.mask) == 0
        assert np.count_nonzero(dense[pruned_positions]) > 0  # dense, not masked


def test_straight_through_scores_get_g_times_kernel():
    model, x = make_case("Dense")
    pruned = tfsparse.prune(model, with_score=True, mask_function=StraightThroughScores())
    randomize_masks(pruned)
    weight = tfsparse.masked_weights(pruned)[0]
    pruned.compile(loss="mse")
    y = np.zeros((4, 5), "float32")
    with tf.GradientTape() as tape:
        loss = pruned.compute_loss(x=x, y=y, y_pred=pruned(x, training=True))
    d_score, d_kernel = tape.gradient(loss, [weight.score.value, weight.kernel.value])
    g = tfsparse.dense_gradients(pruned, x, y)[weight.name]
    kernel, mask = (keras.ops.convert_to_numpy(v) for v in (weight.kernel, weight.mask))
    np.testing.assert_allclose(d_score, g * kernel, rtol=1e-5, atol=1e-7)  # pruned entries too
    np.testing.assert_allclose(d_kernel, g * mask, rtol=1e-5, atol=1e-7)
    # In inference the mask variable is used as it is.
    np.testing.assert_allclose(pruned(x), tfsparse.strip(pruned)(x), atol=1e-6)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_mixed_float16_and_jit_compile(jit_compile):
    keras.config.set_dtype_policy("mixed_float16")
    inputs = keras.Input((12,))
    x = L.Dense(32, activation="relu")(inputs)
    x = L.Reshape((4, 8))(x)
    x = L.Conv1D(8, 3, activation="relu")(x)
    outputs = L.Dense(3, dtype="float32")(L.Flatten()(x))
    pruned = tfsparse.prune(keras.Model(inputs, outputs))
    pruned.compile("adam", "sparse_categorical_crossentropy", jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    data, labels = rng.normal(size=(256, 12)).astype("float32"), rng.integers(0, 3, 256)
    history = pruned.fit(data, labels, batch_size=32, epochs=2, verbose=0,
                         callbacks=[tfsparse.methods.MagnitudePruning(0.8, frequency=2)])
    assert np.isfinite(history.history["loss"]).all()
    assert pruned.layers[1].compute_dtype == "float16"
    for weight in tfsparse.masked_weights(pruned):
        assert weight.mask.dtype == "float32" and weight.kernel.dtype == "float32"
    assert tfsparse.sparsity(pruned) == pytest.approx(0.8, abs=0.01)
    np.testing.assert_allclose(tfsparse.strip(pruned)(data[:8]), pruned(data[:8]), atol=1e-3)


def test_unknown_mask_function_type_is_rejected():
    with pytest.raises(TypeError, match="mask_function"):
        masked_layers.MaskedDense(3, mask_function=lambda w, training: w.mask)


@pytest.mark.parametrize("name", sorted(LAYER_CASES))
def test_scores_get_gradients_in_training_for_every_layer_kind(name):
    """Keras passes `training` only to calls that declare it (Conv and
    Embedding do not): a layer masked in place must still see it."""
    model, x = make_case(name)
    pruned = tfsparse.prune(model, with_score=True, mask_function=StraightThroughScores())
    scores = [w.score for w in tfsparse.masked_weights(pruned)]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(pruned(x, training=True)))
    gradients = tape.gradient(loss, scores)
    assert all(g is not None and np.any(keras.ops.convert_to_numpy(g) != 0) for g in gradients), name
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(pruned(x, training=False)))
    assert all(g is None for g in tape.gradient(loss, scores))  # inference: the plain mask
