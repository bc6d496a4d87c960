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

    python benchmarks/dst.py [--model lenet_300_100] [--epochs 15] [--seeds 3]

Finished runs are cached in benchmarks/results/cache/dst/ (a rerun resumes).
Writes benchmarks/results/dst_<model>.md and .png.
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
    parser.add_argument("--overhead-rounds", type=int, default=6)
    args = parser.parse_args()
    base = dict(model=args.model, epochs=args.epochs, batch_size=128, learning_rate=1e-3, update_every=100)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)

        def dst(method, sparsity, seed, **extra):
            return common.cached_worker("dst", dict(base, kind="dst", data=data, method=method,
                                                    sparsity=sparsity, seed=seed, **extra), timeout=4 * 3600)

        validation = {c: dst("dst-ee", 0.95, 0, c=c, validation=True)["accuracy"] for c in args.c_grid}
        for c, accuracy in validation.items():
            print(f"validation c={c:g}: {accuracy:.4f}", flush=True)
        best_c = max(validation, key=validation.get)

        results = {}
        for sparsity in args.sparsities:
            for seed in range(args.seeds):
                for method in METHODS:
                    if method == "tfmot":
                        job = common.tfmot_job(data, sparsity, seed, 0.75, **base)
                        result = common.cached_worker("dst", job, legacy_keras=True, timeout=4 * 3600)
                    else:
                        result = dst(method, sparsity, seed, c=best_c if method == "dst-ee" else 0.0)
                    results.setdefault((sparsity, method), []).append(result)
                    print(f"sparsity {sparsity:.2f} seed {seed} {method:7s} accuracy {result['accuracy']:.4f} "
                          f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s", flush=True)
        overhead = common.cached_worker("dst", dict(kind="overhead", method="dst-ee", data=data, model=args.model,
                                                    rounds=args.overhead_rounds, update_every=100, c=best_c,
                                                    sparsity=0.9))
    write(args, source, validation, best_c, results, overhead)


def write(args, source, validation, best_c, results, overhead):
    rows, medians = common.accuracy_rows(results, args.sparsities, METHODS)
    goal = [s for s in args.sparsities
            if medians[(s, "dst-ee")] >= medians[(s, "rigl")] and medians[(s, "dst-ee")] >= medians[(s, "set")]]
    missed = [f"{s:.2f}" for s in args.sparsities if s not in goal]
    coverage_rows = [[f"{s:.2f}"] + [f"{common.median([r['coverage'] for r in results[(s, m)]]):.3f}"
                                     for m in METHODS[:3]] for s in args.sparsities]
    ratio = common.median(overhead["ratios"])
    text = f"""# Dynamic sparse training on {args.model}, Fashion-MNIST

Command: `python benchmarks/dst.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds}`
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

Coverage (fraction of weights ever active), median:

{common.markdown_table(["sparsity", *[LABELS[m] for m in METHODS[:3]]], coverage_rows)}

Overhead: DST-EE (update_every=100) vs the plain masked model (no method), alternating one-epoch
fits: time ratio {ratio:.3f} (median of {len(overhead["ratios"])} pairs; range
{min(overhead["ratios"]):.2f}-{max(overhead["ratios"]):.2f}; goal <= 1.15).
"""
    common.save_accuracy_results(f"dst_{args.model}", text, medians, args.sparsities, LABELS,
                                 f"{args.model}, Fashion-MNIST")


if __name__ == "__main__":
    main()
