"""OptG vs tfsparse global magnitude pruning vs tfmot, on one budget.

Full Fashion-MNIST, Adam 1e-3, batch 128, the same epochs and the same
batches (see `workers.fit_same_batches`) for every method; each run is its
own subprocess (tfmot under tf_keras).

- OptG: zero-initialized scores, SGD-momentum score updates at
  lr_w * sigmoid(e - E/2), per-epoch global top-k to s(e) (beta = 1).
- MagnitudePruning(allocation="global"): PolynomialDecay 0 -> target over
  75 % of the steps, frequency 100.
- tfmot prune_low_magnitude: the same schedule, every layer at the target.
- Overhead: OptG vs the plain masked model (no method), alternating one-epoch
  fits (median of the per-pair ratios).

    python benchmarks/optg.py [--model lenet_300_100] [--epochs 15] [--seeds 3]

Finished runs are cached in benchmarks/results/cache/optg/ (a rerun resumes).
Writes benchmarks/results/optg_<model>.md and .png.
"""

import argparse
import tempfile
from pathlib import Path

import common

METHODS = ("optg", "magnitude-global", "tfmot")
LABELS = {"optg": "OptG", "magnitude-global": "tfsparse magnitude (global)", "tfmot": "tfmot GMP"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.90, 0.95, 0.98])
    parser.add_argument("--overhead-rounds", type=int, default=6)
    args = parser.parse_args()
    base = dict(model=args.model, epochs=args.epochs, batch_size=128, learning_rate=1e-3)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        results = {}
        for sparsity in args.sparsities:
            for seed in range(args.seeds):
                for method in METHODS:
                    if method == "tfmot":
                        job = common.tfmot_job(data, sparsity, seed, 0.75, **base)
                    else:
                        job = dict(base, kind="method", method=method, data=data, sparsity=sparsity, seed=seed,
                                   end_fraction=0.75)
                    result = common.cached_worker("optg", job, legacy_keras=method == "tfmot", timeout=4 * 3600)
                    results.setdefault((sparsity, method), []).append(result)
                    print(f"sparsity {sparsity:.2f} seed {seed} {method:16s} accuracy {result['accuracy']:.4f} "
                          f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s", flush=True)
        overhead = common.cached_worker("optg", dict(kind="overhead", method="optg", data=data, model=args.model,
                                                     rounds=args.overhead_rounds, sparsity=0.9))
    write(args, source, results, overhead)


def write(args, source, results, overhead):
    rows, medians = common.accuracy_rows(results, args.sparsities, METHODS)
    verdicts = []
    for sparsity in (0.95, 0.98):
        if sparsity in args.sparsities:
            best_other = max(medians[(sparsity, m)] for m in METHODS[1:])
            gap = medians[(sparsity, "optg")] - best_other
            verdicts.append(f"{sparsity:.2f}: {gap:+.2f} points vs the better baseline ({'met' if gap > 0 else 'missed'})")
    flips = [[f"{s:.2f}", " ".join(f"{h['flip_fraction']:.3f}" for h in results[(s, "optg")][0]["history"])]
             for s in args.sparsities]
    ratio = common.median(overhead["ratios"])
    text = f"""# OptG on {args.model}, Fashion-MNIST

Command: `python benchmarks/optg.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Budget for every method: {args.epochs} epochs, Adam 1e-3 (weights), batch 128, identical batches.
OptG: beta = 1, score SGD momentum 0.9, masks by one global top-k at each epoch start. Magnitude
baselines: PolynomialDecay 0 -> target over 75 % of the steps, frequency 100 (tfsparse: one global
threshold; tfmot: every layer at the target).

Test accuracy %, median (range) over {args.seeds} seeds:

{common.markdown_table(["sparsity", *[LABELS[m] for m in METHODS]], rows)}

Goal (OptG above both baselines at 0.95 and 0.98): {"; ".join(verdicts)}.

Fraction of mask entries flipped at each epoch start (OptG, seed 0):

{common.markdown_table(["sparsity", "epochs 0, 1, 2, ..."], flips)}

Overhead: OptG vs the plain masked model (no method), alternating one-epoch fits: time ratio
{ratio:.3f} (median of {len(overhead["ratios"])} pairs; range {min(overhead["ratios"]):.2f}-{max(overhead["ratios"]):.2f};
goal <= 1.2).
"""
    common.save_accuracy_results(f"optg_{args.model}", text, medians, args.sparsities, LABELS,
                                 f"{args.model}, Fashion-MNIST")


if __name__ == "__main__":
    main()
