"""Run reports: JSON, Markdown and PNG plots, written atomically."""

import json
import os
import shutil
import tempfile
from pathlib import Path

from tfsparse.stats import format_table
from tfsparse_app.plots import plot_layers, plot_training


class OutputDirectory:
    """Collects a run's files in a temporary directory, renamed into place at the end.

    An interrupted run leaves only the hidden temporary directory (removed on
    the next start), never a half-written `out`. An existing `out` is
    replaced only with `overwrite=True`.
    """

    def __init__(self, out, overwrite=False):
        self.out = Path(out)
        if self.out.exists() and not overwrite:
            raise FileExistsError(
                f"Output directory {self.out} already exists. Choose another --out, "
                "or pass --overwrite to replace it."
            )
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for stale in self.out.parent.glob(f".{self.out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))

    def commit(self):
        backup = None
        if self.out.exists():
            backup = self.out.with_name(f".{self.out.name}.old-{os.getpid()}")
            os.replace(self.out, backup)
        os.replace(self.path, self.out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        return self.out

    def abandon(self):
        shutil.rmtree(self.path, ignore_errors=True)


def write_report(directory, result):
    """Writes report.json, report.md, training.png and layers.png into `directory`."""
    directory = Path(directory)
    (directory / "report.json").write_text(json.dumps(result, indent=2, default=_jsonable))
    plot_training(result["history"], directory / "training.png")
    plot_layers(result["layers"], directory / "layers.png")
    (directory / "report.md").write_text(markdown(result))


def _tflite_section(result):
    if "tflite_summary" not in result:
        return ""
    return f"""
## TFLite export (verified in LiteRT on the test set)
```
{result['tflite_summary']}
```
"""


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def markdown(result):
    settings = "\n".join(f"| {k} | {v} |" for k, v in result["settings"].items())
    metrics = "\n".join(
        f"| {k} | {v:,} |" if isinstance(v, int) else f"| {k} | {v:.4f} |" for k, v in result["metrics"].items()
    )
    return f"""# tfsparse run: {result['settings']['method']} on {result['settings']['model']} / {result['settings']['dataset']}

Data source: {result['data_source']}

## Settings
| setting | value |
|---|---|
{settings}

## Results
| metric | value |
|---|---|
{metrics}

## Per-layer sparsity
```
{format_table(result['layers'])}
```
{_tflite_section(result)}
![training](training.png)

![layers](layers.png)
"""

