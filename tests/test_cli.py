import json
import sys
import warnings

import pytest

from tfsparse_app import cli, report, runner


def run_cli(argv, capsys):
    code = cli.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_methods_lists_magnitude_with_its_paper(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and "magnitude" in out and "arXiv:1710.01878" in out


def test_unknown_names_list_the_choices(capsys):
    for flag, value in (("--method", "nope"), ("--model", "vgg99"), ("--dataset", "imagenet")):
        argv = ["run", "--method", "magnitude", "--out", "x", flag, value]
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_option_of_another_method_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--method", "dense", "--out", "x", "--frequency", "5"])
    assert "--frequency is not an option of --method dense" in capsys.readouterr().err


def test_run_writes_model_report_and_plots_then_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--method", "magnitude", "--model", "lenet_300_100", "--dataset", "mnist",
            "--sparsity", "0.8", "--epochs", "2", "--max-train", "1500", "--max-test", "500",
            "--frequency", "5", "--allocation", "global", "--out", str(out), "--quiet", "--offline"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code, stdout, _ = run_cli(argv, capsys)
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"model.keras", "report.json", "report.md", "training.png", "layers.png"}
    result = json.loads((out / "report.json").read_text())
    assert result["metrics"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert result["settings"]["method.allocation"] == "global"
    assert result["settings"]["method"] == "magnitude"  # the name, not the callback's repr
    assert (out / "report.md").read_text().startswith("# tfsparse run: magnitude on lenet_300_100 / mnist")
    assert "SUBSET" in result["data_source"] and "test accuracy" in stdout
    assert (out / "training.png").read_bytes()[:4] == b"\x89PNG"

    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "already exists" in err and "--overwrite" in err

    code, table, _ = run_cli(["inspect", str(out / "model.keras")], capsys)
    assert code == 0 and "fc1/kernel" in table and "80.00%" in table

    broken = tmp_path / "broken.keras"
    broken.write_bytes((out / "model.keras").read_bytes()[:2000])
    code, _, err = run_cli(["inspect", str(broken)], capsys)
    assert code == 2 and "Could not read" in err


def test_run_without_matplotlib_names_the_extra_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    monkeypatch.setattr(runner.datasets, "load", lambda *a, **k: pytest.fail("it trained first"))
    code, _, err = run_cli(["run", "--method", "dense", "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code == 2 and "pip install 'tfsparse[plot]'" in err
    assert not (tmp_path / "run").exists()


def test_interrupted_run_leaves_no_output(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "write_report", interrupt)
    with warnings.catch_warnings(), pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("ignore")
        runner.run_job("dense", "lenet_300_100", "mnist", 0.0, 1, tmp_path / "out", max_train=300,
                       max_test=100, verbose=0, download=False)
    assert list(tmp_path.iterdir()) == []


def test_run_asni_with_the_asni2_phase(tmp_path, capsys):
    out = tmp_path / "asni"
    argv = ["run", "--method", "asni", "--dataset", "mnist", "--sparsity", "0.8", "--epochs", "6",
            "--scale", "0.4", "--asni2", "--max-train", "1500", "--max-test", "500", "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["sparsity"] == pytest.approx(0.8, abs=0.002)
    assert 0.1 < metrics["asni2_test_accuracy"] <= 1.0
    assert metrics["asni_scale"] == 0.4 and 0.8 < metrics["asni_magnitude"] < 1.0  # the schedule used
    assert metrics["asni2_init_bytes"] * 20 < metrics["dense_init_bytes"]
    assert {"asni_schedule.png", "asni2_centroids.png", "asni2_init.npz"} <= {p.name for p in out.iterdir()}


def test_run_dst_ee_writes_the_coverage_plot(tmp_path, capsys):
    out = tmp_path / "dst"
    argv = ["run", "--method", "dst-ee", "--dataset", "mnist", "--sparsity", "0.9", "--epochs", "2",
            "--update-every", "5", "--c", "0.01", "--max-train", "1500", "--max-test", "500",
            "--out", str(out), "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(argv) == 0
    capsys.readouterr()
    result = json.loads((out / "report.json").read_text())
    assert result["metrics"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert result["metrics"]["mask_updates"] == 3  # 22 steps, stop at 75 %: steps 5, 10, 15
    assert 0.1 < result["metrics"]["coverage"] < 1.0
    assert result["settings"]["method.c"] == 0.01
    assert (out / "coverage.png").read_bytes()[:4] == b"\x89PNG"


def test_help_shows_each_methods_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "dst-ee: default erk" in text and "magnitude: default layer" in text


def test_demo_writes_both_runs_and_a_summary(tmp_path, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["demo", "--out", str(tmp_path / "demo"), "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    assert "tfsparse demo: done" in out and "magnitude  test accuracy" in out
    for run in ("dense", "magnitude"):
        assert (tmp_path / "demo" / run / "model.keras").is_file()
    report = json.loads((tmp_path / "demo" / "magnitude" / "report.json").read_text())
    assert report["metrics"]["sparsity"] == pytest.approx(0.9, abs=1e-3)
