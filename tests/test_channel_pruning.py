"""Channel dependency groups, ChannelPruning and shrink, on models we did not write."""

import warnings

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse.methods import ChannelPruning
from tfsparse.shrink import ShrinkWarning
from tfsparse_app import zoo

L = keras.layers
APPLICATIONS = {
    "MobileNetV2": lambda: keras.applications.MobileNetV2(input_shape=(32, 32, 3), weights=None, classes=10),
    "MobileNetV3Small": lambda: keras.applications.MobileNetV3Small(
        input_shape=(32, 32, 3), weights=None, classes=10),
    "ResNet50": lambda: keras.applications.ResNet50(input_shape=(32, 32, 3), weights=None, classes=10),
    "EfficientNetB0": lambda: keras.applications.EfficientNetB0(input_shape=(32, 32, 3), weights=None, classes=10),
    "DenseNet121": lambda: keras.applications.DenseNet121(input_shape=(32, 32, 3), weights=None, classes=10),
}
#: Groups the analysis must find: producers tied by residual sums or
#: squeeze-and-excitation gates, and groups that pass a Reshape.
EXPECTED_GROUPS = {
    "MobileNetV2": [{"block_1_project", "block_2_project"}, {"block_6_expand"}],
    "MobileNetV3Small": [{"conv", "expanded_conv_squeeze_excite_conv_1"}, {"expanded_conv_squeeze_excite_conv"}],
    "ResNet50": [{"conv2_block1_0_conv", "conv2_block1_3_conv", "conv2_block2_3_conv", "conv2_block3_3_conv"}],
    "EfficientNetB0": [{"stem_conv", "block1a_se_expand"}, {"block1a_se_reduce"}],
    "DenseNet121": [{"conv2_block1_2_conv"}, {"conv1_conv"}],
}


def producers(group):
    return {s.layer.name for s in group.producers}


def drop_channels(groups, fraction, seed=0):
    """Zeroes the reader rows of a random `fraction` of every prunable group's
    channels (the producers keep their filters: those channels still carry
    values, which nothing reads)."""
    rng = np.random.default_rng(seed)
    for group in groups.prunable:
        dropped = np.flatnonzero(rng.random(group.size) < fraction)
        for kernel_slice in group.readers:
            variable = getattr(kernel_slice.layer, kernel_slice.attr)
            variable.assign(kernel_slice.zero_channels(keras.ops.convert_to_numpy(variable), dropped))


def randomize_batch_norms(model, seed=0):
    """Nonzero shifts, so that a dropped channel is not zero by accident."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, L.BatchNormalization):
            layer.beta.assign(rng.normal(size=layer.beta.shape))
            layer.moving_mean.assign(rng.normal(size=layer.beta.shape))


def max_relative_difference(a, b, x):
    expected, got = np.asarray(a(x, training=False)), np.asarray(b(x, training=False))
    return np.abs(expected - got).max() / np.abs(expected).max()


@pytest.mark.parametrize("name", sorted(APPLICATIONS))
def test_keras_applications_resolve_into_groups_and_shrink_exactly(name):
    model = APPLICATIONS[name]()
    groups = tfsparse.channel_groups(model)
    found = [producers(g) for g in groups.prunable]
    for expected in EXPECTED_GROUPS[name]:
        assert expected in found, (expected, groups.summary())
    # Only the classifier's logits are kept (softmax, model output).
    assert [producers(g) for g in groups.blocked] in ([{"predictions"}], [{"logits"}]), groups.summary()
    randomize_batch_norms(model)
    drop_channels(groups, 0.5)
    small = tfsparse.shrink(model)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    assert max_relative_difference(model, small, x) <= 1e-5
    assert small.count_params() < 0.45 * model.count_params()
    assert [type(l).__name__ for l in small.layers[1:]] == [type(l).__name__ for l in model.layers[1:]]


def test_convnext_lists_what_blocks_its_residual_stream_and_shrinks_its_mlps():
    model = keras.applications.ConvNeXtTiny(input_shape=(32, 32, 3), weights=None, classes=10)
    groups = tfsparse.channel_groups(model)
    prunable = [producers(g) for g in groups.prunable]
    assert {"convnext_tiny_stage_0_block_0_pointwise_conv_1"} in prunable
    assert len(prunable) == 18  # the 18 inverted-bottleneck MLPs
    reasons = " ".join(g.reason for g in groups.groups)
    # The residual stream: a custom layer, grouped (not depthwise) convolutions, nested stems.
    assert "read by 'convnext_tiny_stage_0_block_0_layer_scale' (LayerScale)" in reasons
    assert "with groups=96" in reasons and "the nested model 'convnext_tiny_stem'" in reasons
    drop_channels(groups, 0.5)
    small = tfsparse.shrink(model)
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype("float32")
    assert max_relative_difference(model, small, x) <= 1e-5
    hidden = small.get_layer("convnext_tiny_stage_0_block_0_pointwise_conv_1")
    assert 150 < hidden.units < 230  # about half of 384


def transformer_classifier():
    inputs = keras.Input((16,), dtype="int32")
    x = L.Embedding(100, 32)(inputs)
    x = L.LayerNormalization()(x + L.MultiHeadAttention(num_heads=4, key_dim=8)(x, x))
    hidden = L.Dense(64, activation="relu", name="ffn_in")(x)
    x = L.LayerNormalization()(x + L.Dense(32, name="ffn_out")(hidden))
    x = L.Dense(16, activation="gelu", name="head")(x[:, 0])
    return keras.Model(inputs, L.Dense(3)(x))


def test_attention_heads_and_feed_forward_channels_are_removed():
    model = tfsparse.prune(transformer_classifier())
    method = ChannelPruning(0.5)
    with pytest.warns(tfsparse.PruningCoverageWarning, match="LayerNormalization"):
        method.set_model(model)
    assert sorted(g.describe() for g in method.groups) == [
        "16 channels of head", "4 heads of query, key, value", "64 channels of ffn_in"]
    method.update_masks(0.5)
    small = tfsparse.shrink(model)
    attention = next(l for l in small.layers if isinstance(l, L.MultiHeadAttention))
    assert attention.num_heads == 2
    assert small.get_layer("ffn_in").units == 32 and small.get_layer("head").units == 8
    x = np.random.default_rng(0).integers(0, 100, size=(4, 16))
    assert max_relative_difference(model, small, x) <= 1e-5


def concatenating_net():
    inputs = keras.Input((8, 8, 3))
    a = L.Conv2D(6, 3, padding="same", activation="relu", name="a")(inputs)
    b = L.Conv2D(4, 1, activation="relu", name="b")(inputs)
    x = L.BatchNormalization(name="bn")(L.Concatenate()([a, b]))
    x = L.Conv2D(5, 3, name="c")(x)
    x = L.Flatten()(L.MaxPooling2D()(x))
    return keras.Model(inputs, L.Dense(2)(L.Dense(7, name="d")(x)))


def test_concatenate_offsets_and_flatten_repeats_index_the_right_rows():
    model = concatenating_net()
    groups = {frozenset(producers(g)): g for g in tfsparse.channel_groups(model).groups}
    reader = groups[frozenset({"b"})].readers[0]
    assert (reader.layer.name, reader.axis, reader.offset) == ("c", 2, 6)
    flattened = groups[frozenset({"c"})].readers[0]
    assert (flattened.layer.name, flattened.repeat, flattened.stride) == ("d", 9, 5)
    np.testing.assert_array_equal(flattened.positions([1]), [1 + 5 * p for p in range(9)])
    randomize_batch_norms(model)
    for names, dropped in (({"a"}, [0, 5]), ({"b"}, [2]), ({"c"}, [1, 3])):
        kernel_slice = groups[frozenset(names)].readers[0]
        kernel_slice.layer.kernel.assign(kernel_slice.zero_channels(kernel_slice.layer.kernel.numpy(), dropped))
    small = tfsparse.shrink(model)
    assert small.get_layer("bn").gamma.shape == (7,)
    assert small.get_layer("d").kernel.shape == (27, 7)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    assert max_relative_difference(model, small, x) <= 1e-5


def test_channel_pruning_trains_group_aligned_masks_that_shrink_and_export(tmp_path, mnist_subset):
    data = mnist_subset
    model = tfsparse.prune(zoo.lenet5(data.input_shape, 10))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    method = ChannelPruning(0.5, frequency=10, criterion="l1")
    model.fit(data.x_train[:2048], data.y_train[:2048], batch_size=64, epochs=2, callbacks=[method], verbose=0)
    for group in method.groups:  # every slice of a dropped channel is masked, in every kernel
        masks = method.masks()
        dropped = ~group.readers[0].channel_norms(masks[method._names[method._key(group.readers[0])]],
                                                  group.size, 0)
        assert dropped.sum() == group.size - round(group.size * 0.5)
        for kernel_slice in group.kernel_slices:
            alive = kernel_slice.channel_norms(masks[method._names[method._key(kernel_slice)]], group.size, 0)
            np.testing.assert_array_equal(alive, ~dropped)
    model.save(tmp_path / "masked.keras")
    loaded = keras.saving.load_model(tmp_path / "masked.keras")
    small = tfsparse.shrink(loaded)
    assert [small.get_layer(n).filters for n in ("conv1", "conv2")] == [3, 8]
    assert small.get_layer("fc1").units == 60
    np.testing.assert_allclose(small.predict(data.x_test[:64], verbose=0),
                               model.predict(data.x_test[:64], verbose=0), atol=1e-5)
    result = tfsparse.export.to_tflite(small, tmp_path / "small.tflite", verification_data=data.x_test[:100])
    assert result.size_bytes < 0.3 * tfsparse.export.to_tflite(
        tfsparse.strip(model), tmp_path / "masked.tflite", sparse=False).size_bytes


@pytest.mark.parametrize("penalty, measure", [
    ("group_lasso", lambda m: sum(np.abs(m.get_layer(n).kernel.numpy()).sum() for n in ("fc1", "fc2"))),
    ("slimming", lambda m: np.abs(m.get_layer("bn").gamma.numpy()).sum()),
])
def test_penalties_shrink_what_they_penalize(penalty, measure):
    def train(method):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((20,))
        x = L.BatchNormalization(name="bn")(L.Dense(32, name="fc1")(inputs))
        x = L.Dense(16, activation="relu", name="fc2")(L.ReLU()(x))
        model = tfsparse.prune(keras.Model(inputs, L.Dense(2)(x)))
        model.compile(keras.optimizers.SGD(0.1), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x_data = np.random.default_rng(0).normal(size=(512, 20)).astype("float32")
        model.fit(x_data, (x_data[:, 0] > 0).astype("int64"), epochs=2, batch_size=32, callbacks=[method], verbose=0)
        return measure(model)

    plain = train(ChannelPruning(0.25, frequency=1000, schedule=lambda step: 0.0))
    penalized = train(ChannelPruning(0.25, frequency=1000, schedule=lambda step: 0.0,
                                     penalty=penalty, penalty_strength=0.5))
    assert penalized < 0.8 * plain


def test_shrink_refuses_masks_that_are_not_channel_aligned():
    model = tfsparse.prune(zoo.lenet_300_100((28, 28, 1), 10))
    method = tfsparse.methods.MagnitudePruning(0.5)
    method.set_model(model)
    method.update_masks(0.5)
    with pytest.raises(ValueError, match="No channel of .* can be removed.*ChannelPruning"):
        tfsparse.shrink(model)


def test_shrink_warns_about_dead_channels_it_must_keep():
    inputs = keras.Input((6,))
    hidden = L.Dense(8, name="hidden")(inputs)
    x = L.Dense(4, name="mixer")(hidden)
    model = keras.Model(inputs, [L.Dense(2, name="out")(x), hidden])  # `hidden` is also an output
    model.get_layer("mixer").kernel.assign(np.r_[np.zeros((4, 4)), np.ones((4, 4))])  # reads half of hidden
    model.get_layer("out").kernel.assign(np.r_[np.zeros((2, 2)), np.ones((2, 2))])  # reads half of mixer
    with pytest.warns(ShrinkWarning, match="8 channels of hidden: reaches a model output"):
        small = tfsparse.shrink(model)
    assert small.get_layer("mixer").units == 2 and small.get_layer("hidden").units == 8


def test_unfollowable_models_and_bad_arguments_are_refused_clearly():
    class Subclassed(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = L.Dense(3)

        def call(self, x):
            return self.dense(x)

    subclassed = Subclassed()
    subclassed(np.zeros((1, 4), "float32"))
    with pytest.raises(ValueError, match="subclassed"):
        tfsparse.channel_groups(subclassed)
    with pytest.raises(ValueError, match="criterion.*Received: criterion='l3'"):
        ChannelPruning(0.5, criterion="l3")
    with pytest.raises(ValueError, match="penalty.*Received: penalty='l1'"):
        ChannelPruning(0.5, penalty="l1")
    with pytest.raises(ValueError, match="target_sparsity"):
        ChannelPruning(1.0)
    only_output = tfsparse.prune(keras.Sequential([keras.Input((4,)), L.Dense(3)]))
    with pytest.raises(ValueError, match="(?s)no channel group it can prune.*reaches a model output"):
        ChannelPruning(0.5).set_model(only_output)


def test_custom_layers_block_their_groups_with_a_reason():
    class Scale(L.Layer):
        def call(self, x):
            return x * 2.0

    class ScaledDense(L.Dense):  # a subclass of a known layer may compute anything
        def call(self, x):
            return super().call(x) * 2.0

    inputs = keras.Input((5,))
    x = Scale(name="scale")(L.Dense(6, name="fc")(inputs))
    x = L.Dense(4, name="fc2")(x)
    model = keras.Model(inputs, L.Dense(2)(ScaledDense(3, name="scaled")(L.Dense(5, name="fc3")(x))))
    groups = {frozenset(producers(g)): g for g in tfsparse.channel_groups(model).groups}
    assert not groups[frozenset({"fc"})].prunable
    assert "read by 'scale' (Scale), which tfsparse cannot follow" in groups[frozenset({"fc"})].reason
    assert "read by 'scaled' (ScaledDense), which tfsparse cannot follow" in groups[frozenset({"fc3"})].reason
    assert groups[frozenset({"fc2"})].prunable
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tfsparse.channel_groups(model).summary()
