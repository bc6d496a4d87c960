"""tfsparse.latency and benchmarks/litert_latency.py: what they report, never how fast anything is."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import litert_latency  # noqa: E402

from tfsparse import latency  # noqa: E402


@pytest.fixture(scope="module")
def tiny_tflite():
    """y = x @ w + b for one 8-value example, converted from a tf.function (no Keras, about a second)."""
    import tensorflow as tf

    w = tf.constant(np.random.default_rng(0).normal(size=(8, 4)), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([None, 8], tf.float32)])
    def affine(x):
        return tf.matmul(x, w) + 1.0

    converter = tf.lite.TFLiteConverter.from_concrete_functions([affine.get_concrete_function()], affine)
    return converter.convert()


@pytest.mark.parametrize("runtime", ["xnnpack", "builtin"])
def test_the_median_is_over_exactly_the_requested_invokes(tiny_tflite, runtime):
    result = latency.measure(tiny_tflite, runtime, threads=2, invokes=37, warmup=3)
    assert result["ok"] and result["runtime"] == runtime and result["threads"] == 2
    assert result["invokes"] == len(result["times_ms"]) == 37
    assert result["median_ms"] == pytest.approx(np.median(result["times_ms"]))
    assert result["iqr_ms"] == pytest.approx(result["q3_ms"] - result["q1_ms"]) and result["iqr_ms"] >= 0


def test_a_file_that_does_not_run_is_reported_not_raised(tiny_tflite, tmp_path):
    result = latency.measure(b"not a flatbuffer", "builtin", threads=1, invokes=5)
    assert result["ok"] is False and result["error"].startswith("ValueError")
    results = latency.compare({"garbage": b"not a flatbuffer", "tiny": tiny_tflite},
                                     configs=[("builtin", 1), ("xnnpack", 1)], rounds=3, invokes=4, warmup=1)
    assert [r["ok"] for r in results["garbage"].values()] == [False, False]
    tiny = results["tiny"]
    assert list(tiny) == ["builtin/1", "xnnpack/1"]  # the order asked for
    assert all(r["ok"] and r["invokes"] == 12 and len(r["round_medians_ms"]) == 3 for r in tiny.values())
    assert all(r["agrees"] for r in tiny.values())  # both runtimes compute the same outputs
    table = litert_latency.format_table(results, baseline="tiny")
    assert "| garbage | fails | fails |" in table and ", x1.00" in table


def test_a_configuration_that_cannot_exist_raises(tiny_tflite):
    with pytest.raises(ValueError, match="runtime"):
        latency.measure(tiny_tflite, "gpu")
    with pytest.raises(ValueError, match="threads"):
        latency.compare({"tiny": tiny_tflite}, configs=[("builtin", 0)])
