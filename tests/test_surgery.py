import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import layers as masked_layers

L = keras.layers


def branchy_model():
    """Branches, a shared layer and a nested model."""
    inner = keras.Sequential([keras.Input((16,)), L.Dense(16, activation="relu", name="inner_dense")], name="inner")
    inputs = keras.Input((8,))
    shared = L.Dense(16, activation="relu", name="shared")
    a = shared(inputs)
    b = shared(L.Dense(8, name="pre_b")(inputs))
    merged = L.Add()([a, b])
    merged = L.BatchNormalization()(merged)
    out = L.Dense(3, name="head")(inner(merged))
    return keras.Model(inputs, out)


def test_functional_with_shared_and_nested_layers():
    model = branchy_model()
    x = np.random.default_rng(0).normal(size=(5, 8)).astype("float32")
    pruned = tfsparse.prune(model)
    np.testing.assert_allclose(pruned(x), model(x), atol=1e-6)
    names = sorted(w.name for w in tfsparse.masked_weights(pruned))
    assert names == ["head/kernel", "inner_dense/kernel", "pre_b/kernel", "shared/kernel"]
    # The shared layer stays one layer (one mask) used twice.
    shared = [l for l in pruned.layers if l.name == "shared"]
    assert len(shared) == 1 and masked_layers.is_masked(shared[0])
    for weight in tfsparse.masked_weights(pruned):
        weight.mask.assign((np.random.default_rng(1).random(weight.shape) > 0.5).astype("float32"))
    stripped = tfsparse.strip(pruned)
    np.testing.assert_allclose(stripped(x), pruned(x), atol=1e-6)
    assert not any(masked_layers.is_masked(l) for l in stripped.layers)
    assert tfsparse.summary(stripped, print_fn=None)["total"]["sparsity"] == pytest.approx(
        tfsparse.sparsity(pruned))


def test_selection_by_pattern_class_callable_and_exclude():
    model = branchy_model()
    by_name = lambda pruned: sorted(w.name for w in tfsparse.masked_weights(pruned))
    assert by_name(tfsparse.prune(model, layers="pre_*")) == ["pre_b/kernel"]
    assert by_name(tfsparse.prune(model, layers=[L.Dense], exclude=["head", "inner_dense"])) == ["pre_b/kernel", "shared/kernel"]
    assert by_name(tfsparse.prune(model, layers=lambda l: l.name == "head")) == ["head/kernel"]


def test_bad_selections_and_models_raise_clear_errors():
    model = branchy_model()
    with pytest.raises(ValueError, match=r"matches no prunable layer.*layers='nothing\*'"):
        tfsparse.prune(model, layers="nothing*")
    with pytest.raises(ValueError, match="cannot prune.*batch_normalization"):
        tfsparse.prune(model, layers=L.BatchNormalization)
    with pytest.raises(ValueError, match="already pruned"):
        tfsparse.prune(tfsparse.prune(model))
    no_prunable = keras.Sequential([keras.Input((4,)), L.ReLU()])
    with pytest.raises(ValueError, match="no layer that tfsparse can prune"):
        tfsparse.prune(no_prunable)
    with pytest.raises(TypeError, match="must be a keras.Model"):
        tfsparse.prune("model.keras")
    with pytest.raises(ValueError, match="not built"):
        tfsparse.prune(keras.Sequential([L.Dense(3)]))


def test_subclassed_model_is_pruned_as_a_copy_or_in_place():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    expected = keras.ops.convert_to_numpy(net(x))
    pruned = tfsparse.prune(net)
    assert pruned is not net and isinstance(pruned, Net)
    assert not masked_layers.is_masked(net.dense) and masked_layers.is_masked(pruned.dense)
    np.testing.assert_array_equal(pruned(x), expected)
    in_place = tfsparse.prune(net, inplace=True)
    assert in_place is net and masked_layers.is_masked(net.dense)


def test_masked_layers_work_directly_in_a_subclassed_model():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = masked_layers.MaskedDense(3)

        def call(self, x):
            return self.dense(x)

    net = Net()
    net(np.zeros((1, 4), "float32"))
    net.compile("sgd", "mse")
    net.fit(np.ones((64, 4)), np.ones((64, 3)), epochs=2, batch_size=8, verbose=0,
            callbacks=[tfsparse.methods.MagnitudePruning(0.5, frequency=1)])
    assert tfsparse.sparsity(net) == pytest.approx(0.5)


def test_prune_keeps_the_compile_config_and_summary_counts():
    model = keras.Sequential([keras.Input((10,)), L.Dense(4, name="d")])
    model.compile("adam", "mse")
    pruned = tfsparse.prune(model)
    assert pruned.compiled
    table = tfsparse.summary(pruned, print_fn=None)
    assert table["layers"][0] | {"path": None} == {"name": "d/kernel", "path": None, "type": "Dense",
                                  "shape": (10, 4), "params": 40, "nonzeros": 40, "sparsity": 0.0,
                                  "masked": True, "reason": None}
    printed = []
    tfsparse.summary(model, print_fn=printed.append)
    assert "d/kernel" in printed[0] and "total" in printed[0]
