"""Subnetworks of frozen random weights: ASLP vs supermask vs edge-popup.

Full Fashion-MNIST (training on the first 90 % of the training set, the last
10 % held out for validation), batch 256, the same epochs, batches and frozen
weights (same seed) for every method; only mask scores (and ASLP's scales)
learn, with the learning rates of the original code (see
`tfsparse.methods.frozen`). Edge-popup runs at keep fractions 0.3 / 0.5 /
0.7; ASLP and supermask find their own sparsity. ASLP runs with and without
Smart Rescale, and the table reports the first epoch at which the validation
accuracy reaches `--target-accuracy`. Overhead: ASLP epochs vs epochs of the
plain masked model training its weights with Adam, alternating.

The paper's budget is long training with early stopping on validation:
`--early-stopping` reports, for every run, the test accuracy of the network
after the epoch with the best validation accuracy (the first such epoch; the
test accuracy is recorded every epoch and read only there), beside the last
epoch's. `--signed-constant` draws the frozen weights as sign(w) x the
layer's standard deviation (the init of the paper's best results).

    python benchmarks/aslp.py [--model lenet_300_100] [--epochs 10] [--seeds 3]
                              [--early-stopping] [--signed-constant] [--overhead-rounds 6]

Finished runs are cached in benchmarks/results/cache/aslp/ (a rerun resumes).
Writes benchmarks/results/aslp_<model>.md and .png (other settings:
aslp_<model>_<epochs>_epochs[_early_stopping][_signed_constant].md and .png).
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import common

RUNS = (("aslp", None), ("aslp-norescale", None), ("supermask", None),
        ("edge-popup", 0.3), ("edge-popup", 0.5), ("edge-popup", 0.7))


def label(method, keep):
    names = {"aslp": "ASLP (Smart Rescale)", "aslp-norescale": "ASLP without rescale", "supermask": "supermask"}
    return f"edge-popup, keep {keep}" if method == "edge-popup" else names[method]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--target-accuracy", type=float, default=0.80)
    parser.add_argument("--overhead-rounds", type=int, default=6, help="0: no overhead measurement")
    parser.add_argument("--early-stopping", action="store_true",
                        help="report the test accuracy at each run's best validation epoch")
    parser.add_argument("--signed-constant", action="store_true", help="signed-constant frozen weights")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes at a time")
    args = parser.parse_args()
    options = {"early_stopping": True} if args.early_stopping else {}
    options.update({"signed_constant": True} if args.signed_constant else {})

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        jobs = {(method, keep, seed): dict(kind="method", method=method, keep_fraction=keep, data=data,
                                           model=args.model, epochs=args.epochs, batch_size=256, learning_rate=1e-3,
                                           seed=seed, track_validation=True, **options)
                for seed in range(args.seeds) for method, keep in RUNS}
        results = {}
        for (method, keep, _), result in common.run_all("aslp", jobs, args.jobs, describe).items():
            results.setdefault((method, keep), []).append(result)
        overhead = args.overhead_rounds and common.cached_worker(
            "aslp", dict(kind="overhead", method="aslp", data=data, model=args.model, rounds=args.overhead_rounds,
                         seed=0))
    write(args, source, results, overhead)


def describe(job, result):
    return (f"seed {job['seed']} {label(job['method'], job['keep_fraction']):24s} accuracy {result['accuracy']:.4f} "
            f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s")


def first_epoch_reaching(accuracies, target):
    return next((epoch + 1 for epoch, value in enumerate(accuracies) if value >= target), None)


def best_validation_epoch(run):
    """The first epoch (0-based) with the run's best validation accuracy."""
    return int(np.argmax(run["val_accuracy"]))


def reported_accuracy(run, early_stopping):
    """Test accuracy of the network the run reports: after its best
    validation epoch with early stopping, else after its last epoch."""
    return run["test_accuracy_by_epoch"][best_validation_epoch(run)] if early_stopping else run["accuracy"]


def span(values):
    return f"{common.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def write(args, source, results, overhead):
    rows = []
    for method, keep in RUNS:
        runs = results[(method, keep)]
        accuracy = [100 * reported_accuracy(r, args.early_stopping) for r in runs]
        sparsity = [r["sparsity"] for r in runs]
        reached = [first_epoch_reaching(r["val_accuracy"], args.target_accuracy) for r in runs]
        row = [label(method, keep), span(accuracy)]
        if args.early_stopping:
            row += [" / ".join(str(best_validation_epoch(r) + 1) for r in runs),
                    span([100 * r["accuracy"] for r in runs])]
        rows.append(row + [f"{common.median(sparsity):.3f}", " / ".join("-" if e is None else str(e) for e in reached)])
    header = ["method", "test accuracy %" + (" at the best validation epoch" if args.early_stopping else "")]
    header += ["best validation epoch per seed", "test accuracy % after the last epoch"] * args.early_stopping
    header += ["sparsity (last epoch)" if args.early_stopping else "sparsity", "epochs to validation target"]

    def median_of(method, keep=None):
        return common.median([reported_accuracy(r, args.early_stopping) for r in results[(method, keep)]])

    aslp, supermask = median_of("aslp"), median_of("supermask")
    best_popup = max(median_of("edge-popup", k) for k in (0.3, 0.5, 0.7))
    met = aslp >= supermask and aslp >= best_popup
    flags = " --early-stopping" * args.early_stopping + " --signed-constant" * args.signed_constant
    flags += "" if overhead else " --overhead-rounds 0"
    init = "signed constant: sign(w) x the layer's standard deviation" if args.signed_constant else \
        "untruncated Kaiming normal"
    overhead_line = common.overhead_text(
        overhead, "ASLP epochs vs epochs of the plain masked model training its weights with Adam", 1.3,
        "aslp_lenet_300_100.md")
    text = f"""# Subnetworks of frozen random weights on {args.model}, Fashion-MNIST

Command: `python benchmarks/aslp.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds}{flags}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Budget for every method: {args.epochs} epochs of batch 256 over the first 90 % of the training set, the
same batches and the same frozen weights ({init}, seed = run seed). Learning rates
as in the original code: ASLP logits SGD 50, scales SGD 1e-3 (momentum 0.9); supermask scores as ASLP's;
edge-popup scores SGD 0.1 (momentum 0.9).

Test accuracy % of the deterministic network, median (range) over {args.seeds} seeds{early_stopping_text(args)}; sparsity of the
final network; first epoch with validation accuracy >= {args.target_accuracy:.2f} for each seed ("-": not reached):

{common.markdown_table(header, rows)}

Goal (ASLP >= supermask and >= edge-popup at its best keep fraction): {"met" if met else "missed"}
(ASLP {100 * aslp:.2f}, supermask {100 * supermask:.2f}, best edge-popup {100 * best_popup:.2f}).

{overhead_line}
"""
    common.RESULTS.mkdir(exist_ok=True)
    default = args.epochs == 10 and not args.early_stopping and not args.signed_constant
    stem = common.RESULTS / (f"aslp_{args.model}" if default else f"aslp_{args.model}_{args.epochs}_epochs"
                             + "_early_stopping" * args.early_stopping + "_signed_constant" * args.signed_constant)
    Path(f"{stem}.md").write_text(text)
    plot(results, args, f"{stem}.png")
    print(text)


def early_stopping_text(args):
    if not args.early_stopping:
        return ""
    return (" (early stopping: the network after the epoch of best validation accuracy on the held-out 10 %,"
            " the test set read only at that epoch)")


def plot(results, args, path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    for method, keep in RUNS:
        curves = [r["val_accuracy"] for r in results[(method, keep)]]
        medians = [common.median([c[e] for c in curves]) for e in range(len(curves[0]))]
        axis.plot(range(1, len(medians) + 1), [100 * m for m in medians], marker=".", label=label(method, keep))
    axis.axhline(100 * args.target_accuracy, color="gray", linestyle=":")
    axis.set(xlabel="epoch", ylabel="validation accuracy % (median)", title=f"frozen random {args.model}")
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
