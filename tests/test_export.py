import json
import warnings

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import cli, export, models
from tfsparse.methods import MagnitudePruning

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def trained_pruned(mnist_subset):
    """LeNet-300-100 trained one epoch while pruned to 90 % (masked, not stripped)."""
    keras.utils.set_random_seed(0)
    model = tfsparse.prune(models.lenet_300_100())
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
    assert report.runtime == export.RUNTIMES[0][0] and report.attempts == [(report.runtime, None)]
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
    # Every configuration before the one that ran failed, and the failures are reported.
    names = [name for name, _ in export.RUNTIMES]
    assert [name for name, _ in report.attempts] == names[: names.index(report.runtime) + 1]
    assert all(error for _, error in report.attempts[:-1]) and report.attempts[-1][1] is None
    # The file runs in the configuration the report names.
    interp = export.interpreter(report.path, report.interpreter_options)
    logits = export.run(interp, mnist_subset.x_test[:50])
    expected = tfsparse.strip(trained_pruned)(mnist_subset.x_test[:50])
    assert np.mean(logits.argmax(-1) == np.argmax(expected, -1)) >= 0.94


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
    a, b = keras.Input((3,)), keras.Input((3,))
    two_inputs = keras.Model([a, b], keras.layers.Dense(2)(keras.layers.Concatenate()([a, b])))
    with pytest.raises(ValueError, match="one input and one output"):
        export.to_tflite(two_inputs, target)
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
