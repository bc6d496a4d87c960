"""to_tflite(..., policy=...): the file written is the one the measurements name.

Never how fast anything is: the assertions compare the report with its own
measurements and with the files on disk.
"""

import re

import keras
import numpy as np
import pytest

from tfsparse import export, latency

ENCODINGS_X_RUNTIMES = {(encoding, runtime) for encoding in ("sparse", "dense") for runtime in latency.RUNTIMES}


@pytest.fixture(scope="module")
def sparse_model():
    """A 256-128-10 MLP with 90 % of each kernel zero (a plain model: zeros, no masks)."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((256,)), keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
    rng = np.random.default_rng(0)
    for layer in model.layers:
        kernel = keras.ops.convert_to_numpy(layer.kernel)
        layer.kernel.assign(np.where(rng.random(kernel.shape) < 0.9, 0.0, kernel))
    return model


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(1).random((200, 256), dtype="float32")


def runnable(report):
    return [row for row in report.candidates if row["why_not"] is None]


def test_both_writes_the_smallest_and_beside_it_the_fastest(sparse_model, inputs, tmp_path):
    report = export.to_tflite(sparse_model, tmp_path / "m.tflite", quantization="int8",
                              representative_data=inputs, policy="both")
    rows = report.candidates
    assert {(row["encoding"], row["runtime"]) for row in rows} == ENCODINGS_X_RUNTIMES
    sizes = {row["encoding"]: row["size_bytes"] for row in rows}
    assert sizes["sparse"] < 0.5 * sizes["dense"]
    assert report.sparse and report.size_bytes == sizes["sparse"] == (tmp_path / "m.tflite").stat().st_size
    assert all(row["median_ms"] > 0 for row in runnable(report))
    fastest = min(runnable(report), key=lambda row: row["median_ms"])
    if fastest["encoding"] == "dense":
        assert report.also_wrote == tmp_path / "m.fastest.tflite"
        assert report.also_wrote.stat().st_size == sizes["dense"] and "fastest file" in report.choice
    else:
        assert report.also_wrote is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.tflite"] + ["m.fastest.tflite"] * (
        fastest["encoding"] == "dense"))
    text = str(report)
    assert "policy 'both'" in text and "median ms" in text and "the smallest file" in text


def test_a_runtime_the_export_rejected_is_not_timed_and_says_why(sparse_model, inputs, tmp_path):
    report = export.to_tflite(sparse_model, tmp_path / "m.tflite", quantization="int8",
                              representative_data=inputs, policy="smallest")
    assert report.policy == "smallest" and report.also_wrote is None
    for row in report.candidates:
        if row["why_not"] is not None:
            assert row["median_ms"] is None
    # The runtime the report names computes the file it describes.
    interp = export.interpreter(report.path, report.interpreter_options)
    logits = export.run(interp, inputs[:50])
    assert np.mean(logits.argmax(-1) == np.argmax(sparse_model(inputs[:50]), -1)) >= 0.9


def test_fastest_writes_the_file_and_runtime_with_the_lowest_median(sparse_model, inputs, tmp_path):
    report = export.to_tflite(sparse_model, tmp_path / "f.tflite", policy="fastest", threads=1)
    fastest = min(runnable(report), key=lambda row: row["median_ms"])
    assert report.sparse == (fastest["encoding"] == "sparse")
    assert report.runtime == latency.RUNTIME_NAMES[fastest["runtime"]]
    assert report.interpreter_options == latency.RUNTIMES[fastest["runtime"]]
    assert report.path.stat().st_size == fastest["size_bytes"] == report.size_bytes
    outputs = export.run(export.interpreter(report.path, report.interpreter_options), inputs[:20])
    np.testing.assert_allclose(outputs, keras.ops.convert_to_numpy(sparse_model(inputs[:20])), atol=1e-4)
    assert report.to_dict()["policy"] == "fastest" and len(report.to_dict()["candidates"]) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(policy="fast"), r"`policy` must be one of .*Received: policy='fast'"),
    (dict(policy="smallest", sparse=False), r"leave `sparse` unset\. Received: sparse=False, policy='smallest'"),
    (dict(policy="smallest", quantization="int8"), r"representative_data"),
])
def test_bad_policy_input_is_refused_before_any_file(sparse_model, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        export.to_tflite(sparse_model, tmp_path / "x.tflite", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def qat_file(sparse_model, inputs, tmp_path_factory):
    """A quantization-aware model trained one epoch, saved as .keras."""
    import tfsparse

    qat = tfsparse.quantize_aware(tfsparse.prune(sparse_model))
    qat.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    qat.fit(inputs, np.arange(len(inputs)) % 10, batch_size=50, epochs=1, verbose=0)
    path = tmp_path_factory.mktemp("qat") / "qat.keras"
    qat.save(path)
    return path


def test_cli_exports_a_qat_model_to_int8_without_data_and_prints_the_comparison(qat_file, tmp_path, capsys):
    from tfsparse_app import cli

    out = tmp_path / "q.tflite"
    argv = ["export", str(qat_file), "--out", str(out), "--quantization", "int8", "--policy", "both"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "int8 (quantization-aware ranges)" in printed and "policy 'both'" in printed
    assert printed.count("sparse ") >= 2 and printed.count("dense ") >= 2  # one row per runtime
    assert out.is_file()
    # Run again: both files exist now, so nothing is replaced without --overwrite.
    assert cli.main(argv) == 2 and "already exists" in capsys.readouterr().err


def test_cli_per_tensor_writes_one_scale_per_kernel(sparse_model, tmp_path, capsys):
    from tfsparse import tflite_tensors
    from tfsparse_app import cli

    source = tmp_path / "plain.keras"
    sparse_model.save(source)
    out = tmp_path / "p.tflite"
    assert cli.main(["export", str(source), "--out", str(out), "--quantization", "dynamic", "--per-tensor"]) == 0
    assert "quantization dynamic (per-tensor kernel scales)" in capsys.readouterr().out
    scales = [row["scales"] for row in tflite_tensors.tensor_rows(out) if row["dtype"] == "int8"]
    assert scales == [1, 1]
    # A quantization that has no int8 kernels is refused by name, and nothing is written.
    assert cli.main(["export", str(source), "--out", str(tmp_path / "f.tflite"), "--per-tensor"]) == 2
    assert "needs quantization='int8' or 'dynamic'" in capsys.readouterr().err
    assert not (tmp_path / "f.tflite").exists()


@pytest.mark.parametrize("extra, message", [
    (["--quantization", "int8"], "needs --data .* unless the model was trained with tfsparse.quantize_aware"),
    (["--policy", "smallest", "--dense"], "leave out --dense"),
])
def test_cli_export_refuses_what_it_cannot_do_before_writing(sparse_model, tmp_path, capsys, extra, message):
    from tfsparse_app import cli

    source = tmp_path / "plain.keras"
    sparse_model.save(source)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", str(source), "--out", str(tmp_path / "x.tflite"), *extra])
    assert exit_.value.code == 2 and re.search(message, capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.keras"]


def test_smallest_writes_the_dense_file_when_the_sparse_one_would_lose_weights(tmp_path):
    """The int8 converter stores a kernel whose inputs are zero in whole runs of
    16 as (1, 16) blocks and drops the partial last block (120 = 7 x 16 + 8):
    that file would compute another model, so the policy writes the dense one."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((120,)), keras.layers.Dense(84)])
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel)
    kernel[:96] = 0.0  # inputs 0-95: 6 whole blocks of 16 zero; 96-119 dense
    model.layers[0].kernel.assign(kernel)
    x = np.random.default_rng(1).random((100, 120), dtype="float32")
    with pytest.raises(ValueError, match="partial last block"):
        export.to_tflite(model, tmp_path / "plain.tflite", quantization="int8", representative_data=x)
    report = export.to_tflite(model, tmp_path / "m.tflite", quantization="int8", representative_data=x,
                              policy="smallest")
    assert not report.sparse and [p.name for p in tmp_path.iterdir()] == ["m.tflite"]
    sparse_rows = [row for row in report.candidates if row["encoding"] == "sparse"]
    assert len(sparse_rows) == 1 and "partial last block" in sparse_rows[0]["why_not"]
    assert report.top1_agreement >= 0.9
