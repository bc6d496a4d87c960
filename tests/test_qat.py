"""Quantization-aware training that keeps the zeros, and its int8 export."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import export
from tfsparse.methods import MagnitudePruning
from tfsparse import quantization, tflite_tensors
from tfsparse.quantization import FakeQuant, FakeQuantInt8, quantizers
from tfsparse_app import zoo

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SPARSITY = 0.8


def _dense_net():
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Flatten()(inputs)
    x = keras.layers.Dense(64, activation="relu", name="fc1")(x)
    x = keras.layers.Dropout(0.1)(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs)


def _conv_net():
    """Conv2D, DepthwiseConv2D, Conv1D and Dense, with pass-through layers between."""
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, activation="relu", name="depthwise"),
        keras.layers.MaxPooling2D(),
        keras.layers.Reshape((12, 12 * 8)),
        keras.layers.Conv1D(16, 3, activation="relu", name="conv1d"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="logits"),
    ])


def _pruned_then_qat(build, data, seed, **qat_options):
    """Prunes to SPARSITY with MagnitudePruning, then trains the QAT copy
    (`quantize_aware(pruned, **qat_options)`); returns (qat model, its fit
    history, masks before QAT)."""
    keras.utils.set_random_seed(seed)
    x, y = data.x_train[:4000], data.y_train[:4000]
    pruned = tfsparse.prune(build())
    pruned.compile(keras.optimizers.Adam(2e-3), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=64, epochs=3, verbose=0,
               callbacks=[MagnitudePruning(SPARSITY, frequency=10, end_fraction=0.5)])
    qat = tfsparse.quantize_aware(pruned, **qat_options)
    masks = {w.name: w.mask.numpy().copy() for w in tfsparse.masked_weights(qat)}
    qat.compile(keras.optimizers.Adam(5e-4), LOSS, metrics=["accuracy"])
    history = qat.fit(x, y, batch_size=64, epochs=3, verbose=0)
    return qat, history.history, masks


@pytest.fixture(scope="module")
def dense_qat(mnist_subset):
    return _pruned_then_qat(_dense_net, mnist_subset, seed=1)


@pytest.fixture(scope="module")
def conv_qat(mnist_subset):
    return _pruned_then_qat(_conv_net, mnist_subset, seed=2)


def _grid(weight):
    """The quantized kernel, its per-channel scales, and its values / scale
    as (elements per channel, channels)."""
    value = weight.effective_value()
    depthwise = isinstance(weight.layer, keras.layers.DepthwiseConv2D)  # channels: in x multiplier
    flat = value.reshape(-1, value.shape[-2] * value.shape[-1] if depthwise else value.shape[-1])
    scale = np.abs(flat).max(axis=0) / 127
    return value, scale, flat / np.where(scale > 0, scale, 1)


def _check_keeps_zeros_and_grid(qat, history, masks):
    assert history["loss"][-1] < history["loss"][0]
    handles = tfsparse.masked_weights(qat)
    assert {w.name for w in handles} == set(masks)
    for weight in handles:
        mask = weight.mask.numpy()
        np.testing.assert_array_equal(mask, masks[weight.name])  # QAT leaves the masks alone
        value, scale, integers = _grid(weight)
        assert np.all(value[mask == 0] == 0.0)  # pruned weights are exact zeros after quantization
        # The zeros are the mask's, plus the rare survivor below half a step (rounded to 0, as
        # the converter would): 3 of fc1's 10,035 survivors here.
        assert np.mean(value == 0) - np.mean(mask == 0) <= 1e-3
        assert np.mean(mask == 0) == pytest.approx(SPARSITY, abs=0.01)
        # On the symmetric int8 grid: integers in [-127, 127], at most 255 levels per channel.
        np.testing.assert_allclose(integers, np.round(integers), atol=1e-3)
        assert np.abs(np.round(integers)).max() == 127
        assert max(len(np.unique(np.round(column))) for column in integers.T) <= 255


def _file_kernels(path):
    """{layer name: int8 kernel array} of a .tflite file (constant tensors of rank >= 2)."""
    interp = export.interpreter(path)
    interp.allocate_tensors()
    kernels = {}
    for detail in interp.get_tensor_details():
        if detail["dtype"] == np.int8 and len(detail["shape"]) >= 2:
            try:
                value = interp.get_tensor(detail["index"])
            except ValueError:
                continue
            for name in ("fc1", "logits", "conv1d", "depthwise", "conv"):
                if f"/{name}_" in detail["name"] or f"/{name}/" in detail["name"]:
                    kernels.setdefault(name, (value, detail["quantization_parameters"]["scales"]))
                    break
    return kernels


def _as_keras_layout(name, value):
    """A file kernel in the Keras kernel's layout (channels last)."""
    if name in ("fc1", "logits"):  # FULLY_CONNECTED (out, in)
        return value.T
    if name == "depthwise":  # (1, h, w, channels)
        return value[0]
    if name == "conv1d":  # CONV_2D (out, 1, k, in)
        return np.transpose(value[:, 0], (1, 2, 0))
    return np.transpose(value, (1, 2, 3, 0))  # CONV_2D (out, h, w, in)


def test_dense_qat_keeps_masks_and_zeros_on_the_int8_grid(dense_qat):
    qat, history, masks = dense_qat
    _check_keeps_zeros_and_grid(qat, history, masks)
    first = quantizers(qat)[0]
    assert first.name == "fc1" and first.quantizer.quantize_inputs  # reads the model input
    assert not quantizers(qat)[1].quantizer.quantize_inputs


def test_conv_qat_keeps_masks_and_zeros_on_the_int8_grid(conv_qat):
    qat, history, masks = conv_qat
    _check_keeps_zeros_and_grid(qat, history, masks)
    assert [layer.name for layer in quantizers(qat)] == ["conv", "depthwise", "conv1d", "logits"]


def test_dense_int8_file_holds_the_trained_integers_and_agrees(dense_qat, mnist_subset, tmp_path):
    qat, _, _ = dense_qat
    report = export.to_tflite(qat, tmp_path / "qat.tflite", quantization="int8", sparse=False,
                              verification_data=mnist_subset.x_test)
    assert report.quantization == "int8 (quantization-aware ranges)"
    assert report.top1_agreement >= 0.99, report.top1_agreement  # measured: 1.0
    kernels = _file_kernels(report.path)
    for weight in tfsparse.masked_weights(qat):
        name = weight.layer.name
        value, scale, integers = _grid(weight)
        stored, stored_scale = kernels[name]
        # The very integers the Keras model computed with, zeros in the same places.
        np.testing.assert_array_equal(_as_keras_layout(name, stored), np.round(integers).reshape(value.shape))
        np.testing.assert_allclose(stored_scale, scale, rtol=1e-5)
    # The file is full-integer and verified against the QAT model (its outputs include the fake quantization).
    assert report.inputs[0]["dtype"] == "float32"
    expected = qat.predict(mnist_subset.x_test[:64], verbose=0)
    got = export.run(export.interpreter(report.path, report.interpreter_options), mnist_subset.x_test[:64])
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) >= 0.99


def test_conv_int8_sparse_file_keeps_the_zeros_and_agrees(conv_qat, mnist_subset, tmp_path):
    qat, _, _ = conv_qat
    report = export.to_tflite(qat, tmp_path / "qat.tflite", quantization="int8",
                              verification_data=mnist_subset.x_test)
    assert report.top1_agreement >= 0.99, report.top1_agreement  # measured: 1.0
    rows = [row for row in report.tensors if row["dtype"] == "int8" and len(row["shape"]) >= 2]
    assert len(rows) == 4 and all(row["quantized"] for row in rows)
    fractions = sorted(row["zero_fraction"] for row in rows)
    expected = sorted(float(np.mean(w.effective_value() == 0)) for w in tfsparse.masked_weights(qat))
    np.testing.assert_allclose(fractions, expected, atol=1e-12)
    assert sum(row["sparse"] for row in rows) >= 3  # the pruned kernels are stored sparse


def test_qat_model_saves_and_loads(dense_qat, mnist_subset, tmp_path):
    qat, _, _ = dense_qat
    qat.save(tmp_path / "qat.keras")
    loaded = keras.saving.load_model(tmp_path / "qat.keras")
    x = mnist_subset.x_test[:32]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    for old, new in zip(quantizers(qat), quantizers(loaded)):
        assert new.quantizer.get_config() == old.quantizer.get_config()
        for a, b in zip(old.masking_variables, new.masking_variables):
            assert a.path == b.path
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Training goes on after loading.
    loaded.compile(keras.optimizers.Adam(1e-4), LOSS)
    loaded.fit(x, mnist_subset.y_test[:32], epochs=1, verbose=0)


def test_strip_bakes_the_quantized_kernels(dense_qat):
    qat, _, _ = dense_qat
    plain = tfsparse.strip(qat)
    assert not any(tfsparse.layers.is_masked(layer) for layer in plain.layers)
    for weight in tfsparse.masked_weights(qat):
        np.testing.assert_array_equal(plain.get_layer(weight.layer.name).kernel.numpy(), weight.effective_value())


def test_layers_left_dense_by_prune_are_quantized_and_stay_dense():
    model = tfsparse.prune(_dense_net(), exclude=["logits"])
    qat = tfsparse.quantize_aware(model)
    logits = qat.get_layer("logits")
    assert logits.quantizer is not None and np.all(logits.mask.numpy() == 1)
    assert not tfsparse.layers.is_masked(model.get_layer("logits"))  # the argument is not changed


def _kernel_scales(path):
    """{tensor name: number of int8 scales} of the file's constant int8 kernels (rank >= 2)."""
    return {row["name"]: row["scales"] for row in tflite_tensors.tensor_rows(path)
            if row["dtype"] == "int8" and len(row["shape"]) >= 2}


def test_per_tensor_qat_file_holds_the_trained_integers_and_is_smaller(dense_qat, mnist_subset, tmp_path):
    per_tensor, history, masks = _pruned_then_qat(_dense_net, mnist_subset, seed=1, per_channel=False)
    assert history["loss"][-1] < history["loss"][0]
    for weight in tfsparse.masked_weights(per_tensor):
        value = weight.effective_value()
        np.testing.assert_array_equal(weight.mask.numpy(), masks[weight.name])
        assert np.all(value[masks[weight.name] == 0] == 0.0)
        integers = value / (np.abs(value).max() / 127)  # one scale for the whole kernel
        np.testing.assert_allclose(integers, np.round(integers), atol=1e-3)
    dense_file = export.to_tflite(per_tensor, tmp_path / "dense.tflite", quantization="int8", sparse=False,
                                  verification_data=mnist_subset.x_test)
    assert dense_file.quantization == "int8 (quantization-aware ranges, per-tensor kernel scales)"
    assert dense_file.top1_agreement >= 0.99, dense_file.top1_agreement
    assert set(_kernel_scales(dense_file.path).values()) == {1}
    kernels = _file_kernels(dense_file.path)
    for weight in tfsparse.masked_weights(per_tensor):
        name, value = weight.layer.name, weight.effective_value()
        stored, _ = kernels[name]  # the very integers the Keras model computed with
        np.testing.assert_array_equal(_as_keras_layout(name, stored), np.round(value / (np.abs(value).max() / 127)))
    # Sparse files of the same architecture and masks' sparsity: per tensor is smaller, by the
    # per-channel scales and zero points (64 + 10 channels, for the kernel and its densified copy).
    qat, _, _ = dense_qat
    files = {name: export.to_tflite(model, tmp_path / f"{name}.tflite", quantization="int8",
                                    verification_data=mnist_subset.x_test)
             for name, model in [("per_channel", qat), ("per_tensor", per_tensor)]}
    assert set(_kernel_scales(files["per_tensor"].path).values()) == {1}
    assert set(_kernel_scales(files["per_channel"].path).values()) == {64, 10}
    assert files["per_tensor"].size_bytes < files["per_channel"].size_bytes - 2 * 74 * 12
    assert files["per_tensor"].top1_agreement >= 0.99


def test_per_tensor_qat_keeps_conv_kernels_per_channel_as_the_converter_does(mnist_subset, tmp_path):
    qat, _, _ = _pruned_then_qat(_conv_net, mnist_subset, seed=2, per_channel=False)
    assert {layer.name: layer.quantizer.per_channel for layer in quantizers(qat)} == {
        "conv": True, "depthwise": True, "conv1d": True, "logits": False}
    report = export.to_tflite(qat, tmp_path / "conv.tflite", quantization="int8", sparse=False,
                              verification_data=mnist_subset.x_test)
    assert report.top1_agreement >= 0.99, report.top1_agreement
    assert sorted(_kernel_scales(report.path).values()) == [1, 8, 8, 16]  # logits; conv, depthwise; conv1d


@pytest.mark.parametrize("quantization", ["int8", "dynamic"])
def test_post_training_per_tensor_files_have_one_scale_per_kernel(quantization, mnist_subset, tmp_path):
    keras.utils.set_random_seed(3)
    pruned = tfsparse.prune(_conv_net())
    tfsparse.prune_once(pruned, SPARSITY)
    x = mnist_subset.x_test[:300]
    reports = {per_channel: export.to_tflite(pruned, tmp_path / f"{per_channel}.tflite", quantization=quantization,
                                             representative_data=x, per_channel=per_channel)
               for per_channel in (True, False)}
    assert set(_kernel_scales(reports[False].path).values()) == {1}
    assert max(_kernel_scales(reports[True].path).values()) > 1
    assert reports[False].size_bytes < reports[True].size_bytes
    assert reports[False].quantization == f"{quantization} (per-tensor kernel scales)"
    assert reports[False].top1_agreement >= 0.95, reports[False].top1_agreement


# Bad input: clear errors, before anything is written.

def test_per_channel_is_checked_before_any_file(dense_qat, tmp_path):
    qat, _, _ = dense_qat
    path = tmp_path / "x.tflite"
    with pytest.raises(ValueError, match=r"`per_channel` must be True or False. Received: per_channel='no'"):
        tfsparse.quantize_aware(tfsparse.prune(_dense_net()), per_channel="no")
    with pytest.raises(ValueError, match=r"`per_channel` must be None, True or False. Received: per_channel=0"):
        export.to_tflite(qat, path, quantization="int8", per_channel=0)
    with pytest.raises(ValueError, match=r"needs quantization='int8' or 'dynamic'. Received: per_channel=False, "
                                         r"quantization='float16'"):
        export.to_tflite(tfsparse.strip(qat), path, quantization="float16", per_channel=False)
    with pytest.raises(ValueError, match=r"trained with one scale per output channel \(tfsparse.quantize_aware"
                                         r"\(\.\.\., per_channel=True\)\).*Received: per_channel=False"):
        export.to_tflite(qat, path, quantization="int8", per_channel=False, policy="smallest")
    assert not list(tmp_path.iterdir())


def test_quantize_aware_refuses_a_model_without_masks():
    with pytest.raises(ValueError, match=r"`model` has no masked layers.*tfsparse.prune.*Received: model"):
        tfsparse.quantize_aware(_dense_net())
    with pytest.raises(TypeError, match="`model` must be a keras.Model"):
        tfsparse.quantize_aware("model.keras")


def test_quantize_aware_refuses_twice_bad_decay_and_unsupported_layers():
    pruned = tfsparse.prune(_dense_net())
    qat = tfsparse.quantize_aware(pruned)
    with pytest.raises(ValueError, match="already quantization-aware"):
        tfsparse.quantize_aware(qat)
    with pytest.raises(ValueError, match=r"`ema_decay` must be a number in \[0, 1\). Received: ema_decay=1.5"):
        tfsparse.quantize_aware(pruned, ema_decay=1.5)
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)  # BN after the ReLU: not foldable
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.LayerNormalization(name="norm")(x)
    x = keras.layers.Concatenate(name="concat")([x, x])
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match=r"cannot quantize these layers yet: bn \(BatchNormalization on .* "
                                         r"is folded; this one is not\), norm \(LayerNormalization\)"):
        tfsparse.quantize_aware(tfsparse.prune(keras.Model(inputs, outputs)))


def test_int8_export_refuses_ranges_that_never_saw_data(tmp_path):
    qat = tfsparse.quantize_aware(tfsparse.prune(_dense_net()))
    path = tmp_path / "never_trained.tflite"
    with pytest.raises(ValueError, match=r"`model` never saw data: fc1 \(input\), fc1 \(output\), logits \(output\)"):
        export.to_tflite(qat, path, quantization="int8")
    assert not path.exists() and not list(tmp_path.iterdir())
    # A model that is not quantization-aware still needs representative data for int8.
    with pytest.raises(ValueError, match="representative_data=None"):
        export.to_tflite(tfsparse.prune(_dense_net()), path, quantization="int8")
    assert not path.exists()


def test_quantizer_config_is_checked():
    with pytest.raises(TypeError, match="`quantizer` must be a tfsparse.fake_quant.FakeQuantInt8"):
        tfsparse.layers.MaskedDense(4, quantizer="int8")
    layer = tfsparse.layers.MaskedDense(4, quantizer=FakeQuantInt8(quantize_inputs=True))
    layer.build((None, 3))
    config = layer.get_config()
    assert config["quantizer"]["config"] == {"quantize_inputs": True, "ema_decay": 0.99, "per_channel": True}
    clone = tfsparse.layers.MaskedDense.from_config(config)
    clone.build((None, 3))
    assert [v.path.split("/")[-1] for v in clone.masking_variables] == [
        "mask", "quant_input_min", "quant_input_max", "quant_input_batches",
        "quant_output_min", "quant_output_max", "quant_output_batches"]


def test_int8_export_refuses_a_file_with_float_ops(tmp_path):
    qat = tfsparse.quantize_aware(tfsparse.prune(_dense_net()))
    qat.compile("adam", LOSS)
    rng = np.random.default_rng(0)
    qat.fit(rng.random((64, 28, 28, 1), dtype=np.float32), rng.integers(0, 10, 64), epochs=1, verbose=0)
    qat.get_layer("logits").quantizer = None  # its output gets no range: the converter keeps it float
    path = tmp_path / "float_ops.tflite"
    with pytest.raises(RuntimeError, match=r"converted with float ops \(FULLY_CONNECTED\).*Nothing was written"):
        export.to_tflite(qat, path, quantization="int8")
    assert not path.exists()


def test_prune_refuses_a_quantizer_and_points_to_quantize_aware():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    with pytest.raises(TypeError, match="quantizer.*tfsparse.quantize_aware"):
        tfsparse.prune(model, quantizer=tfsparse.quantization.FakeQuantInt8())


# Networks with BatchNormalization, residual adds, concatenations, pooling and activation layers.

def _bn_net():
    """Conv, Depthwise and Dense, each followed by a BatchNormalization (then ReLU / ReLU6 / nothing)."""
    inputs = keras.Input((12, 12, 1))
    x = keras.layers.Conv2D(8, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization(name="conv_bn")(x))
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="depthwise")(x)
    x = keras.layers.ReLU(6.0)(keras.layers.BatchNormalization(name="depthwise_bn")(x))
    x = keras.layers.Dense(6, name="fc")(keras.layers.Flatten()(x))
    outputs = keras.layers.BatchNormalization(name="fc_bn")(x)
    return keras.Model(inputs, outputs)


def test_batch_norm_is_folded_exactly_and_keeps_the_zeros():
    keras.utils.set_random_seed(3)
    pruned = tfsparse.prune(_bn_net())
    rng = np.random.default_rng(3)
    for weight in tfsparse.masked_weights(pruned):
        weight.mask.assign((rng.random(weight.shape) < 0.3).astype("float32"))
    for layer in pruned.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # statistics far from the identity
            for variable, low, high in zip(layer.weights, (0.5, -1.0, -1.0, 0.2), (2.0, 1.0, 1.0, 3.0)):
                variable.assign(rng.uniform(low, high, variable.shape))
    folded = quantization._rewritten(pruned, ema_decay=0.99)
    assert [type(layer).__name__ for layer in folded.layers] == [
        "InputLayer", "MaskedConv2D", "MaskedDepthwiseConv2D", "Flatten", "MaskedDense"]
    assert [layer.get_config()["activation"] for layer in folded.layers[1:3]] == ["relu", "relu6"]
    x = rng.random((64, 12, 12, 1), dtype=np.float32)
    np.testing.assert_allclose(folded.predict(x, verbose=0), pruned.predict(x, verbose=0), rtol=1e-5, atol=1e-5)
    for weight in tfsparse.masked_weights(folded):  # same masks; a pruned weight is an exact zero of the folded kernel
        old = pruned.get_layer(weight.layer.name).masked_weights[0]
        np.testing.assert_array_equal(weight.mask.numpy(), old.mask.numpy())
        np.testing.assert_array_equal(weight.effective_value() == 0, old.effective_value() == 0)


def _branchy_net():
    """Add, average pooling, ReLU and sigmoid layers, a softmax output (global pooling: ResNet-20 below)."""
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv")(inputs)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    y = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.ReLU()(keras.layers.Add()([x, y]))
    z = keras.layers.Conv2D(16, 1, name="conv_c")(x)
    x = keras.layers.Add()([x, keras.layers.Activation("sigmoid")(z)])
    x = keras.layers.AveragePooling2D(2)(x)
    x = keras.layers.Flatten()(keras.layers.Conv2D(32, 3, activation="relu", name="conv_d")(x))
    outputs = keras.layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs)


def _check_int8_file(qat, report, min_agreement):
    """The int8 kernels hold the QAT kernels' zeros (the masks' plus rare roundings) and agree with Keras."""
    assert report.top1_agreement >= min_agreement, report.top1_agreement
    rows = [row for row in report.tensors if row["dtype"] == "int8" and len(row["shape"]) >= 2]
    handles = tfsparse.masked_weights(qat)
    assert len(rows) == len(handles) and all(row["quantized"] for row in rows)
    for weight in handles:
        assert np.all(weight.effective_value()[weight.mask.numpy() == 0] == 0)
    expected = sorted(float(np.mean(w.effective_value() == 0)) for w in handles)
    np.testing.assert_allclose(sorted(row["zero_fraction"] for row in rows), expected, atol=1e-12)


def _qat_after_pruning(model, x, y, loss, epochs=(2, 1), batch_size=64):
    pruned = tfsparse.prune(model)
    pruned.compile(keras.optimizers.Adam(2e-3), loss)
    pruned.fit(x, y, batch_size=batch_size, epochs=epochs[0], verbose=0,
               callbacks=[MagnitudePruning(SPARSITY, frequency=5, end_fraction=0.5)])
    qat = tfsparse.quantize_aware(pruned)
    qat.compile(keras.optimizers.Adam(2e-4), loss)
    qat.fit(x, y, batch_size=64, epochs=epochs[1], verbose=0)
    return qat


def test_branchy_net_qat_exports_full_integer_with_its_zeros(mnist_subset, tmp_path):
    keras.utils.set_random_seed(4)
    qat = _qat_after_pruning(_branchy_net(), mnist_subset.x_train[:2000], mnist_subset.y_train[:2000],
                             "sparse_categorical_crossentropy", epochs=(3, 1))
    names = [layer.name for layer in qat.layers]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat.layers)
    for ranged in ("add", "re_lu_1", "add_1", "activation", "average_pooling2d", "probabilities_activation"):
        assert isinstance(qat.get_layer(f"{ranged}_quant"), FakeQuant), names
    assert "re_lu_quant" not in names  # the ReLU after conv's BatchNormalization is fused into conv
    report = export.to_tflite(qat, tmp_path / "branchy.tflite", quantization="int8",
                              verification_data=mnist_subset.x_test[:300])
    assert report.quantization == "int8 (quantization-aware ranges)"
    _check_int8_file(qat, report, min_agreement=0.98)  # measured: 1.0
    predicted = qat.predict(mnist_subset.x_test[:300], verbose=0).argmax(-1)
    assert len(np.unique(predicted)) >= 5  # the agreement is not that of a constant model
    # The QAT model saves and loads, FakeQuant layers included.
    qat.save(tmp_path / "branchy.keras")
    loaded = keras.saving.load_model(tmp_path / "branchy.keras")
    x = mnist_subset.x_test[:16]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))


@pytest.mark.slow
def test_resnet20_qat_int8_keeps_the_zeros_and_agrees(mnist_subset, tmp_path):
    keras.utils.set_random_seed(5)
    # BatchNormalization is folded with its moving statistics: they need a few hundred steps to settle.
    qat = _qat_after_pruning(zoo.resnet20(input_shape=(28, 28, 1)), mnist_subset.x_train,
                             mnist_subset.y_train, LOSS, epochs=(3, 1), batch_size=32)
    assert len(quantizers(qat)) == 22  # 19 convolutions, 2 projections, the logits
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in qat.layers)
    ranged = [layer for layer in qat.layers if isinstance(layer, FakeQuant)]
    assert {type(layer.input._keras_history[0]).__name__ for layer in ranged} == {
        "Add", "ReLU", "GlobalAveragePooling2D"}, [layer.name for layer in ranged]
    report = export.to_tflite(qat, tmp_path / "resnet20.tflite", quantization="int8",
                              verification_data=mnist_subset.x_test[:300])
    _check_int8_file(qat, report, min_agreement=0.98)
    assert len(np.unique(qat.predict(mnist_subset.x_test[:300], verbose=0).argmax(-1))) >= 5


@pytest.mark.slow
def test_mobilenet_v2_qat_int8_keeps_the_zeros_and_agrees(mnist_subset, tmp_path):
    keras.utils.set_random_seed(6)

    def rgb32(images):
        return np.repeat(np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0))), 3, axis=-1)

    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    qat = _qat_after_pruning(model, rgb32(mnist_subset.x_train[:2000]), mnist_subset.y_train[:2000],
                             "sparse_categorical_crossentropy", epochs=(1, 1))
    report = export.to_tflite(qat, tmp_path / "mobilenet_v2.tflite", quantization="int8",
                              verification_data=rgb32(mnist_subset.x_test[:300]))
    _check_int8_file(qat, report, min_agreement=0.98)
