import warnings

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import allocation
from tfsparse.masking import optimizer_slots
from tfsparse.methods import DSTEE, SET, RigL
from tfsparse.methods.dst import ACTIVE_ROUNDS

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def small_mlp():
    return keras.Sequential([
        keras.Input((28, 28, 1)), keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu", name="fc1"),
        keras.layers.Dense(32, activation="relu", name="fc2"),
        keras.layers.Dense(10, name="out"),
    ])


def compiled(method, model_fn=small_mlp, optimizer="adam"):
    model = tfsparse.prune(model_fn(), **method.layer_options)
    model.compile(optimizer, LOSS, metrics=["accuracy"])
    return model


class CountRecorder(keras.callbacks.Callback):
    """Nonzero counts of every mask and kernel after each batch."""

    def __init__(self):
        super().__init__()
        self.counts = []

    def on_train_batch_end(self, batch, logs=None):
        self.counts.append({
            w.name: (int(np.sum(keras.ops.convert_to_numpy(w.mask))),
                     int(np.count_nonzero(keras.ops.convert_to_numpy(w.layer.effective_kernel(w.attr)))))
            for w in tfsparse.masked_weights(self.model)
        })


@pytest.mark.parametrize("method_class", [DSTEE, RigL, SET])
def test_nonzero_count_per_layer_is_constant_and_masks_move(mnist_subset, method_class):
    data = mnist_subset
    # Sparse from step 0 learns slowly at Adam's default rate: 40 steps need a larger one.
    kwargs = {} if method_class is SET else {"gradient_data": (data.x_train, data.y_train)}
    method = method_class(0.9, update_every=5, **kwargs)
    model = compiled(method, optimizer=keras.optimizers.Adam(5e-3))
    recorder = CountRecorder()
    model.fit(data.x_train[:2560], data.y_train[:2560], batch_size=128, epochs=2, verbose=0,
              callbacks=[method, recorder])
    first = recorder.counts[0]
    for counts in recorder.counts:
        for name, (mask_count, _) in counts.items():
            assert mask_count == first[name][0]
    # The effective kernel has at most the mask's count of nonzeros (grown weights start at 0).
    assert all(nonzero <= count for count, nonzero in recorder.counts[-1].values())
    assert tfsparse.sparsity(model) == pytest.approx(0.9, abs=1e-3)
    assert len(method.history) == 40 * 3 // 4 // 5  # rounds every 5 steps up to 75 % of 40 steps
    assert all(h["grown"] > 0 for h in method.history[:3])
    assert method.history[-1]["coverage"] > method.history[0]["coverage"] > 0.1
    _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
    assert accuracy > 0.6


def test_erk_densities_follow_the_formula():
    method = SET(0.8, update_every=1)
    model = tfsparse.prune(keras.Sequential([
        keras.Input((20,)), keras.layers.Dense(30, name="a"), keras.layers.Dense(10, name="b")]),
        **method.layer_options)
    model.compile("sgd", "mse")
    method.set_model(model)
    method.initialize_masks()
    # raw densities (20+30)/600 and (30+10)/300; one factor e with
    # e * (50 + 40) = 0.2 * 900 gives e = 2: densities 1/6 and 4/15.
    counts = {name: int(mask.sum()) for name, mask in method.masks().items()}
    assert counts == {"a/kernel": 100, "b/kernel": 80}


def test_erk_makes_saturated_layers_dense():
    densities = allocation.ERK().densities({"big": (500, 400), "tiny": (3, 2)}, 0.5)
    assert densities["tiny"] == 1.0
    assert 500 * 400 * densities["big"] + 6 == pytest.approx(0.5 * (200_000 + 6))


def hand_made(method):
    """One Dense(6 -> 1) with three active weights and planted slots."""
    model = tfsparse.prune(keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, use_bias=False)]),
                           **method.layer_options)
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    weight = tfsparse.masked_weights(model)[0]
    weight.mask.assign(np.array([[1], [1], [1], [0], [0], [0]], "float32"))
    # Planted values at pruned positions, to see that grown weights restart from 0.
    weight.kernel.assign(np.array([[0.5], [0.1], [-0.9], [0.3], [0.3], [0.3]], "float32"))
    for slot in optimizer_slots(model.optimizer)[id(weight.kernel)]:
        slot.assign(np.full((6, 1), 0.7, "float32"))
    weight.state(ACTIVE_ROUNDS).assign(np.array([[3], [3], [3], [0], [5], [0]], "float32"))
    method.set_model(model)
    method.stop_step = 1000
    gradient = np.array([[0.0], [0.0], [0.0], [0.2], [0.7], [0.1]], "float32")
    method._gradients = lambda step: {weight.name: gradient}
    return model, weight


@pytest.mark.parametrize("method, grown_index", [
    (RigL(0.5, gradient_data=(None, None)), 4),  # largest |gradient|
    (DSTEE(0.5, c=1.0, gradient_data=(None, None)), 3),  # |g| + c sqrt(ln t / (N + 1)): 2.35 > 2.25 > 1.58
])
def test_grow_score_picks_the_expected_weight(method, grown_index):
    model, weight = hand_made(method)
    method.update(step=100)  # drop fraction 0.15 * (1 + cos(0.1 pi)) of 3 -> 1 weight
    mask = keras.ops.convert_to_numpy(weight.mask).ravel()
    expected = np.zeros(6)
    expected[[0, 2, grown_index]] = 1  # weight 1 (|0.1|) is dropped
    np.testing.assert_array_equal(mask, expected)
    kernel = keras.ops.convert_to_numpy(weight.kernel).ravel()
    assert kernel[grown_index] == 0 and kernel[1] == 0
    assert kernel[0] == 0.5 and kernel[2] == pytest.approx(-0.9)
    for slot in optimizer_slots(model.optimizer)[id(weight.kernel)]:
        values = keras.ops.convert_to_numpy(slot).ravel()
        assert values[grown_index] == 0 and values[1] == 0 and values[0] == pytest.approx(0.7)
    # The counter counted the round in which weights 0-2 were active.
    rounds = keras.ops.convert_to_numpy(weight.state(ACTIVE_ROUNDS)).ravel()
    np.testing.assert_array_equal(rounds, [4, 4, 4, 0, 5, 0])
    record = method.history[-1]
    assert record["grown"] == 1 and record["exploitation"] == pytest.approx([0.7, 0.2][grown_index == 3])
    if method.c:
        assert record["exploration"] == pytest.approx(np.sqrt(np.log(100)))


def test_c_zero_equals_rigl(mnist_subset):
    data = mnist_subset
    masks = []
    for method_class, kwargs in ((DSTEE, {"c": 0.0}), (RigL, {})):
        keras.utils.set_random_seed(1)
        method = method_class(0.8, update_every=4, gradient_data=(data.x_train, data.y_train), **kwargs)
        model = compiled(method)
        model.fit(data.x_train[:1280], data.y_train[:1280], batch_size=128, epochs=2, shuffle=False,
                  verbose=0, callbacks=[method])
        masks.append(method.masks())
        assert len(method.history) == 3
    for name in masks[0]:
        np.testing.assert_array_equal(masks[0][name], masks[1][name])


def test_masks_and_counters_survive_keras_save_and_load(mnist_subset, tmp_path):
    data = mnist_subset
    method = DSTEE(0.9, update_every=5, gradient_data=(data.x_train, data.y_train))
    model = compiled(method)
    model.fit(data.x_train[:1280], data.y_train[:1280], batch_size=128, epochs=1, verbose=0, callbacks=[method])
    model.save(tmp_path / "dst.keras")
    loaded = keras.models.load_model(tmp_path / "dst.keras")
    for before, after in zip(tfsparse.masked_weights(model), tfsparse.masked_weights(loaded)):
        for variable in ("mask", "kernel"):
            np.testing.assert_array_equal(getattr(before, variable), getattr(after, variable))
        counters = keras.ops.convert_to_numpy(after.state(ACTIVE_ROUNDS))
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(before.state(ACTIVE_ROUNDS)), counters)
        assert counters.max() == len(method.history)


def test_clear_errors():
    with pytest.raises(ValueError, match="needs `gradient_data`"):
        DSTEE(0.9)
    with pytest.raises(ValueError, match="target_sparsity"):
        SET(1.0)
    with pytest.raises(ValueError, match="update_every"):
        SET(0.9, update_every=0)
    model = tfsparse.prune(small_mlp())  # without the counters
    model.compile("adam", LOSS)
    with pytest.raises(ValueError, match=r"active_rounds.*tfsparse.prune\(model, \*\*method.layer_options\)` with this SET"):
        SET(0.9).set_model(model)
    x, y = np.zeros((64, 28, 28, 1), "float32"), np.zeros(64, "int32")
    method = SET(0.9, update_every=10)
    model = compiled(method)
    with pytest.raises(ValueError, match="never change"):
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[method])


def test_too_few_mask_updates_are_said_with_settings_that_give_enough():
    from tfsparse.methods import BudgetWarning

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(640, 16)).astype("float32"), rng.integers(0, 4, 640)

    def fit(**options):
        method = SET(0.8, **options)
        model = keras.Sequential([keras.Input((16,)), keras.layers.Dense(32), keras.layers.Dense(4)])
        model = tfsparse.prune(model, **method.layer_options)
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x, y, batch_size=32, epochs=5, verbose=0, callbacks=[method])  # 100 steps
        return [str(w.message) for w in caught if issubclass(w.category, BudgetWarning)]

    (message,) = fit(update_every=25)  # rounds at steps 25, 50, 75 (stop at 75)
    assert "changes the masks 3 time(s)" in message and "update_every <= 7" in message
    assert "at least 333 training steps" in message
    assert fit(update_every=7) == []  # the advice: 10 rounds by step 75
