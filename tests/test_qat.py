"""Quantization-aware training that keeps the zeros, and its int8 export."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import export
from tfsparse.methods import MagnitudePruning
from tfsparse.quantization import FakeQuantInt8, quantizers

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


def _pruned_then_qat(build, data, seed):
    """Prunes to SPARSITY with MagnitudePruning, then trains the QAT copy;
    returns (qat model, its fit history, masks before QAT)."""
    keras.utils.set_random_seed(seed)
    x, y = data.x_train[:4000], data.y_train[:4000]
    pruned = tfsparse.prune(build())
    pruned.compile(keras.optimizers.Adam(2e-3), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=64, epochs=3, verbose=0,
               callbacks=[MagnitudePruning(SPARSITY, frequency=10, end_fraction=0.5)])
    qat = tfsparse.quantize_aware(pruned)
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


# Bad input: clear errors, before anything is written.

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
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    outputs = keras.layers.Dense(2)(keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match=r"cannot quantize these layers yet: bn \(BatchNormalization\)"):
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
    assert config["quantizer"]["config"] == {"quantize_inputs": True, "ema_decay": 0.99}
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
