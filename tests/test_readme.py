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
