"""tfsparse.masking: masks, kernels and optimizer slots kept consistent for
Keras 3's optimizers, and the one-shot `tfsparse.prune_once`."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import allocation, masking
from tfsparse.methods import MagnitudePruning

OPTIMIZERS = {
    "sgd_momentum": lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    "adam": lambda: keras.optimizers.Adam(1e-2),
    "adamw": lambda: keras.optimizers.AdamW(1e-2, weight_decay=0.5),  # strong decoupled decay
    "lion": lambda: keras.optimizers.Lion(1e-3, weight_decay=0.5),
    "adafactor": lambda: keras.optimizers.Adafactor(epsilon_1=masking.ADAFACTOR_MIN_EPSILON_1),
}
#: Per-weight slots (the kernel's shape) each optimizer keeps.
SLOTS = {"sgd_momentum": 1, "adam": 2, "adamw": 2, "lion": 1, "adafactor": 1}


def data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype("float32")
    return x, (x[:, :4].argmax(axis=1) + (x[:, 4] > 1)) % 4


def masked_model():
    return tfsparse.prune(keras.Sequential([
        keras.Input((12,)), keras.layers.Dense(16, activation="relu", name="a"), keras.layers.Dense(4, name="b"),
    ]))


def trained_model(optimizer, steps=3, model=None):
    """A masked two-layer model trained `steps` steps of 16 examples (slots nonzero)."""
    model = model or masked_model()
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    fit(model, steps)
    return model


def fit(model, steps):
    x, y = data(16 * steps)
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)


def values(variables):
    return [keras.ops.convert_to_numpy(v).copy() for v in variables]


def half_masks(weights, seed=0):
    rng = np.random.default_rng(seed)
    return {w.name: rng.random(w.shape) < 0.5 for w in weights}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_assigning_masks_zeroes_pruned_entries_and_their_slots_and_they_stay_zero(name):
    model = trained_model(OPTIMIZERS[name]())
    weights = tfsparse.masked_weights(model)
    slots = masking.optimizer_slots(model.optimizer)
    for weight in weights:
        found = slots[id(weight.kernel)]
        assert len(found) == SLOTS[name]
        assert all(tuple(s.shape) == weight.shape and np.count_nonzero(values([s])[0]) > 0 for s in found)
    assert len({id(s) for w in weights for s in slots[id(w.kernel)]}) == SLOTS[name] * len(weights)

    new = half_masks(weights)
    before = {w.name: values([w.kernel, *slots[id(w.kernel)]]) for w in weights}
    masking.assign_masks(weights, new, model.optimizer)
    for weight in weights:
        mask = new[weight.name]
        np.testing.assert_array_equal(values([weight.mask])[0], mask.astype("float32"))
        for old, now in zip(before[weight.name], values([weight.kernel, *slots[id(weight.kernel)]])):
            assert np.all(now[~mask] == 0)
            np.testing.assert_array_equal(now[mask], old[mask])  # survivors untouched

    fit(model, 8)
    for weight in weights:
        kernel, mask = values([weight.kernel])[0], new[weight.name]
        assert np.all(np.isfinite(kernel))
        assert np.all(kernel[~mask] == 0), f"{name}: pruned weights of {weight.name} moved"
        assert not np.array_equal(kernel[mask], before[weight.name][0][mask])  # survivors trained


def test_adafactor_factored_moments_are_left_alone():
    """Adafactor keeps, per kernel, a row and a column second moment (shapes
    (rows,) and (columns,)) and a velocity of the kernel's shape, which it
    recomputes from them every step. Only the velocity is a per-weight slot;
    the factored moments are shared statistics and keep their values."""
    model = trained_model(OPTIMIZERS["adafactor"]())
    weight = tfsparse.masked_weights(model)[0]
    optimizer = model.optimizer
    index = optimizer._get_variable_index(weight.kernel)
    factored = [optimizer._r[index], optimizer._c[index]]
    assert [tuple(v.shape) for v in factored] == [(12,), (16,)]
    assert [s.name.rsplit("_", 1)[-1] for s in masking.optimizer_slots(optimizer)[id(weight.kernel)]] == ["velocity"]
    before = values(factored)
    masking.assign_masks(tfsparse.masked_weights(model), half_masks(tfsparse.masked_weights(model)), optimizer)
    for old, now in zip(before, values(factored)):
        np.testing.assert_array_equal(now, old)


def row_and_column_pruned(weight):
    mask = np.ones(weight.shape, bool)
    mask[0, :] = mask[:, 0] = False
    return mask


def test_adafactor_keeps_a_whole_pruned_row_and_column_at_zero_with_a_safe_epsilon():
    model = masked_model()
    weight = tfsparse.masked_weights(model)[0]
    mask = row_and_column_pruned(weight)
    masking.assign_masks([weight], {weight.name: mask})
    trained_model(keras.optimizers.Adafactor(epsilon_1=masking.ADAFACTOR_MIN_EPSILON_1), steps=30, model=model)
    kernel = values([weight.kernel])[0]
    assert np.all(np.isfinite(kernel)) and np.all(kernel[~mask] == 0)


def test_adafactor_with_its_default_epsilon_is_refused_as_it_turns_pruned_weights_into_nan():
    # What Keras does: the pruned weight at row 0, column 0 sees only zero
    # gradients in its row and its column; its factored second moment,
    # epsilon_1 ** 2 / mean, flushes to 0 and 0 / sqrt(0) is NaN.
    model = masked_model()
    weight = tfsparse.masked_weights(model)[0]
    masking.assign_masks([weight], {weight.name: row_and_column_pruned(weight)})  # no optimizer to check yet
    trained_model(keras.optimizers.Adafactor(), steps=1, model=model)
    assert np.isnan(values([weight.kernel])[0]).all()

    model = trained_model(keras.optimizers.LossScaleOptimizer(keras.optimizers.Adafactor()), steps=1)
    weights = tfsparse.masked_weights(model)
    before = values([w.mask for w in weights])
    with pytest.raises(ValueError, match=r"Adafactor\(epsilon_1=1e-15\) or larger\. "
                                         r"Received: optimizer=Adafactor\(epsilon_1=1e-30\)"):
        masking.assign_masks(weights, {w.name: row_and_column_pruned(w) for w in weights}, model.optimizer)
    for old, now in zip(before, values([w.mask for w in weights])):
        np.testing.assert_array_equal(now, old)
    with pytest.raises(ValueError, match="epsilon_1"):  # a method refuses it when fit starts
        MagnitudePruning(0.5, frequency=1).set_model(model)


def test_loss_scale_optimizer_gives_the_inner_optimizers_slots():
    keras.config.set_dtype_policy("mixed_float16")
    model = trained_model(keras.optimizers.Adam(1e-2))  # compile wraps it
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    weights = tfsparse.masked_weights(model)
    slots = masking.optimizer_slots(model.optimizer)
    inner = {id(v) for v in model.optimizer.inner_optimizer.variables}
    for weight in weights:
        assert len(slots[id(weight.kernel)]) == 2 and all(id(s) in inner for s in slots[id(weight.kernel)])
    new = half_masks(weights)
    masking.assign_masks(weights, new, model.optimizer)
    assert all(np.all(v[~new[w.name]] == 0) for w in weights for v in values(slots[id(w.kernel)]))
    fit(model, 8)
    for weight in weights:
        kernel = values([weight.kernel])[0]
        assert np.all(np.isfinite(kernel)) and np.all(kernel[~new[weight.name]] == 0)


def test_nothing_changes_unless_every_mask_and_reset_is_valid():
    model = trained_model(keras.optimizers.Adam(1e-2))
    weights = tfsparse.masked_weights(model)
    slots = masking.optimizer_slots(model.optimizer)
    variables = [v for w in weights for v in (w.mask, w.kernel, *slots[id(w.kernel)])]
    before = values(variables)
    good = half_masks(weights)
    cases = [
        ({"a/kernel": good["a/kernel"]}, None, r"`new_masks` has no mask for 'b/kernel'"),
        ({**good, "b/kernel": np.ones((4, 16), bool)}, None, r"Mask for 'b/kernel' has shape \(4, 16\), expected \(16, 4\)"),
        (good, {"b/kernel": np.ones((4, 16), bool)}, r"Mask for 'b/kernel' has shape \(4, 16\)"),
        (good, {"c/kernel": np.ones((4, 16), bool)}, r"`reset` names \['c/kernel'\]"),
    ]
    for new, reset, message in cases:
        with pytest.raises(ValueError, match=message):
            masking.assign_masks(weights, new, model.optimizer, reset=reset)
        for old, now in zip(before, values(variables)):
            np.testing.assert_array_equal(now, old)


def test_reset_zeroes_kept_positions_and_zero_pruned_false_keeps_pruned_values():
    model = trained_model(keras.optimizers.SGD(0.05, momentum=0.9))
    weight = tfsparse.masked_weights(model)[0]
    slot = masking.optimizer_slots(model.optimizer)[id(weight.kernel)][0]
    kernel, momentum = values([weight.kernel, slot])
    mask = np.ones(weight.shape, bool)
    mask[:6] = False
    reset = np.zeros(weight.shape, bool)
    reset[-1] = True
    masking.assign_masks([weight], {weight.name: mask}, model.optimizer, zero_pruned=False, reset={weight.name: reset})
    for old, now in zip((kernel, momentum), values([weight.kernel, slot])):
        np.testing.assert_array_equal(now[~reset], old[~reset])  # pruned rows keep their values
        assert np.all(now[reset] == 0)


def hand_model():
    """a: 3x2 kernel |w| = 1..6, b: 2x2 kernel |w| = 0.5, 7, 8, 9."""
    model = tfsparse.prune(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="a"),
                                            keras.layers.Dense(2, name="b")]))
    handles = {w.name: w for w in tfsparse.masked_weights(model)}
    handles["a/kernel"].kernel.assign(np.array([[1, -2], [3, -4], [5, -6]], "float32"))
    handles["b/kernel"].kernel.assign(np.array([[0.5, 7], [-8, 9]], "float32"))
    return model


def current_masks(model):
    return masking.masks(tfsparse.masked_weights(model))


def test_prune_once_layer_global_and_per_layer():
    model = hand_model()
    assert tfsparse.prune_once(model, 0.5) is model
    masks = current_masks(model)
    np.testing.assert_array_equal(masks["a/kernel"], [[0, 0], [0, 1], [1, 1]])
    np.testing.assert_array_equal(masks["b/kernel"], [[0, 0], [1, 1]])
    kernel = values([tfsparse.masked_weights(model)[0].kernel])[0]
    np.testing.assert_array_equal(kernel, [[0, 0], [0, -4], [5, -6]])  # pruned entries zeroed

    model = hand_model()
    tfsparse.prune_once(model, 0.5, allocation="global")  # 5 of 10 kept: |w| >= 5, one threshold
    masks = current_masks(model)
    np.testing.assert_array_equal(masks["a/kernel"], [[0, 0], [0, 0], [1, 1]])
    np.testing.assert_array_equal(masks["b/kernel"], [[0, 1], [1, 1]])

    model = hand_model()
    tfsparse.prune_once(model, {"a": 0.5, "b/kernel": 0.25}, allocation=allocation.Global())
    masks = current_masks(model)
    assert masks["a/kernel"].sum() == 3 and masks["b/kernel"].sum() == 3
    np.testing.assert_array_equal(masks["b/kernel"], [[0, 1], [1, 1]])


def test_prune_once_ranks_pruned_weights_below_survivors():
    model = hand_model()
    tfsparse.prune_once(model, 0.5)
    weight = tfsparse.masked_weights(model)[0]
    kernel = values([weight.kernel])[0]
    kernel[1, 1] = 0.0  # a survivor that is exactly 0 still ranks above the pruned zeros
    weight.kernel.assign(kernel)
    tfsparse.prune_once(model, 0.5)
    np.testing.assert_array_equal(current_masks(model)["a/kernel"], [[0, 0], [0, 1], [1, 1]])
    tfsparse.prune_once(model, 0.7)  # masks only shrink: the 0 goes first
    np.testing.assert_array_equal(current_masks(model)["a/kernel"], [[0, 0], [0, 0], [1, 1]])


def test_prune_once_zeroes_the_optimizer_slots_of_a_compiled_model():
    model = trained_model(keras.optimizers.Adam(1e-2))
    tfsparse.prune_once(model, 0.75, allocation="global")
    slots = masking.optimizer_slots(model.optimizer)
    for weight, mask in zip(tfsparse.masked_weights(model), current_masks(model).values()):
        assert all(np.all(v[~mask] == 0) for v in values([weight.kernel, *slots[id(weight.kernel)]]))
    assert tfsparse.sparsity(model) == pytest.approx(0.75, abs=0.01)


@pytest.mark.parametrize("sparsity, message", [
    (1.0, r"`sparsity` must be a number in \[0, 1\). Received: sparsity=1.0"),
    (-0.1, r"Received: sparsity=-0.1"),
    ("0.5", r"Received: sparsity='0.5'"),
    (True, r"Received: sparsity=True"),
    (float("nan"), r"Received: sparsity=nan"),
    ({"a": 0.5}, r"must give every masked weight one sparsity.*Received: sparsity=\{'a': 0.5\}"),
    ({"a": 0.5, "b": 0.5, "c": 0.5}, r"and name nothing else"),
    ({"a": 0.5, "b": 1.5}, r"`sparsity\['b'\]` must be a number in \[0, 1\). Received: sparsity\['b'\]=1.5"),
])
def test_prune_once_refuses_bad_sparsity_before_changing_anything(sparsity, message):
    model = hand_model()
    before = values(model.weights)
    with pytest.raises(ValueError, match=message):
        tfsparse.prune_once(model, sparsity)
    for old, now in zip(before, values(model.weights)):
        np.testing.assert_array_equal(now, old)


def test_prune_once_refuses_an_unmasked_model_and_an_unknown_allocation():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)], name="plain")
    with pytest.raises(ValueError, match=r"`model` must have masked layers to prune, and 'plain' has none"):
        tfsparse.prune_once(plain, 0.5)
    with pytest.raises(ValueError, match=r"Received: allocation='globl'"):
        tfsparse.prune_once(hand_model(), 0.5, allocation="globl")
    with pytest.raises(ValueError, match="2:4"):
        tfsparse.prune_once(hand_model(), 0.75, allocation=allocation.Uniform(granularity="2:4"))
