"""The README's Quickstart, run as written on a small slice of the data."""

import re
from pathlib import Path

import keras

README = Path(__file__).resolve().parents[1] / "README.md"


def test_quickstart_runs_as_written(monkeypatch, tmp_path):
    import tfsparse

    code = re.search(r"## Quickstart\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    real_load = tfsparse.datasets.load
    monkeypatch.setattr(tfsparse.datasets, "load",
                        lambda name, **kw: real_load("mnist", download=False, max_test=200))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(code.replace("epochs=10", "epochs=4"), "README", "exec"), namespace)
    assert (tmp_path / "pruned.keras").is_file()
    assert isinstance(keras.models.load_model(tmp_path / "pruned.keras").layers[-1], keras.layers.Dense)


def test_channel_pruning_example_runs_as_written(monkeypatch, tmp_path):
    import numpy as np

    code = re.search(r"### Channel pruning: smaller, faster models\n.*?```python\n(.*?)```",
                     README.read_text(), re.S).group(1)
    code = code.replace("(96, 96, 3)", "(32, 32, 3)").replace("epochs=10", "epochs=1")
    code = code.replace("ChannelPruning(0.5)", "ChannelPruning(0.5, frequency=1)")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    namespace = {"x": rng.random((64, 32, 32, 3), dtype=np.float32), "y": rng.integers(0, 10, 64)}
    exec(compile(code, "README", "exec"), namespace)
    small, groups = namespace["small"], namespace["groups"]
    assert len(groups.prunable) == 25 and (tmp_path / "small.tflite").is_file()
    assert small.get_layer("block_6_expand").filters == 192 // 2
