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

    python benchmarks/aslp.py [--model lenet_300_100] [--epochs 10] [--seeds 3]

Finished runs are cached in benchmarks/results/cache/aslp/ (a rerun resumes).
Writes benchmarks/results/aslp_<model>.md and .png.
"""

import argparse
import tempfile
from pathlib import Path

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
    parser.add_argument("--overhead-rounds", type=int, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        results = {}
        for seed in range(args.seeds):
            for method, keep in RUNS:
                job = dict(kind="method", method=method, keep_fraction=keep, data=data, model=args.model,
                           epochs=args.epochs, batch_size=256, learning_rate=1e-3, seed=seed, track_validation=True)
                result = common.cached_worker("aslp", job, timeout=4 * 3600)
                results.setdefault((method, keep), []).append(result)
                print(f"seed {seed} {label(method, keep):24s} accuracy {result['accuracy']:.4f} "
                      f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s", flush=True)
        overhead = common.cached_worker("aslp", dict(kind="overhead", method="aslp", data=data, model=args.model,
                                                     rounds=args.overhead_rounds, seed=0))
    write(args, source, results, overhead)


def first_epoch_reaching(accuracies, target):
    return next((epoch + 1 for epoch, value in enumerate(accuracies) if value >= target), None)


def write(args, source, results, overhead):
    rows = []
    for method, keep in RUNS:
        runs = results[(method, keep)]
        accuracy = [100 * r["accuracy"] for r in runs]
        sparsity = [r["sparsity"] for r in runs]
        reached = [first_epoch_reaching(r["val_accuracy"], args.target_accuracy) for r in runs]
        rows.append([label(method, keep), f"{common.median(accuracy):.2f} ({min(accuracy):.2f}-{max(accuracy):.2f})",
                     f"{common.median(sparsity):.3f}", " / ".join("-" if e is None else str(e) for e in reached)])
    aslp = common.median([r["accuracy"] for r in results[("aslp", None)]])
    supermask = common.median([r["accuracy"] for r in results[("supermask", None)]])
    best_popup = max(common.median([r["accuracy"] for r in results[("edge-popup", k)]]) for k in (0.3, 0.5, 0.7))
    met = aslp >= supermask and aslp >= best_popup
    ratio = common.median(overhead["ratios"])
    text = f"""# Subnetworks of frozen random weights on {args.model}, Fashion-MNIST

Command: `python benchmarks/aslp.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Budget for every method: {args.epochs} epochs of batch 256 over the first 90 % of the training set, the
same batches and the same frozen weights (untruncated Kaiming normal, seed = run seed). Learning rates
as in the original code: ASLP logits SGD 50, scales SGD 1e-3 (momentum 0.9); supermask scores as ASLP's;
edge-popup scores SGD 0.1 (momentum 0.9).

Test accuracy % of the deterministic network, median (range) over {args.seeds} seeds; sparsity of the
final network; first epoch with validation accuracy >= {args.target_accuracy:.2f} for each seed ("-": not reached):

{common.markdown_table(["method", "test accuracy %", "sparsity", "epochs to validation target"], rows)}

Goal (ASLP >= supermask and >= edge-popup at its best keep fraction): {"met" if met else "missed"}
(ASLP {100 * aslp:.2f}, supermask {100 * supermask:.2f}, best edge-popup {100 * best_popup:.2f}).

Overhead: ASLP epochs vs epochs of the plain masked model training its weights with Adam,
alternating one-epoch fits: time ratio {ratio:.3f} (median of {len(overhead["ratios"])} pairs; range
{min(overhead["ratios"]):.2f}-{max(overhead["ratios"]):.2f}; goal <= 1.3).
"""
    common.RESULTS.mkdir(exist_ok=True)
    stem = common.RESULTS / f"aslp_{args.model}"
    Path(f"{stem}.md").write_text(text)
    plot(results, args, f"{stem}.png")
    print(text)


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
