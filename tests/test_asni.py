import math

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse.masking import optimizer_slots
from tfsparse.methods import ASNI, AmenableInit, amenable_initialization, amenable_model
from tfsparse_app import zoo
from tfsparse_app.plots import plot_asni2_centroids, plot_asni_schedule


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_schedule_and_prune_fractions_follow_the_formula_and_skip_rule():
    method = ASNI(magnitude=0.98, scale=5, total_epochs=50)
    method.params = {"epochs": 50}
    method.on_train_begin()
    S = lambda t: 0.98 * sigmoid((t - 25) / 5)
    for t in (0, 1, 24, 25, 48):
        assert method.schedule(t) == pytest.approx(S(t))
        expected = (S(t) - (S(t - 1) if t else 0)) / (1 - (S(t - 1) if t else 0))
        assert method.prune_fraction(t) == pytest.approx(expected)
    # A steep schedule: tiny early increments (<= 0.1 point) are skipped.
    steep = ASNI(magnitude=0.9, scale=1, total_epochs=30)
    steep.params = {"epochs": 30}
    steep.on_train_begin()
    increments = [steep.schedule(t) - steep.schedule(t - 1) for t in range(1, 30)]
    skipped = [t for t, inc in zip(range(1, 30), increments) if inc <= 0.001]
    assert skipped and all(steep.prune_fraction(t) == 0.0 for t in skipped)
    # With a target, S(T - 2) is the target (the reported network).
    target = ASNI(target_sparsity=0.97, scale=5)
    target.params = {"epochs": 50}
    target.on_train_begin()
    assert target.schedule(48) == pytest.approx(0.97)
    with pytest.raises(ValueError, match="exactly one"):
        ASNI(target_sparsity=0.9, magnitude=0.98)


def test_one_global_threshold_across_layers():
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(2, name="b")(keras.layers.Dense(3, name="a")(inputs))
    model = tfsparse.prune(keras.Model(inputs, outputs))
    a = np.array([[0.9, -0.1, 0.5], [0.05, 0.7, -0.3], [0.2, -0.8, 0.01], [0.6, 0.02, -0.4]], "float32")
    b = np.array([[0.03, -0.95], [0.15, 0.35], [-0.25, 0.45]], "float32")
    handles = {w.name: w for w in tfsparse.masked_weights(model)}
    handles["a/kernel"].kernel.assign(a)  # the raw variable; layer.kernel is the masked tensor
    handles["b/kernel"].kernel.assign(b)
    model.compile("adam", "mse")
    method = ASNI(magnitude=0.5, scale=0.5, total_epochs=3)
    method.set_model(model)
    method.params = {"epochs": 3}
    method.on_train_begin()
    method.on_epoch_end(0)
    everything = np.concatenate([a.ravel(), b.ravel()])
    keep = len(everything) - round(method.prune_fraction(0) * len(everything))
    threshold = np.sort(np.abs(everything))[-keep]
    for layer, kernel in (("a", a), ("b", b)):
        mask = keras.ops.convert_to_numpy(model.get_layer(layer).mask) > 0
        np.testing.assert_array_equal(mask, np.abs(kernel) >= threshold)


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.Adam(1e-3),
    lambda: keras.optimizers.SGD(0.05, momentum=0.9, weight_decay=5e-4),
])
def test_pruned_weights_stay_zero_and_masks_only_shrink(mnist_subset, optimizer):
    model = tfsparse.prune(zoo.lenet_300_100())
    model.compile(optimizer(), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    method = ASNI(target_sparsity=0.8, scale=0.4)

    class Snapshot(keras.callbacks.Callback):
        masks = []

        def on_epoch_end(self, epoch, logs=None):
            self.masks.append(method.masks())

    model.fit(mnist_subset.x_train[:1000], mnist_subset.y_train[:1000], batch_size=100, epochs=6,
              verbose=0, callbacks=[method, Snapshot()])
    expected = [method.prune_fraction(t) > 0 for t in range(5)] + [False]  # no prune after the last epoch
    assert [h["pruned"] for h in method.history] == expected and expected[0] is False  # S(0) <= 0.1 %: skipped
    assert tfsparse.sparsity(model) == pytest.approx(0.8, abs=0.002)
    for before, after in zip(Snapshot.masks, Snapshot.masks[1:]):
        assert all(not np.any(after[n] & ~before[n]) for n in before)
    slots = optimizer_slots(model.optimizer)
    for weight in tfsparse.masked_weights(model):
        pruned = keras.ops.convert_to_numpy(weight.mask) == 0
        assert np.all(keras.ops.convert_to_numpy(weight.kernel)[pruned] == 0)
        for slot in slots.get(id(weight.kernel), []):
            assert np.all(keras.ops.convert_to_numpy(slot)[pruned] == 0)


def hand_made_model():
    model = tfsparse.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d")]))
    kernel = np.array([[0.4, -0.2], [0.0, 0.8], [-0.6, 0.1]], "float32")
    mask = np.array([[1, 1], [0, 1], [1, 0]], "float32")
    layer = model.get_layer("d")
    weight = layer.masked_weights[0]
    weight.kernel.assign(kernel)
    weight.mask.assign(mask)
    layer.bias.assign(np.array([0.3, -0.5], "float32"))
    return model


def test_c_plus_and_c_minus_on_a_hand_made_kernel():
    init = amenable_initialization(hand_made_model())
    assert init.c_plus["d/kernel"] == pytest.approx((0.4 + 0.8) / 2)  # 0.1 is pruned
    assert init.c_minus["d/kernel"] == pytest.approx((-0.2 - 0.6) / 2)
    fresh = amenable_model(hand_made_model(), init)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(fresh.get_layer("d").kernel), [[0.6, -0.4], [0, 0.6], [-0.4, 0]], atol=1e-6)
    np.testing.assert_array_equal(fresh.get_layer("d").bias.numpy(), [0, 0])
    quantized = amenable_model(hand_made_model(), amenable_initialization(hand_made_model(), quantize_biases=True))
    np.testing.assert_allclose(quantized.get_layer("d").bias.numpy(), [0.3, -0.5])


def test_artifact_round_trip_size_and_corruption():
    init = amenable_initialization(hand_made_model(), quantize_biases=True)
    loaded = AmenableInit.from_bytes(init.to_bytes())
    assert loaded.names == init.names and loaded.c_plus == init.c_plus and loaded.c_minus == init.c_minus
    np.testing.assert_array_equal(loaded.masks["d/kernel"], init.masks["d/kernel"])
    np.testing.assert_array_equal(loaded.positive["d/kernel"], init.positive["d/kernel"])
    np.testing.assert_array_equal(loaded.biases["d/kernel"][2], [1, -1])
    with pytest.raises(ValueError, match="`data` is not an ASNI-II initialization"):
        AmenableInit.from_bytes(init.to_bytes()[:50])


def test_asni2_on_mnist_trains_and_is_tiny(mnist_subset, tmp_path):
    model = tfsparse.prune(zoo.lenet_300_100())
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    method = ASNI(target_sparsity=0.9, scale=0.4)
    model.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=100, epochs=6, verbose=0, callbacks=[method])
    init = amenable_initialization(model)
    assert init.size_bytes() < init.dense_size_bytes() / 25  # 1 + ~0.1 bits per weight vs 32
    second = amenable_model(model, init)
    second.compile(keras.optimizers.Adam(1e-3), loss)
    history = second.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=100, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert tfsparse.sparsity(second) == pytest.approx(tfsparse.sparsity(model), abs=1e-6)  # mask fixed
    plot_asni_schedule(method.schedule, method.history, tmp_path / "schedule.png")
    plot_asni2_centroids(model, init, tmp_path / "centroids.png")
    assert (tmp_path / "schedule.png").stat().st_size > 1000 and (tmp_path / "centroids.png").stat().st_size > 1000


@pytest.mark.parametrize("epochs", [6, 8])
def test_default_scale_reaches_the_target_on_a_short_budget(epochs):
    """`tfsparse run --method asni --sparsity 0.95 --epochs 8` used to stop
    with "cannot be reached" (k = 5 needs ~34 epochs); k now fits the budget."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(256, 20)).astype("float32"), rng.integers(0, 3, 256)
    model = tfsparse.prune(keras.Sequential([keras.Input((20,)), keras.layers.Dense(64), keras.layers.Dense(3)]))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    method = ASNI(target_sparsity=0.95)
    model.fit(x, y, batch_size=64, epochs=epochs, verbose=0, callbacks=[method])
    assert method.schedule.scale == pytest.approx(tfsparse.schedules.Sigmoid.default_scale(epochs, 0.95))
    assert method.history[epochs - 2]["sparsity"] == pytest.approx(0.95, abs=0.002)
    assert tfsparse.sparsity(model) == pytest.approx(0.95, abs=0.002)
