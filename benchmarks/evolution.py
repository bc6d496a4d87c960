"""Directed Evolution vs one-shot magnitude pruning, then quantization and encoding.

A LeNet-300-100 teacher trained dense on full Fashion-MNIST (Adam 1e-3,
batch 128, `--epochs`); calibration: the first 1,024 training images. For
every per-layer sparsity: DE (population 32, candidate sets of 2 % of the
survivors) and one-shot per-layer magnitude pruning, no fine-tuning, test
accuracy of both, DE's wall time and candidates screened per second. At 0.9:
the bits per layer that `search_bits` picks (KL budget 0.01), test accuracy
before and after quantization, and the compressed file (everything counted).

    python benchmarks/evolution.py [--epochs 10] [--seeds 1]

Writes benchmarks/results/evolution.md and evolution.png.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

import common  # noqa: E402
import tfsparse  # noqa: E402
from tfsparse import compression  # noqa: E402
from tfsparse.methods import DirectedEvolution  # noqa: E402
from tfsparse_app import datasets, zoo  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
SPARSITIES = (0.5, 0.7, 0.9)


def accuracy(model, data):
    model.compile(loss=LOSS, metrics=["accuracy"])
    return 100 * model.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0)[1]


def one_shot_magnitude(teacher, targets):
    """`teacher` with each layer of `targets` (name -> sparsity) magnitude-pruned at once, no fine-tuning."""
    return tfsparse.strip(tfsparse.prune_once(tfsparse.prune(teacher, layers=list(targets)), targets))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    data = datasets.load("fashion_mnist", download=False)
    calibration = data.x_train[:1024]
    runs = []
    for seed in range(args.seeds):
        keras.utils.set_random_seed(seed)
        teacher = zoo.lenet_300_100(data.input_shape, data.num_classes)
        teacher.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
        teacher.fit(data.x_train, data.y_train, batch_size=128, epochs=args.epochs, verbose=0)
        run = {"teacher": accuracy(teacher, data), "levels": {}}
        for sparsity in SPARSITIES:
            evolution = DirectedEvolution(teacher, calibration, layer_sparsity=sparsity, seed=seed, verbose=0)
            started = time.perf_counter()
            student = tfsparse.strip(evolution.run())
            seconds = time.perf_counter() - started
            run["levels"][sparsity] = {
                "de": accuracy(student, data), "magnitude": accuracy(one_shot_magnitude(teacher, evolution.targets), data),
                "seconds": seconds, "candidates_per_second": evolution.candidates_per_second,
                "history": evolution.history,
            }
            print(seed, sparsity, {k: v for k, v in run["levels"][sparsity].items() if k != "history"}, flush=True)
            if sparsity == 0.9:
                bits, divergence = compression.search_bits(student, calibration, divergence_budget=0.01)
                with tempfile.TemporaryDirectory() as tmp:
                    report = compression.compress(student, Path(tmp) / "student.tfsz", bits=bits)
                    restored = compression.decompress(report.path)
                run["compression"] = {"bits": bits, "divergence": divergence, "quantized": accuracy(restored, data),
                                      "report": report}
                print(report, flush=True)
        runs.append(run)
    write(args, data.source, runs)


def write(args, source, runs):
    rows = []
    for sparsity in SPARSITIES:
        de = [r["levels"][sparsity]["de"] for r in runs]
        magnitude = [r["levels"][sparsity]["magnitude"] for r in runs]
        seconds = [r["levels"][sparsity]["seconds"] for r in runs]
        speed = [r["levels"][sparsity]["candidates_per_second"] for r in runs]
        rows.append([f"{sparsity:.1f}", f"{common.median(de):.2f}", f"{common.median(magnitude):.2f}",
                     f"{common.median(de) - common.median(magnitude):+.2f}", f"{common.median(seconds):.0f}",
                     f"{common.median(speed):.0f}"])
    goal = all(common.median([r["levels"][s]["de"] for r in runs]) > common.median(
        [r["levels"][s]["magnitude"] for r in runs]) for s in SPARSITIES)
    first = runs[0]
    report = first["compression"]["report"]
    text = f"""# Directed Evolution on LeNet-300-100, Fashion-MNIST

Command: `python benchmarks/evolution.py --epochs {args.epochs} --seeds {args.seeds}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Teacher: LeNet-300-100 trained dense for {args.epochs} epochs (Adam 1e-3, batch 128), test accuracy
{common.median([r["teacher"] for r in runs]):.2f} %. Calibration: the first 1,024 training images. Every
Dense layer at the same sparsity; no fine-tuning for either method. Medians over {args.seeds} seed(s).

{common.markdown_table(["sparsity per layer", "DE test accuracy %", "one-shot magnitude %", "difference",
                        "DE seconds", "candidates / s"], rows)}

Goal (DE above magnitude at every level): {"met" if goal else "missed"}.

Quantization and encoding of the 0.9 student (seed 0): bits per layer chosen by the search (KL budget
0.01; KL reached {first["compression"]["divergence"]:.4f}): {first["compression"]["bits"]}. Test accuracy
{first["levels"][0.9]["de"]:.2f} % before and {first["compression"]["quantized"]:.2f} % after quantization.
File: {report.file_bytes:,} bytes for {report.parameters:,} parameters, **{report.ratio:.1f}x** smaller than
float32, everything counted (positions {report.position_bytes:,} B, values {report.value_bytes:,} B, codebooks
{report.codebook_bytes:,} B, biases {report.raw_bytes:,} B, header and checksum {report.header_bytes:,} B).
Goal (>= 40x): {"met" if report.ratio >= 40 else "missed"}.
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "evolution.md").write_text(text)
    plot(runs[0], common.RESULTS / "evolution.png")
    print(text)


def plot(run, path):
    from matplotlib.figure import Figure

    history = run["levels"][0.9]["history"]
    figure = Figure(figsize=(10, 3.5))
    left, right = figure.subplots(1, 2)
    offset = 0
    for name in dict.fromkeys(h["layer"] for h in history):
        cycles = [h for h in history if h["layer"] == name]
        steps = [offset + h["cycle"] for h in cycles]
        left.plot(steps, [h["sparsity"] for h in cycles], label=name)
        right.plot(steps, [h["divergence"] for h in cycles], label=name)
        offset = steps[-1]
    left.set(xlabel="cycle (layers in turn)", ylabel="layer sparsity", title="DE to 0.9 per layer")
    right.set(xlabel="cycle (layers in turn)", ylabel="best KL(teacher || student)", yscale="log")
    left.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
