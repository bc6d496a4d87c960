"""Models users have: operation nodes, attention, recurrent layers, custom
and subclassed layers, wrappers; honest coverage; strip without the
optimizer; LoRA and quantize() next to masks; every method on nested masks."""

import warnings

import keras
import numpy as np
import pytest
from method_cases import CASES

import tfsparse
from tfsparse import layers as masked_layers
from tfsparse.surgery import PruningCoverageWarning, is_pruned

L = keras.layers
VOCAB, LENGTH = 40, 12


@keras.saving.register_keras_serializable(package="tests")
class TransformerBlock(L.Layer):
    """The keras.io text-classification block (no build(), sublayers in __init__)."""

    def __init__(self, embed_dim, num_heads, ff_dim, **kwargs):
        super().__init__(**kwargs)
        self.embed_dim, self.num_heads, self.ff_dim = embed_dim, num_heads, ff_dim
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.norm1, self.norm2 = L.LayerNormalization(), L.LayerNormalization()

    def call(self, inputs):
        attended = self.norm1(inputs + self.att(inputs, inputs))
        return self.norm2(attended + self.ffn(attended))

    def get_config(self):
        return {**super().get_config(), "embed_dim": self.embed_dim,
                "num_heads": self.num_heads, "ff_dim": self.ff_dim}


@keras.saving.register_keras_serializable(package="tests")
class SmallCNN(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(4, 3, activation="relu")
        self.flatten = L.Flatten()
        self.head = L.Dense(10)

    def call(self, x):
        return self.head(self.flatten(self.conv(x)))


@keras.saving.register_keras_serializable(package="tests")
class Scaled(L.Layer):
    """A custom layer that declares its prunable weight (tfmot's protocol)."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], self.units), name="w")
        self.gain = self.add_weight(shape=(self.units,), initializer="ones", name="gain")

    def call(self, x):
        return keras.ops.matmul(x, self.w) * self.gain

    def get_prunable_weights(self):
        return [self.w]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def transformer_model():
    tokens = keras.Input((LENGTH,), dtype="int32")
    x = L.Embedding(VOCAB, 16)(tokens)
    x = TransformerBlock(16, 2, 32)(x)
    x = L.LSTM(8, return_sequences=True)(x)
    x = L.Bidirectional(L.GRU(4))(x)
    return keras.Model(tokens, L.Dense(2)(x))


def residual_model():
    """Operation nodes: `x + y`, slicing, keras.ops on symbolic tensors."""
    inputs = keras.Input((8, 8, 1))
    x = L.Conv2D(4, 3, padding="same")(inputs)
    x = keras.ops.relu(x + L.Conv2D(4, 1)(inputs))
    x = L.TimeDistributed(L.Dense(6))(L.Reshape((8, 32))(x))
    x = x[:, 0] * 0.5 + 3.0
    return keras.Model(inputs, L.Dense(10)(x))


def token_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, VOCAB, size=(n, LENGTH)).astype("int32")
    return x, (x[:, 0] % 2).astype("int64")


def randomize_masks(model, density=0.5):
    for i, weight in enumerate(tfsparse.masked_weights(model)):
        weight.mask.assign((np.random.default_rng(i).random(weight.shape) < density).astype("float32"))


def outputs(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def masked_fraction(model):
    rows = tfsparse.summary(model, print_fn=None)["layers"]
    return sum(r["params"] for r in rows if r["masked"]) / sum(r["params"] for r in rows)


@pytest.mark.parametrize("build,x", [
    (transformer_model, token_data()[0]),
    (residual_model, np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype("float32")),
])
def test_every_weight_matrix_is_masked_and_strip_is_exact(build, x):
    model = build()
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningCoverageWarning)  # nothing left dense
        pruned = tfsparse.prune(model)
    assert masked_fraction(pruned) == 1.0
    np.testing.assert_array_equal(outputs(pruned, x), outputs(model, x))
    randomize_masks(pruned)
    stripped = tfsparse.strip(pruned)
    assert not is_pruned(stripped)
    assert [type(l) for l in stripped.layers] == [type(l) for l in model.layers]
    np.testing.assert_allclose(outputs(stripped, x), outputs(pruned, x), atol=1e-5)
    assert not np.allclose(outputs(pruned, x), outputs(model, x))  # the nested masks act
    assert tfsparse.sparsity(stripped) == pytest.approx(tfsparse.sparsity(pruned))


def test_attention_and_recurrent_kernels_are_pruned_by_a_method_to_the_reported_sparsity(tmp_path):
    x, y = token_data(256)
    pruned = tfsparse.prune(transformer_model())
    names = [w.name for w in tfsparse.masked_weights(pruned)]
    assert len(names) == len(set(names))  # two blocks' `kernel`s get distinct names
    assert sum(name.endswith("recurrent_kernel") for name in names) == 3  # LSTM + both GRU directions
    assert sum("query" in name or "key" in name or "value" in name for name in names) == 3
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, batch_size=32, epochs=2, verbose=0,
               callbacks=[tfsparse.methods.MagnitudePruning(0.8, frequency=2)])
    # Everything is masked, so the sparsity of all weight matrices is the target.
    assert tfsparse.sparsity(pruned) == pytest.approx(0.8, abs=2e-3)
    for weight in tfsparse.masked_weights(pruned):
        assert np.mean(weight.effective_value() == 0) == pytest.approx(0.8, abs=0.02), weight.name

    path = tmp_path / "pruned.keras"
    pruned.save(path)
    loaded = keras.saving.load_model(path)  # nested masks come back, no custom_objects
    assert [w.name for w in tfsparse.masked_weights(loaded)] == names
    np.testing.assert_allclose(outputs(loaded, x[:8]), outputs(pruned, x[:8]), atol=1e-6)
    np.testing.assert_allclose(outputs(tfsparse.strip(loaded), x[:8]), outputs(pruned, x[:8]), atol=1e-5)


# One method per family in the default run, all of them with -m slow.
FAMILY_REPRESENTATIVES = {"magnitude-global", "rigl", "optg", "aslp"}


@pytest.mark.parametrize("name", [
    name if name in FAMILY_REPRESENTATIVES else pytest.param(name, marks=pytest.mark.slow)
    for name in sorted(CASES)
])
def test_every_method_trains_masks_inside_attention_and_recurrent_layers(name):
    x, y = token_data(128)
    method = CASES[name](x, y)
    keras.utils.set_random_seed(0)
    # Frozen-weight methods leave the token embedding out: at the authors'
    # score learning rate (50) its scores, summed over every use of a token,
    # grow ~100 per step and turn NaN within 4 epochs here (the methods then
    # stop with FloatingPointError; their papers prune conv and dense layers).
    exclude = [L.Embedding] if name in ("aslp", "supermask", "edge-popup") else None
    pruned = tfsparse.prune(transformer_model(), exclude=exclude, **method.layer_options)
    pruned.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = pruned.fit(x, y, batch_size=32, epochs=4, verbose=0, callbacks=[method])
    assert np.isfinite(history.history["loss"]).all()
    kernels = {w.name: w.effective_value() for w in tfsparse.masked_weights(pruned)}
    recurrent = [k for n, k in kernels.items() if n.endswith("recurrent_kernel")]
    attention = [k for n, k in kernels.items() if "query" in n]
    assert any(np.mean(k == 0) > 0.05 for k in recurrent), name  # the method reached them
    assert any(np.mean(k == 0) > 0.05 for k in attention), name
    np.testing.assert_allclose(outputs(tfsparse.strip(pruned), x[:8]), outputs(pruned, x[:8]), atol=1e-4)


def test_subclassed_model_prunes_trains_strips_saves_and_exports(tmp_path):
    x = np.random.default_rng(0).normal(size=(128, 8, 8, 1)).astype("float32")
    y = x.reshape(128, -1)[:, :10].argmax(1)
    model = SmallCNN()
    model(x[:1])
    pruned = tfsparse.prune(model)
    assert isinstance(pruned, SmallCNN) and pruned is not model
    assert masked_layers.is_masked(pruned.conv) and not masked_layers.is_masked(model.conv)
    pruned.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=2, batch_size=32, verbose=0,
               callbacks=[tfsparse.methods.MagnitudePruning(0.7, frequency=2)])
    assert tfsparse.sparsity(pruned) == pytest.approx(0.7, abs=2e-3)
    pruned.save(tmp_path / "sub.keras")
    loaded = keras.saving.load_model(tmp_path / "sub.keras")
    np.testing.assert_allclose(outputs(loaded, x[:8]), outputs(pruned, x[:8]), atol=1e-6)
    stripped = tfsparse.strip(loaded)
    assert isinstance(stripped, SmallCNN) and not masked_layers.is_masked(stripped.conv)
    np.testing.assert_allclose(outputs(stripped, x[:8]), outputs(pruned, x[:8]), atol=1e-5)
    report = tfsparse.export.to_tflite(pruned, tmp_path / "sub.tflite", verification_data=x[:32])
    assert report.max_abs_error < 1e-4 and report.top1_agreement == 1.0


def test_masked_lstm_exports_with_its_zeros(tmp_path):
    tokens = keras.Input((LENGTH,), dtype="int32")
    model = keras.Model(tokens, L.Dense(3)(L.LSTM(8)(L.Embedding(VOCAB, 8)(tokens))))
    pruned = tfsparse.prune(model)
    randomize_masks(pruned, density=0.3)
    x, _ = token_data(16)
    report = tfsparse.export.to_tflite(pruned, tmp_path / "lstm.tflite", verification_data=x)
    assert report.max_abs_error < 1e-4
    assert report.sparse_tensors >= 2  # the recurrent kernels are stored sparse, not dense


def test_custom_layer_declares_its_prunable_weights(tmp_path):
    inputs = keras.Input((6,))
    model = keras.Model(inputs, Scaled(5)(inputs))
    pruned = tfsparse.prune(model)
    assert [w.name for w in tfsparse.masked_weights(pruned)] == ["scaled/w"]
    randomize_masks(pruned, density=0.4)
    x = np.random.default_rng(0).normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(outputs(tfsparse.strip(pruned), x), outputs(pruned, x), atol=1e-6)
    assert not np.allclose(outputs(pruned, x), outputs(model, x))  # the mask really applies
    pruned.save(tmp_path / "custom.keras")
    loaded = keras.saving.load_model(tmp_path / "custom.keras")
    np.testing.assert_array_equal(tfsparse.masked_weights(loaded)[0].mask, tfsparse.masked_weights(pruned)[0].mask)


def test_custom_layer_errors_name_the_layer_and_leave_the_model_unchanged():
    class Phantom(Scaled):
        def get_prunable_weights(self):
            return [keras.Variable(np.zeros((6, 5)), name="elsewhere")]

    class Sneaky(Scaled):
        def call(self, x):  # reads its weight without the attribute
            return keras.ops.matmul(x, self._trainable_variables[0])

    for cls, error, match in [(Phantom, ValueError, "'phantom'.*none of its attributes"),
                              (Sneaky, RuntimeError, r"'sneaky'.*masked on \['w'\].*did not read")]:
        inputs = keras.Input((6,))
        model = keras.Model(inputs, cls(5, name=cls.__name__.lower())(inputs))
        with pytest.raises(error, match=match):
            tfsparse.prune(model)
        assert not is_pruned(model)


@keras.saving.register_keras_serializable(package="tests")
class PositionBias(L.Layer):
    def build(self, input_shape):
        self.table = self.add_weight(shape=tuple(input_shape[1:]), name="table")

    def call(self, x):
        return x + self.table


def test_unsupported_weights_are_listed_warned_about_or_refused_in_strict_mode():
    inputs = keras.Input((4, 6))
    model = keras.Model(inputs, L.Dense(3)(PositionBias()(inputs)))
    with pytest.warns(PruningCoverageWarning, match=r"position_bias/table \(4, 6\): unsupported layer class PositionBias"):
        pruned = tfsparse.prune(model)
    rows = {row["name"]: row for row in tfsparse.summary(pruned, print_fn=None)["layers"]}
    assert rows["position_bias/table"]["masked"] is False
    assert rows["dense/kernel"]["masked"] is True
    with pytest.raises(ValueError, match="strict=True.*position_bias/table"):
        tfsparse.prune(model, strict=True)
    # What the user excluded is listed with that reason, and neither warned about nor refused.
    two = keras.Model(inputs, L.Dense(3, name="last")(L.Dense(5, name="first")(PositionBias(name="bias2")(inputs))))
    with warnings.catch_warnings():
        warnings.simplefilter("error", PruningCoverageWarning)
        excluded = tfsparse.prune(two, exclude=["first", PositionBias], strict=True)
    reasons = {r["name"]: r["reason"] for r in tfsparse.summary(excluded, print_fn=None)["layers"]}
    assert reasons == {"bias2/table": "excluded by `exclude`",
                       "first/kernel": "excluded by `exclude`", "last/kernel": None}
    printed = []
    tfsparse.summary(pruned, print_fn=printed.append)
    assert "left dense because" in printed[0] and "unsupported layer class PositionBias" in printed[0]


def test_frozen_layers_stay_dense_unless_selected():
    inputs = keras.Input((8,))
    backbone = L.Dense(16, name="backbone")
    backbone.trainable = False
    model = keras.Model(inputs, L.Dense(2, name="head")(backbone(inputs)))
    with pytest.warns(PruningCoverageWarning, match="backbone/kernel.*frozen"):
        pruned = tfsparse.prune(model)
    assert [w.name for w in tfsparse.masked_weights(pruned)] == ["head/kernel"]
    chosen = tfsparse.prune(model, layers=["backbone", "head"])
    assert [w.name for w in tfsparse.masked_weights(chosen)] == ["backbone/kernel", "head/kernel"]


@keras.saving.register_keras_serializable(package="tests")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __call__(self, step):
        return 1e-3 * keras.ops.minimum(1.0, (keras.ops.cast(step, "float32") + 1) / 10)

    def get_config(self):
        return {}


class UnregisteredWarmup(WarmupCosine):
    """The usual warm-up schedule of a user's script: Keras cannot load it
    back by name (`SGD could not be deserialized`)."""


def test_strip_needs_no_optimizer_and_keeps_no_state(tmp_path):
    x = np.random.default_rng(0).normal(size=(64, 8, 8, 1)).astype("float32")
    y = x.reshape(64, -1)[:, :10].argmax(1)
    model = residual_model()
    pruned = tfsparse.prune(model)
    pruned.compile(keras.optimizers.Adam(UnregisteredWarmup()), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    pruned.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[tfsparse.methods.MagnitudePruning(0.8, frequency=1)])
    stripped = tfsparse.strip(pruned)
    assert not stripped.compiled
    path = tmp_path / "stripped.keras"
    stripped.save(path)
    weight_bytes = sum(int(np.prod(v.shape)) * 4 for v in stripped.weights)
    assert path.stat().st_size < weight_bytes + 60_000  # weights and config, no optimizer slots
    np.testing.assert_allclose(outputs(stripped, x[:4]), outputs(pruned, x[:4]), atol=1e-5)


def test_prune_keeps_a_compile_it_can_rebuild_and_warns_when_it_cannot():
    model = residual_model()
    model.compile(keras.optimizers.SGD(WarmupCosine()), "mse")
    assert tfsparse.prune(model).compiled
    model.compile(keras.optimizers.SGD(UnregisteredWarmup()), "mse")
    with pytest.warns(UserWarning, match="compile it again"):
        assert not tfsparse.prune(model).compiled


def test_lora_composes_with_the_mask_and_quantize_is_refused():
    inputs = keras.Input((6,))
    model = keras.Model(inputs, L.Dense(4, name="d")(inputs))
    pruned = tfsparse.prune(model)
    layer = pruned.get_layer("d")
    randomize_masks(pruned)
    layer.enable_lora(2)
    layer.lora_kernel_b.assign(np.ones((2, 4), "float32"))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype("float32")
    dense_with_lora = keras.ops.convert_to_numpy(layer._kernel) + (layer.lora_alpha / 2) * (
        keras.ops.convert_to_numpy(layer.lora_kernel_a) @ np.ones((2, 4)))
    expected = x @ (dense_with_lora * keras.ops.convert_to_numpy(layer.mask)) + keras.ops.convert_to_numpy(layer.bias)
    np.testing.assert_allclose(outputs(pruned, x), expected, atol=1e-5)
    stripped = tfsparse.strip(pruned)  # LoRA folded into the stripped kernel
    assert not stripped.get_layer("d").lora_enabled
    np.testing.assert_allclose(outputs(stripped, x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="'d' is masked.*Strip the model first"):
        pruned.quantize("int8")
    assert layer.quantization_mode is None and layer._kernel.dtype == "float32"


def test_keras_quantize_of_a_stripped_model_keeps_the_zeros():
    inputs = keras.Input((32,))
    model = keras.Model(inputs, L.Dense(8, name="d")(L.Dense(16)(inputs)))
    pruned = tfsparse.prune(model)
    randomize_masks(pruned, density=0.2)
    stripped = tfsparse.strip(pruned)
    zeros = keras.ops.convert_to_numpy(stripped.get_layer("d").kernel) == 0
    stripped.quantize("int8")
    quantized = keras.ops.convert_to_numpy(stripped.get_layer("d")._kernel)
    assert quantized.dtype == np.int8
    assert np.all(quantized[zeros] == 0)


class TokenAndPositionEmbedding(L.Layer):
    """keras.io's, verbatim in spirit: unregistered, and an __init__ without
    **kwargs, so Keras's automatic config cannot rebuild it as it is."""

    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        positions = keras.ops.arange(0, keras.ops.shape(x)[-1], 1)
        return self.token_emb(x) + self.pos_emb(positions)


class UnregisteredCNN(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = L.Conv2D(3, 3)
        self.head = L.Dense(4)

    def call(self, x):
        return self.head(L.Flatten()(self.conv(x)))


def test_unregistered_classes_and_inits_without_kwargs_prune_and_strip():
    tokens = keras.Input((LENGTH,), dtype="int32")
    text = keras.Model(tokens, L.Dense(2)(L.GlobalAveragePooling1D()(TokenAndPositionEmbedding(LENGTH, VOCAB, 8)(tokens))))
    images = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype("float32")
    cnn = UnregisteredCNN()
    cnn(images)
    for model, x in ((text, token_data(4)[0]), (cnn, images)):
        pruned = tfsparse.prune(model)
        assert masked_fraction(pruned) == 1.0
        randomize_masks(pruned)
        stripped = tfsparse.strip(pruned)
        assert type(stripped) is type(model)  # the user's class, not the carrier of nested masks
        np.testing.assert_allclose(outputs(stripped, x), outputs(pruned, x), atol=1e-5)
