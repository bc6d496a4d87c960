"""Every tutorial notebook runs top to bottom (small setting), and its code is the
code whose full-run outputs are committed."""

import sys
from pathlib import Path

import nbformat
import pytest

COLAB = Path(__file__).resolve().parents[1] / "colab"
sys.path.insert(0, str(COLAB))

import build  # noqa: E402

pytestmark = pytest.mark.notebooks


@pytest.mark.parametrize("name", list(build.NOTEBOOKS))
def test_notebook_runs_and_matches_its_committed_outputs(name, tmp_path, monkeypatch):
    committed = nbformat.read(COLAB / f"{name}.ipynb", as_version=4)
    assert committed.metadata["tfsparse"]["setting"] == "full"
    assert committed.metadata["tfsparse"]["code_sha256"] == build.code_hash(committed), (
        "the notebook's code changed since its outputs were made: run python colab/build.py")
    assert build.code_hash(build.notebook(name)) == build.code_hash(committed), (
        "colab/build.py and the committed notebook differ: run python colab/build.py")
    assert any(output.get("output_type") == "display_data" or "image/png" in output.get("data", {})
               for cell in committed.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
               ) or name in ("01_quickstart", "07_mobile_export")
    monkeypatch.setenv("TFSPARSE_NOTEBOOK_WORKDIR", str(tmp_path))
    executed = build.execute(committed, small=True)  # raises CellExecutionError on any failing cell
    assert all(cell.execution_count for cell in executed.cells if cell.cell_type == "code")
