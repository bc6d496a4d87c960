"""Shared pieces of the benchmark scripts: data handoff, subprocess workers, tables.

tfmot only runs on tf_keras (Keras 2), which cannot share a process with
Keras 3 models, so every measured configuration runs in a worker subprocess:
`python benchmarks/workers.py <json job>` prints one JSON line. The data go to
the workers as one .npz file, so both libraries train on identical arrays.
"""

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def export_data(name, path, max_train=None):
    """Writes the data set (float32 in [0, 1]) to an .npz for the workers."""
    sys.path.insert(0, str(HERE.parent))
    from tfsparse_app import datasets

    data = datasets.load(name, download=False, max_train=max_train)
    import numpy as np

    np.savez(path, x_train=data.x_train, y_train=data.y_train, x_test=data.x_test, y_test=data.y_test)
    return data.source


def run_worker(job, legacy_keras=False, timeout=3600, script=HERE / "workers.py"):
    """Runs one job in a fresh Python process (`script <json job>`, workers.py
    unless told otherwise) and returns its JSON result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
    if legacy_keras:
        env["TF_USE_LEGACY_KERAS"] = "1"
    completed = subprocess.run(
        [sys.executable, str(script), json.dumps(job)],
        capture_output=True, text=True, env=env, timeout=timeout,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        raise RuntimeError(f"worker failed for {job}:\n{completed.stderr[-3000:]}")
    return json.loads(lines[-1])


def cached_worker(name, job, legacy_keras=False, timeout=3600, script=HERE / "workers.py", paths=("data",)):
    """`run_worker`, its result cached in results/cache/<name>/ (or in the
    directory `name`, when it is a Path) under the job's settings (the keys
    in `paths`, which name files such as the data file's temporary path,
    left out), so an interrupted benchmark resumes where it stopped."""
    settings = {k: v for k, v in job.items() if k not in paths}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    directory = name if isinstance(name, Path) else RESULTS / "cache" / name
    path = directory / f"{key}.json"
    if path.exists():
        return json.loads(path.read_text())["result"]
    result = run_worker(job, legacy_keras, timeout, script)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"job": settings, "result": result}))
    partial.replace(path)
    return result


def run_all(name, jobs, processes, describe):
    """Runs the worker `jobs` (key -> job), `processes` at a time, each
    cached under `name` (`cached_worker`; tfmot jobs under tf_keras), and
    prints `describe(job, result)` as each finishes; returns key -> result
    in the order of `jobs`."""

    def run(key):
        job = jobs[key]
        result = cached_worker(name, job, legacy_keras=job.get("library") == "tfmot", timeout=4 * 3600)
        print(describe(job, result), flush=True)
        return result

    with ThreadPoolExecutor(processes) as pool:
        return dict(zip(jobs, pool.map(run, jobs)))


def median(values):
    return statistics.median(values)


def machine():
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def versions(legacy=False):
    import importlib.metadata as md

    names = ["tensorflow", "keras", "tensorflow-model-optimization", "tf-keras"]
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def accuracy_rows(results, sparsities, methods):
    """Table rows "median (min-max)" of test accuracy % per sparsity and method,
    and the medians: results maps (sparsity, method) -> list of worker results."""
    rows, medians = [], {}
    for sparsity in sparsities:
        row = [f"{sparsity:.2f}"]
        for method in methods:
            values = [100 * r["accuracy"] for r in results[(sparsity, method)]]
            medians[(sparsity, method)] = median(values)
            row.append(f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})")
        rows.append(row)
    return rows, medians


def plot_accuracy(medians, sparsities, labels, title, path, reference=None, zoom=None):
    """Accuracy vs sparsity, one line per method (labels: method -> label),
    and `reference` (e.g. the dense accuracy) as a dashed line. `zoom`
    (low, high) adds a second panel with that accuracy range, for when one
    method lies far below the others."""
    from matplotlib.figure import Figure

    panels = 2 if zoom else 1
    figure = Figure(figsize=(4.5 * panels + 2.5, 4))
    axes = figure.subplots(1, panels, squeeze=False)
    markers = "osD^v<>ph*"
    for axis in axes[0]:
        for index, (method, label) in enumerate(labels.items()):
            axis.plot(sparsities, [medians[(s, method)] for s in sparsities],
                      marker=markers[index % len(markers)], label=label)
        if reference is not None:
            axis.axhline(reference, color="black", linestyle="--", label="dense")
        axis.set(xlabel="sparsity", ylabel="test accuracy % (median)", title=title)
    if zoom:
        axes[0][1].set(ylim=zoom, title=f"{title} (zoom)")
    axes[0][-1].legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def save_accuracy_results(name, text, medians, sparsities, labels, title):
    """Writes results/<name>.md (`text`) and the accuracy-vs-sparsity plot <name>.png."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    plot_accuracy(medians, sparsities, labels, title, RESULTS / f"{name}.png")
    print(text)


def tfmot_job(data, sparsity, seed, end_fraction, **recipe):
    """tfmot's prune_low_magnitude on the shared recipe: PolynomialDecay 0 ->
    `sparsity` over `end_fraction` of the steps, frequency 100, every layer at
    the target."""
    return dict(recipe, kind="accuracy", library="tfmot", data=data, sparsity=sparsity, seed=seed,
                end_fraction=end_fraction, frequency=100)


def overhead_text(overhead, what, goal, measured_in):
    """The overhead sentence of a results page: `what` (e.g. "DST-EE vs the
    plain masked model (no method)") from an "overhead" worker's ratios, or,
    without a measurement, a pointer to the page `measured_in` that has one."""
    if not overhead:
        return f"Overhead: not measured in this run (`--overhead-rounds 0`; see {measured_in})."
    ratios = overhead["ratios"]
    return (f"Overhead: {what}, alternating one-epoch fits: time ratio {median(ratios):.3f} (median of "
            f"{len(ratios)} pairs; range {min(ratios):.2f}-{max(ratios):.2f}; goal <= {goal}).")
