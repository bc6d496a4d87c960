"""The benchmark harness on a tiny grid: a table, a plot, and cached cells not rerun."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import common  # noqa: E402
import run  # noqa: E402

ARGV = ["--name", "tiny", "--dataset", "mnist", "--models", "lenet_300_100", "--sparsities", "0.9",
        "--seeds", "1", "--epochs", "1", "--max-train", "600", "--methods", "dense", "magnitude-layer"]


def test_suite_writes_table_and_plot_and_reuses_cached_cells(tmp_path, monkeypatch):
    text = run.main([*ARGV, "--results-dir", str(tmp_path)])
    assert "| 0.90 |" in text and "magnitude (layer)" in text
    assert (tmp_path / "tiny.md").read_text() == text
    assert (tmp_path / "tiny_lenet_300_100.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "cache" / "tiny").glob("*.json"))) == 2

    def no_worker(*args, **kwargs):
        raise AssertionError("a cached cell was recomputed")

    monkeypatch.setattr(common, "run_worker", no_worker)
    assert run.main([*ARGV, "--results-dir", str(tmp_path)]) == text


def test_quick_mode_settings():
    args = run.parse(["--quick"])
    assert (args.seeds, args.epochs, args.max_train, args.models, args.sparsities) == (
        1, 6, 5000, ["lenet_300_100"], [0.9])
    with pytest.raises(SystemExit):
        run.parse(["--methods", "nonsense"])


@pytest.mark.parametrize("argv", [ARGV, ["--quick"], ["--name", "suite_lenet", "--models", "lenet_300_100", "--seeds", "1"]])
def test_recorded_command_reproduces_the_settings(argv):
    args = run.parse(argv)
    assert vars(run.parse(run.command_line(args).split()[2:])) == vars(args)
