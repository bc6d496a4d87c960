"""The model zoo's per-model checks (benchmarks/zoo.py) on architectures this
project did not write: every weight matrix of the kinds tfsparse prunes is
masked by `tfsparse.prune(model)`, the rest is listed with a reason, and
`tfsparse.strip` of a model with random 50 % masks computes what the masked
model computes, with the zeros in its weights and no masked layer left.
No timing assertions (benchmarks/results/zoo.md has the timings)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import zoo  # noqa: E402


def checked(name):
    """zoo.check(name) plus the assertions every model must pass."""
    case, pruned, stripped, result = zoo.check(name)
    cov = result["coverage"]
    assert cov["weight_matrices"] > 0 and cov["params"] > 0
    # Dense / EinsumDense / Conv* / Embedding / RNN cell kernels: all masked.
    assert cov["masked_fraction_listed_kinds"] == 1.0
    for row in cov["left_dense"]:
        assert row["type"] not in zoo.PRUNABLE_KINDS, row
        assert row["reason"] and row["reason"].startswith("unsupported"), row
    left = sum(row["params"] for row in cov["left_dense"])
    assert cov["masked_params"] + left == cov["params"]
    assert cov["masked_fraction"] == pytest.approx(cov["masked_params"] / cov["params"])
    assert (cov["warning"] is None) == (not cov["left_dense"])
    strip = result["strip"]
    assert strip["finite"]
    assert strip["masked_layers_after_strip"] == []
    assert strip["max_abs_diff"] <= 1e-5 * max(1.0, strip["output_scale"]), strip
    # The random 50 % masks are baked into the stripped weights (a strip that
    # ignored the masks would give ~0 % zeros here and still pass parity).
    assert strip["stripped_sparsity"] == pytest.approx(0.5 * cov["masked_fraction"], abs=0.03)
    x, _ = case.batch(zoo.PARITY_BATCH, seed=7)
    for want, got in zip(zoo.outputs(pruned, x), zoo.outputs(stripped, x)):
        np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, float(np.max(np.abs(want)))), rtol=0)
    return result


def test_mobilenet_v3_small_with_operation_nodes_is_fully_masked_and_strips_exactly():
    result = checked("MobileNetV3Small")
    assert result["input"] == "32x32x3"
    cov = result["coverage"]
    assert cov["masked_fraction"] == 1.0 and cov["left_dense"] == [] and cov["warning"] is None
    assert result["masks_set"] == cov["weight_matrices"] == 54  # every conv, depthwise and Dense kernel


def test_kerashub_gpt2_backbone_leaves_only_the_position_embedding_dense():
    pytest.importorskip("keras_hub")
    result = checked("gpt2")
    cov = result["coverage"]
    assert [(row["name"], row["type"], row["params"], row["reason"]) for row in cov["left_dense"]] == [
        ("position_embedding/embeddings", "PositionEmbedding", zoo.SEQUENCE * 64,
         "unsupported layer class PositionEmbedding")]
    assert cov["masked_fraction"] == pytest.approx(1 - zoo.SEQUENCE * 64 / cov["params"])
    assert "position_embedding/embeddings" in cov["warning"]


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.model_names())
def test_every_zoo_model_is_masked_and_strips_exactly(name):
    if name in ("bert", "gpt2"):
        pytest.importorskip("keras_hub")
    result = checked(name)
    left = [(row["type"], row["reason"]) for row in result["coverage"]["left_dense"]]
    if name in ("bert", "gpt2"):  # KerasHub's PositionEmbedding is no layer class tfsparse masks
        assert left == [("PositionEmbedding", "unsupported layer class PositionEmbedding")]
    else:  # only Keras's own prunable classes hold weight matrices
        assert left == [] and result["coverage"]["masked_fraction"] == 1.0


def test_model_list_follows_keras_applications_and_the_command_line():
    import keras

    apps = zoo.application_names()
    assert "MobileNetV3Small" in apps and "ResNet50" in apps and "preprocess_input" not in apps
    assert all(callable(getattr(keras.applications, name)) for name in apps)
    assert zoo.model_names() == [*apps, *zoo.CUSTOM]
    assert zoo.parse(["--quick"]).models == list(zoo.QUICK)
    assert zoo.parse(["--models", "gpt2, lstm"]).models == ["gpt2", "lstm"]
    with pytest.raises(SystemExit):
        zoo.parse(["--models", "NoSuchNet"])
    for argv in (["--quick"], ["--models", "gpt2,lstm", "--pairs", "3"], []):
        args = zoo.parse(argv)
        assert vars(zoo.parse(zoo.command_line(args).split()[2:])) == vars(args)


@pytest.mark.slow
def test_runner_writes_table_plot_json_and_reuses_cached_rows(tmp_path, monkeypatch):
    argv = ["--models", "lstm", "--pairs", "2", "--name", "tiny", "--results-dir", str(tmp_path)]
    text = zoo.main(argv)
    row = json.loads((tmp_path / "tiny.json").read_text())["rows"][0]
    assert row["name"] == "lstm" and row["coverage"]["masked_fraction"] == 1.0
    assert len(row["train_step"]["ratios"]) == 2 and row["train_step"]["ratio"] > 0
    assert row["tflite"]["float32"]["batch_size"] == 1 and "recurrent" in row["tflite"]["int8"]["error"]
    assert "| lstm |" in text and "refused: int8 on recurrent layers" in text
    assert (tmp_path / "tiny.md").read_text() == text
    assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"

    def no_worker(*args, **kwargs):
        raise AssertionError("a cached row was recomputed")

    monkeypatch.setattr(zoo, "run_worker", no_worker)
    assert "| lstm |" in zoo.main(argv)
