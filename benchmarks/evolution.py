"""Directed Evolution vs one-shot magnitude pruning, then quantization and encoding.

A LeNet-300-100 teacher trained dense on full Fashion-MNIST (Adam 1e-3,
batch 128, `--epochs`); calibration: the first 1,024 training images. For
every per-layer sparsity: DE (population 32, candidate sets of 2 % of the
survivors) and one-shot per-layer magnitude pruning, test accuracy of both
before and after the same fine-tuning (`--fine-tune-epochs` of Adam 1e-3,
batch 128, masks fixed, the same batches for both), DE's wall time and
candidates screened per second. At 0.9:
the bits per layer that `search_bits` picks (KL budget 0.01), test accuracy
before and after quantization, and the compressed file (everything counted).

    python benchmarks/evolution.py [--epochs 10] [--seeds 1] [--fine-tune-epochs 5]

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
    """`teacher` with each layer of `targets` (name -> sparsity) magnitude-pruned at once, masked."""
    return tfsparse.prune_once(tfsparse.prune(teacher, layers=list(targets)), targets)


def fine_tuned(masked, data, epochs, seed):
    """Test accuracy % of the masked model after `epochs` of training, masks fixed (no method runs),
    of the stripped model at the end, and of the masked one after each epoch (read only, never used
    to choose anything)."""
    keras.utils.set_random_seed(seed)
    masked.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    history = masked.fit(data.x_train, data.y_train, batch_size=128, epochs=epochs, verbose=0,
                         validation_data=(data.x_test, data.y_test), validation_batch_size=1024)
    return accuracy(tfsparse.strip(masked), data), [100 * a for a in history.history["val_accuracy"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--fine-tune-epochs", type=int, default=5)
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
            masked_student = evolution.run()
            seconds = time.perf_counter() - started
            student = tfsparse.strip(masked_student)
            magnitude = one_shot_magnitude(teacher, evolution.targets)
            run["levels"][sparsity] = {
                "de": accuracy(student, data), "magnitude": accuracy(tfsparse.strip(magnitude), data),
                "seconds": seconds, "candidates_per_second": evolution.candidates_per_second,
                "history": evolution.history,
            }
            if args.fine_tune_epochs:
                for name, masked in (("de", masked_student), ("magnitude", magnitude)):
                    final, by_epoch = fine_tuned(masked, data, args.fine_tune_epochs, seed)
                    run["levels"][sparsity].update({f"{name}_fine_tuned": final, f"{name}_by_epoch": by_epoch})
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
    def med(sparsity, key):
        return common.median([r["levels"][sparsity][key] for r in runs])

    def spread(sparsity, key):
        values = [r["levels"][sparsity][key] for r in runs]
        return f"{common.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    tuned = args.fine_tune_epochs > 0
    compared = [("de", "magnitude")] + [("de_fine_tuned", "magnitude_fine_tuned")] * tuned
    rows = []
    for sparsity in SPARSITIES:
        row = [f"{sparsity:.1f}"]
        for de, magnitude in compared:
            row += [spread(sparsity, de), spread(sparsity, magnitude), f"{med(sparsity, de) - med(sparsity, magnitude):+.2f}"]
        rows.append(row + [f"{med(sparsity, 'seconds'):.0f}", f"{med(sparsity, 'candidates_per_second'):.0f}"])
    header = ["sparsity per layer", "DE %", "one-shot magnitude %", "difference"]
    if tuned:
        header += [f"DE + {args.fine_tune_epochs} epochs %", f"magnitude + {args.fine_tune_epochs} epochs %",
                   "difference"]
    goals = {de: all(med(s, de) > med(s, magnitude) for s in SPARSITIES) for de, magnitude in compared}
    curve = ""
    if tuned:
        def by_epoch(sparsity, name, epoch):
            return common.median([r["levels"][sparsity][f"{name}_by_epoch"][epoch] for r in runs])

        def cell(sparsity, epoch):
            de, magnitude = by_epoch(sparsity, "de", epoch), by_epoch(sparsity, "magnitude", epoch)
            return f"{de:.2f} / {magnitude:.2f} ({de - magnitude:+.2f})"

        epochs = range(args.fine_tune_epochs)
        curve_rows = [[f"{s:.1f}"] + [cell(s, e) for e in epochs] for s in SPARSITIES]
        after_one = all(by_epoch(s, "de", 0) > by_epoch(s, "magnitude", 0) for s in SPARSITIES)
        curve = f"""
During fine-tuning: test accuracy % of DE / magnitude (difference) after each epoch, medians (read
after the fact, nothing chosen from it):

{common.markdown_table(["sparsity per layer", *(f"epoch {e + 1}" for e in epochs)], curve_rows)}

DE above magnitude at every level after 1 fine-tuning epoch: {"met" if after_one else "missed"}.
"""
    first = runs[0]
    report = first["compression"]["report"]
    text = f"""# Directed Evolution on LeNet-300-100, Fashion-MNIST

Command: `python benchmarks/evolution.py --epochs {args.epochs} --seeds {args.seeds} --fine-tune-epochs {args.fine_tune_epochs}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Teacher: LeNet-300-100 trained dense for {args.epochs} epochs (Adam 1e-3, batch 128), test accuracy
{common.median([r["teacher"] for r in runs]):.2f} %. Calibration: the first 1,024 training images. Every
Dense layer at the same sparsity. Fine-tuning{f": {args.fine_tune_epochs} epochs of Adam 1e-3, batch 128, masks fixed, the same batches for both" if tuned else " none"}.
Test accuracy %, median (range) over {args.seeds} seed(s):

{common.markdown_table(header + ["DE seconds", "candidates / s"], rows)}

Goal (DE above magnitude at every level), without fine-tuning: {"met" if goals["de"] else "missed"}{
f"; both fine-tuned: {'met' if goals['de_fine_tuned'] else 'missed'}" if tuned else ""}.
{curve}
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
