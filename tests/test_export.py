import json
import warnings

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import export
from tfsparse.methods import MagnitudePruning
from tfsparse_app import cli, zoo

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def trained_pruned(mnist_subset):
    """LeNet-300-100 trained one epoch while pruned to 90 % (masked, not stripped)."""
    keras.utils.set_random_seed(0)
    model = tfsparse.prune(zoo.lenet_300_100())
    model.compile(keras.optimizers.Adam(2e-3), LOSS, metrics=["accuracy"])
    model.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=64, epochs=2, verbose=0,
              callbacks=[MagnitudePruning(0.9, frequency=10, end_fraction=0.5)])
    assert tfsparse.sparsity(model) == pytest.approx(0.9, abs=1e-3)
    return model


def test_float_sparse_export_matches_keras_and_shrinks(trained_pruned, mnist_subset, tmp_path):
    report = export.to_tflite(trained_pruned, tmp_path / "m.tflite", verification_data=mnist_subset.x_test)
    assert report.path.is_file() and report.path.stat().st_size == report.size_bytes
    assert report.max_abs_error <= 1e-4
    assert report.top1_agreement == 1.0 and report.samples == len(mnist_subset.x_test)
    assert report.size_ratio <= 0.16
    assert report.sparse_tensors == 3  # the three kernels
    assert report.runtime == export.RUNTIMES[0][0]
    assert report.attempts == [(name, None) for name, _ in export.RUNTIMES]  # every configuration verified
    assert "sparse-encoded" in str(report) and "runs with" in str(report)


def test_int8_export_runs_where_it_can_and_says_where(trained_pruned, mnist_subset, tmp_path):
    report = export.to_tflite(trained_pruned, tmp_path / "q.tflite", quantization="int8",
                              representative_data=mnist_subset.x_train[:300],
                              verification_data=mnist_subset.x_test)
    # TFLite stores a 2-byte column index per int8 value of these kernels: about 0.095 here.
    assert report.size_ratio <= 0.10
    assert report.top1_agreement >= 0.97
    kernels = [row for row in report.tensors if len(row["shape"]) == 2]
    assert all(row["quantized"] and row["dtype"] == "int8" for row in kernels)
    # Every configuration is tried; those before the chosen one failed, and why is reported.
    names = [name for name, _ in export.RUNTIMES]
    chosen = names.index(report.runtime)
    assert [name for name, _ in report.attempts] == names
    assert all(error for _, error in report.attempts[:chosen]) and report.attempts[chosen][1] is None
    # The file runs in the configuration the report names.
    interp = export.interpreter(report.path, report.interpreter_options)
    logits = export.run(interp, mnist_subset.x_test[:50])
    expected = tfsparse.strip(trained_pruned)(mnist_subset.x_test[:50])
    assert np.mean(logits.argmax(-1) == np.argmax(expected, -1)) >= 0.94


def test_a_configuration_that_computes_garbage_is_not_chosen_and_nan_everywhere_writes_nothing(
        trained_pruned, tmp_path, monkeypatch):
    real = export._run_signature

    def garbage_under_the_default(interp, samples):
        outputs = real(interp, samples)
        if interp._tfsparse_options == {}:  # the default (XNNPACK) configuration
            return {name: value + 50.0 for name, value in outputs.items()}
        return outputs

    real_interpreter = export.interpreter

    def tagged(content, options=None, num_threads=None):
        interp = real_interpreter(content, options, num_threads)
        interp._tfsparse_options = dict(options or {})
        return interp

    monkeypatch.setattr(export, "interpreter", tagged)
    monkeypatch.setattr(export, "_run_signature", garbage_under_the_default)
    report = export.to_tflite(trained_pruned, tmp_path / "g.tflite")
    assert report.runtime == "builtin kernels, no default delegates" and report.max_abs_error < 1e-4
    assert "wrong outputs" in dict(report.attempts)["default (XNNPACK delegate)"]

    monkeypatch.setattr(export, "_run_signature", lambda interp, samples: {
        name: value * np.nan for name, value in real(interp, samples).items()})
    with pytest.raises(RuntimeError, match="runs in no LiteRT configuration.*NaN"):
        export.to_tflite(trained_pruned, tmp_path / "n.tflite", quantization="float16")
    assert not (tmp_path / "n.tflite").exists()

    monkeypatch.setattr(export, "_run_signature", lambda interp, samples: {
        name: value + 1.0 for name, value in real(interp, samples).items()})
    with pytest.raises(RuntimeError, match="float32 model differs from the Keras model"):
        export.to_tflite(trained_pruned, tmp_path / "w.tflite")
    assert not (tmp_path / "w.tflite").exists()


def test_fallback_when_the_default_delegate_fails(trained_pruned, tmp_path, monkeypatch):
    real = export.interpreter

    def failing_default(content, options=None, num_threads=None):
        if not options:
            raise RuntimeError("failed to delegate FULLY_CONNECTED node #5\nmore")
        return real(content, options, num_threads)

    monkeypatch.setattr(export, "interpreter", failing_default)
    report = export.to_tflite(trained_pruned, tmp_path / "f.tflite", quantization="dynamic")
    assert report.runtime == "builtin kernels, no default delegates"
    assert report.attempts[0] == ("default (XNNPACK delegate)", "failed to delegate FULLY_CONNECTED node #5")
    assert "does not run with: default (XNNPACK delegate)" in str(report)


def test_no_working_runtime_writes_nothing(trained_pruned, tmp_path, monkeypatch):
    def always_fails(content, options=None, num_threads=None):
        raise RuntimeError("broken")

    monkeypatch.setattr(export, "interpreter", always_fails)
    with pytest.raises(RuntimeError, match="nothing was written"):
        export.to_tflite(trained_pruned, tmp_path / "n.tflite")
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_are_refused_before_writing(trained_pruned, tmp_path):
    target = tmp_path / "x.tflite"
    with pytest.raises(ValueError, match=r"quantization.*Received: quantization='int4'"):
        export.to_tflite(trained_pruned, target, quantization="int4")
    with pytest.raises(ValueError, match="needs `representative_data`"):
        export.to_tflite(trained_pruned, target, quantization="int8")
    with pytest.raises(ValueError, match=r"representative_data.*\(N, 28, 28, 1\).*\(10, 784\)"):
        export.to_tflite(trained_pruned, target, quantization="int8", representative_data=np.zeros((10, 784)))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export.to_tflite(trained_pruned, tmp_path / "missing" / "x.tflite")
    with pytest.raises(ValueError, match="int8_io=True needs quantization='int8'"):
        export.to_tflite(trained_pruned, target, int8_io=True)
    with pytest.raises(ValueError, match=r"batch_size.*Received: batch_size=0"):
        export.to_tflite(trained_pruned, target, batch_size=0)
    assert list(tmp_path.iterdir()) == []


def test_export_command_and_run_with_export(trained_pruned, tmp_path, capsys):
    source = tmp_path / "pruned.keras"
    trained_pruned.save(source)  # masked layers: the command strips them
    out = tmp_path / "m.tflite"
    argv = ["export", str(source), "--out", str(out), "--quantization", "dynamic", "--data", "mnist"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and "top-1 agreement" in printed and "quantization dynamic" in printed
    assert cli.main(argv) == 2 and "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nope.keras"), "--out", str(tmp_path / "y.tflite")]) == 2

    run_out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["run", "--method", "magnitude", "--dataset", "mnist", "--epochs", "1", "--frequency", "5",
                         "--max-train", "1000", "--max-test", "300", "--export", "float32",
                         "--out", str(run_out), "--quiet"]) == 0
    capsys.readouterr()
    result = json.loads((run_out / "report.json").read_text())
    assert result["tflite"]["max_abs_error"] <= 1e-4 and result["tflite"]["samples"] == 300
    assert (run_out / "model.tflite").stat().st_size == result["tflite"]["size_bytes"]
    assert "TFLite export" in (run_out / "report.md").read_text()


def test_xnnpack_policy_selects_only_1x1_stride_1_convolutions_on_feature_maps():
    layers = keras.layers
    inputs = keras.Input((9, 9, 3))
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="stem")(inputs)
    x = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)
    x = layers.Conv2D(16, 1, name="pointwise")(x)
    x = layers.Conv2D(16, 1, strides=2, name="strided_pointwise")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = layers.Conv2D(10, 1, name="classifier_on_1x1")(x)
    pruned = tfsparse.prune(keras.Model(inputs, x), layers=export.xnnpack_sparse_layer)
    assert [w.name for w in tfsparse.masked_weights(pruned)] == ["pointwise/kernel"]


# Models with several inputs and outputs, token ids, subclassed and recurrent models. Tiny, so that each
# export (two conversions and a LiteRT run) takes a second or two.

layers = keras.layers


def two_input_two_output_model():
    """A float input and a token-id input (through an Embedding of 20 ids); a class and a regression output."""
    features = keras.Input((4,), name="features")
    tokens = keras.Input((6,), dtype="int32", name="tokens")
    pooled = layers.GlobalAveragePooling1D()(layers.Embedding(20, 8)(tokens))
    hidden = layers.Dense(16, activation="relu")(layers.Concatenate()([features, pooled]))
    return keras.Model([features, tokens], [layers.Dense(3, name="cls")(hidden), layers.Dense(1, name="reg")(hidden)])


def two_input_data(count, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((count, 4), dtype=np.float32), rng.integers(0, 20, (count, 6))


def test_two_inputs_and_two_outputs_are_matched_by_name(tmp_path):
    model = two_input_two_output_model()
    report = export.to_tflite(model, tmp_path / "m.tflite")  # random inputs: ids drawn below the Embedding's 20
    assert [(row["name"], row["dtype"], row["shape"]) for row in report.inputs] == [
        ("features", "float32", [None, 4]), ("tokens", "int32", [None, 6])]
    assert "tokens: ids in [0, 20)" in report.verification_inputs and report.samples == export.VERIFY_SAMPLES
    assert set(report.outputs) == {"cls", "reg"}
    assert report.outputs["cls"]["top1_agreement"] == 1.0 and report.outputs["reg"]["top1_agreement"] is None
    assert report.max_abs_error == max(row["max_abs_error"] for row in report.outputs.values()) <= 1e-5
    assert report.top1_agreement == 1.0
    assert "output 'cls'" in str(report) and "output 'reg'" in str(report)

    features, tokens = two_input_data(10, seed=1)
    expected = model([features, tokens])
    outputs = export.run(export.interpreter(report.path, report.interpreter_options),
                         {"tokens": tokens, "features": features})
    np.testing.assert_allclose(outputs["cls"], expected[0], atol=1e-5)
    np.testing.assert_allclose(outputs["reg"], expected[1], atol=1e-5)


def test_pruned_two_input_model_exports_sparse_kernels(tmp_path):
    model = tfsparse.prune(two_input_two_output_model())
    for weight in tfsparse.masked_weights(model):  # 70 % zeros
        weight.mask.assign((np.random.default_rng(0).random(tuple(weight.mask.shape)) > 0.7).astype("float32"))
    report = export.to_tflite(model, tmp_path / "p.tflite", verification_data=list(two_input_data(64)))
    assert report.sparse_tensors >= 2 and report.samples == 64
    assert report.max_abs_error <= 1e-5 and report.top1_agreement == 1.0


def test_dict_inputs_take_data_as_a_dict_or_a_list_in_input_order(tmp_path):
    image, meta = keras.Input((5,), name="image"), keras.Input((2,), name="meta")
    model = keras.Model({"meta": meta, "image": image}, layers.Dense(3)(layers.Concatenate()([image, meta])))
    rng = np.random.default_rng(0)
    data = {"image": rng.random((32, 5)), "meta": rng.random((32, 2))}
    by_name = export.to_tflite(model, tmp_path / "d.tflite", verification_data=data)
    by_order = export.to_tflite(model, tmp_path / "l.tflite", verification_data=[data["image"], data["meta"]])
    assert [row["name"] for row in by_name.inputs] == ["image", "meta"]  # model.inputs order
    assert by_name.max_abs_error <= 1e-5 and by_name.top1_agreement == 1.0
    assert by_order.max_abs_error == by_name.max_abs_error and by_order.samples == 32


def test_token_ids_keep_their_dtype_through_int8_quantization(tmp_path):
    tokens = keras.Input((12,), dtype="int32", name="tokens")
    pooled = layers.GlobalAveragePooling1D()(layers.Embedding(50, 16)(tokens))
    model = keras.Model(tokens, layers.Dense(4)(layers.Dense(32, activation="relu")(pooled)))
    ids = np.random.default_rng(0).integers(0, 50, (300, 12))  # int64 ids: cast to the input's int32
    report = export.to_tflite(model, tmp_path / "t.tflite", quantization="int8", representative_data=ids)
    assert report.inputs[0]["dtype"] == "int32" and report.inputs[0]["quantization"] == [0.0, 0]
    kernels = [row for row in report.tensors if len(row["shape"]) == 2]
    assert len(kernels) == 3 and all(row["dtype"] == "int8" and row["quantized"] for row in kernels)
    assert report.top1_agreement >= 0.97 and report.max_abs_error <= 0.01
    logits = export.run(export.interpreter(report.path, report.interpreter_options), ids[:20])
    assert np.mean(logits.argmax(-1) == np.argmax(model(ids[:20]), -1)) >= 0.9


class TwoDense(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = layers.Dense(16, activation="relu")
        self.out = layers.Dense(3)

    def call(self, x):
        return self.out(self.hidden(x))


def test_subclassed_model_exports_once_called(tmp_path):
    model = TwoDense()
    with pytest.raises(ValueError, match=r"Call it once.*input_signature.*Received: a model never called"):
        export.to_tflite(model, tmp_path / "s.tflite")
    model(np.zeros((2, 5), "float32"))
    report = export.to_tflite(model, tmp_path / "s.tflite")
    assert [(row["name"], row["dtype"], row["shape"]) for row in report.inputs] == [("input_0", "float32", [None, 5])]
    assert report.max_abs_error <= 1e-5 and report.top1_agreement == 1.0
    assert list(report.outputs) == ["output_0"]
    # Never called: the signature describes the input, and one call on zeros builds the model.
    report = export.to_tflite(TwoDense(), tmp_path / "n.tflite",
                              input_signature=keras.InputSpec(shape=(None, 5), dtype="float32", name="x"))
    assert report.inputs[0]["name"] == "x" and report.max_abs_error <= 1e-5


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_models_export_with_a_static_batch(cell, tmp_path):
    if cell == "lstm":  # text: token ids -> Embedding -> LSTM
        inputs = keras.Input((7,), dtype="int32", name="tokens")
        model = keras.Model(inputs, layers.Dense(3)(layers.LSTM(8)(layers.Embedding(30, 4)(inputs))))
        sample = np.random.default_rng(1).integers(0, 30, (5, 7))
    else:  # float sequences -> GRU
        inputs = keras.Input((7, 3), name="series")
        model = keras.Model(inputs, layers.Dense(3)(layers.GRU(8)(inputs)))
        sample = np.random.default_rng(1).random((5, 7, 3), dtype=np.float32)
    report = export.to_tflite(model, tmp_path / "r.tflite")
    assert report.batch_size == 1 and report.inputs[0]["shape"] == [1, 7] + ([] if cell == "lstm" else [3])
    assert report.max_abs_error <= 1e-5 and report.top1_agreement == 1.0
    assert "batch size fixed to 1" in str(report)
    # run feeds a batch of 5 one example at a time
    logits = export.run(export.interpreter(report.path, report.interpreter_options), sample)
    np.testing.assert_allclose(logits, model(sample), atol=1e-5)
    with pytest.raises(ValueError, match=r"int8.*\['(lstm|gru)'\].*unroll=True"):
        export.to_tflite(model, tmp_path / "q.tflite", quantization="int8", representative_data=sample)


def test_wrong_data_names_the_argument_the_input_and_what_was_received(tmp_path):
    model = two_input_two_output_model()
    features, tokens = two_input_data(8)
    target = tmp_path / "x.tflite"
    with pytest.raises(ValueError, match=r"`verification_data` for input 'tokens' must hold integer ids.*"
                                         r"Received: an array of dtype float64 and shape \(8, 6\)"):
        export.to_tflite(model, target, verification_data=[features, tokens + 0.5])
    with pytest.raises(ValueError, match=r"`representative_data` for input 'features' must be a batch of shape "
                                         r"\(N, 4\)\. Received: an array of dtype float32 and shape \(8, 5\)"):
        export.to_tflite(model, target, representative_data=[np.zeros((8, 5), "float32"), tokens])
    with pytest.raises(ValueError, match=r"inputs are \['features', 'tokens'\]\. Received: a dict with keys \['x'\]"):
        export.to_tflite(model, target, verification_data={"x": features})
    with pytest.raises(ValueError, match=r"list of 2 arrays.*Received: ndarray of shape \(8, 4\)"):
        export.to_tflite(model, target, verification_data=features)
    with pytest.raises(ValueError, match=r"same number of examples.*'tokens': 3"):
        export.to_tflite(model, target, verification_data=[features, tokens[:3]])
    assert list(tmp_path.iterdir()) == []


def test_an_op_tflite_lacks_is_named_with_what_to_try(tmp_path):
    matrices = keras.Input((3, 3))
    model = keras.Model(matrices, layers.Dense(2)(layers.Reshape((1,))(keras.ops.det(matrices))))
    with pytest.raises(ValueError, match=r"conversion failed at tf\.MatrixDeterminant.*allow_flex_ops=True"):
        export.to_tflite(model, tmp_path / "det.tflite")
    assert list(tmp_path.iterdir()) == []
