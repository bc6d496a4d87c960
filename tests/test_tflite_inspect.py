import numpy as np
import pytest

import tfsparse
from tfsparse import tflite_tensors
from tfsparse_app import cli, zoo


@pytest.fixture(scope="module")
def sparse_tflite(tmp_path_factory):
    """A LeNet-300-100 at 80 % sparsity, converted the way the README shows."""
    import tensorflow as tf

    tmp = tmp_path_factory.mktemp("tflite")
    pruned = tfsparse.prune(zoo.lenet_300_100())
    rng = np.random.default_rng(0)
    for weight in tfsparse.masked_weights(pruned):
        weight.mask.assign((rng.random(weight.shape) < 0.2).astype("float32"))
        weight.layer.bias.assign(rng.normal(size=weight.layer.bias.shape))  # zero biases are folded away
    stripped = tfsparse.strip(pruned)
    stripped.export(str(tmp / "saved"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp / "saved"))
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path = tmp / "model.tflite"
    path.write_bytes(converter.convert())
    return path, stripped


def test_sparse_kernels_are_found_in_the_flatbuffer(sparse_tflite):
    path, stripped = sparse_tflite
    rows = {r["shape"]: r for r in tflite_tensors.tensor_rows(path)}
    fc1 = rows[(300, 784)]  # TFLite stores FULLY_CONNECTED weights as (out, in)
    kernel = stripped.get_layer("fc1").kernel.numpy()
    assert fc1["sparse"] and fc1["dtype"] == "float32" and not fc1["quantized"]
    assert fc1["zero_fraction"] == pytest.approx(1 - np.count_nonzero(kernel) / kernel.size, abs=0.01)
    assert fc1["stored"] < 0.3 * kernel.size
    bias = rows[(300,)]
    assert not bias["sparse"] and bias["stored"] == 300


def test_the_converted_file_runs_in_litert_and_matches_keras(sparse_tflite):
    from ai_edge_litert.interpreter import Interpreter

    path, stripped = sparse_tflite
    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    x = np.random.default_rng(1).random((1, 28, 28, 1)).astype("float32")
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    out = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(out, stripped(x), atol=1e-4)


def test_inspect_command_on_tflite_and_on_garbage(sparse_tflite, tmp_path, capsys):
    path, _ = sparse_tflite
    assert cli.main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "300x784" in out and "yes" in out and "file size" in out
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"\x00" * 64)
    assert cli.main(["inspect", str(garbage)]) == 2
    assert "not a valid .tflite file" in capsys.readouterr().err
