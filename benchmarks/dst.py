"""DST-EE vs RigL vs SET vs tfmot gradual magnitude pruning, on one budget.

Full Fashion-MNIST, Adam 1e-3, batch 128, the same epochs and the same
batches (see `workers.fit_same_batches`) for every method; each run is its
own subprocess (tfmot under tf_keras).

1. DST-EE's exploration weight c is chosen on a validation split (the last
   10 % of the training set; LeNet-300-100 at sparsity 0.95, seed 0) from
   `--c-grid`; the test set is not looked at.
2. For every sparsity and seed: DST-EE (chosen c), RigL, SET (ERK,
   update_every 100, drop fraction 0.3 with cosine decay, stop at 75 %), and
   tfmot's prune_low_magnitude (PolynomialDecay 0 -> target over 75 % of
   the steps, frequency 100, every layer at the target).
3. Overhead: DST-EE (sparsity 0.9, update_every=100) vs the plain masked model
   (no method), alternating one-epoch fits (median of the per-pair ratios).

    python benchmarks/dst.py [--model lenet_300_100] [--epochs 15] [--seeds 3] [--jobs 2]

Finished runs are cached in benchmarks/results/cache/dst/ (a rerun resumes).
Writes benchmarks/results/dst_<model>.md and .png (other than 15 epochs:
dst_<model>_<epochs>_epochs.md and .png).
"""

import argparse
import tempfile
from pathlib import Path

import common

METHODS = ("dst-ee", "rigl", "set", "tfmot")
LABELS = {"dst-ee": "DST-EE", "rigl": "RigL", "set": "SET", "tfmot": "tfmot GMP"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.90, 0.95, 0.98])
    parser.add_argument("--c-grid", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--overhead-rounds", type=int, default=6, help="0: no overhead measurement")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes at a time")
    args = parser.parse_args()
    base = dict(model=args.model, epochs=args.epochs, batch_size=128, learning_rate=1e-3, update_every=100)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)

        def dst(method, sparsity, seed, **extra):
            return dict(base, kind="dst", data=data, method=method, sparsity=sparsity, seed=seed, **extra)

        validation = common.run_all("dst", {c: dst("dst-ee", 0.95, 0, c=c, validation=True) for c in args.c_grid},
                                    args.jobs, describe)
        validation = {c: result["accuracy"] for c, result in validation.items()}
        best_c = max(validation, key=validation.get)

        runs = {}
        for sparsity in args.sparsities:
            for seed in range(args.seeds):
                for method in METHODS:
                    runs[(sparsity, method, seed)] = (
                        common.tfmot_job(data, sparsity, seed, 0.75, **base) if method == "tfmot"
                        else dst(method, sparsity, seed, c=best_c if method == "dst-ee" else 0.0))
        for seed in range(args.seeds):
            runs[(0.0, "dense", seed)] = dict(base, kind="accuracy", library="dense", data=data, sparsity=0.0,
                                              seed=seed)
        results = {}
        for (sparsity, method, _), result in common.run_all("dst", runs, args.jobs, describe).items():
            results.setdefault((sparsity, method), []).append(result)
        overhead = args.overhead_rounds and common.cached_worker(
            "dst", dict(kind="overhead", method="dst-ee", data=data, model=args.model, rounds=args.overhead_rounds,
                        update_every=100, c=best_c, sparsity=0.9))
    write(args, source, validation, best_c, results, overhead)


def describe(job, result):
    what = "validation" if job.get("validation") else "test"
    method = job.get("method", job.get("library")) + (f" c={job['c']:g}" if job.get("method") == "dst-ee" else "")
    return (f"{what} sparsity {job['sparsity']:.2f} seed {job['seed']} {method:14s} accuracy {result['accuracy']:.4f} "
            f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s")


def write(args, source, validation, best_c, results, overhead):
    rows, medians = common.accuracy_rows(results, args.sparsities, METHODS)
    goal = [s for s in args.sparsities
            if medians[(s, "dst-ee")] >= medians[(s, "rigl")] and medians[(s, "dst-ee")] >= medians[(s, "set")]]
    missed = [f"{s:.2f}" for s in args.sparsities if s not in goal]
    dense = [100 * r["accuracy"] for r in results[(0.0, "dense")]]
    best = max(medians[(args.sparsities[-1], m)] for m in METHODS)
    coverage_rows = [[f"{s:.2f}"] + [f"{common.median([r['coverage'] for r in results[(s, m)]]):.3f}"
                                     for m in METHODS[:3]] for s in args.sparsities]
    overhead_line = common.overhead_text(overhead, "DST-EE (update_every=100) vs the plain masked model (no method)",
                                         1.15, "dst_lenet_300_100.md")
    text = f"""# Dynamic sparse training on {args.model}, Fashion-MNIST

Command: `python benchmarks/dst.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds} --c-grid {" ".join(f"{c:g}" for c in args.c_grid)}{" --overhead-rounds 0" if not overhead else ""}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Budget for every method: {args.epochs} epochs, Adam 1e-3, batch 128, identical batches. DST methods:
ERK, update every 100 steps, drop fraction 0.3 (cosine decay), stop at 75 % of the steps, grow
gradients on a batch of 256 training examples. tfmot: PolynomialDecay 0 -> target over 75 % of the
steps, frequency 100 (dense at the start, so it is not a sparse-from-scratch method).

DST-EE's c, chosen on a validation split (sparsity 0.95, seed 0): {best_c:g}
({", ".join(f"c={c:g}: {100 * a:.2f}" for c, a in validation.items())}).

Test accuracy %, median (range) over {args.seeds} seeds:

{common.markdown_table(["sparsity", *[LABELS[m] for m in METHODS]], rows)}

Goal (DST-EE >= RigL and >= SET at every sparsity): {"met" if not missed else "missed at " + ", ".join(missed)}.

Dense model, same recipe and batches: {common.median(dense):.2f} ({min(dense):.2f}-{max(dense):.2f}). The best
method at {args.sparsities[-1]:.2f} ({best:.2f}) is {common.median(dense) - best:.2f} points below it.

Coverage (fraction of weights ever active), median:

{common.markdown_table(["sparsity", *[LABELS[m] for m in METHODS[:3]]], coverage_rows)}

{overhead_line}
"""
    name = f"dst_{args.model}" if args.epochs == 15 else f"dst_{args.model}_{args.epochs}_epochs"
    common.save_accuracy_results(name, text, medians, args.sparsities, LABELS,
                                 f"{args.model}, Fashion-MNIST")


if __name__ == "__main__":
    main()
