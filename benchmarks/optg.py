"""OptG vs tfsparse global magnitude pruning (vs tfmot), on one budget.

Full Fashion-MNIST, the same epochs and the same batches (see
`workers.fit_same_batches`) for every method; each run is its own subprocess
(tfmot under tf_keras). Two recipes:

- `--recipe adam` (default): Adam 1e-3, batch 128, 15 epochs; OptG, tfsparse
  global magnitude and tfmot; plus the overhead of OptG.
- `--recipe paper`: the OptG paper's, SGD momentum 0.9, linear warm-up over 5
  epochs then cosine to 0 (`keras.optimizers.schedules.CosineDecay`), batch
  256, 100 epochs, coupled weight decay 5e-4 (the authors' CIFAR-10 value; 1e-4
  on ImageNet); OptG and tfsparse global magnitude. Each method's peak
  learning rate is chosen among `--learning-rates` on a validation split
  (the last 10 % of the training set, never the test set): one run per
  candidate at `--select-sparsity`, seed 0, the full budget.

- OptG: zero-initialized scores, SGD-momentum score updates at
  lr_w * sigmoid(e - E/2), per-epoch global top-k to s(e) (beta = 1).
- MagnitudePruning(allocation="global"): PolynomialDecay 0 -> target over
  75 % of the steps, frequency 100.
- MagnitudePruning(allocation="layer") (`--methods magnitude-layer`): the
  same schedule, every layer at the target: GMP as Zhu & Gupta define it.
- MagnitudePruning(allocation="lamp") (`--methods magnitude-lamp`): the same
  schedule, LAMP scores (Lee et al., ICLR 2021) under one global threshold.
- tfmot prune_low_magnitude: the same schedule, every layer at the target.
- Overhead: OptG vs the plain masked model (no method), alternating one-epoch
  fits (median of the per-pair ratios).

    python benchmarks/optg.py [--model lenet_300_100] [--epochs 15] [--seeds 3]
    python benchmarks/optg.py --recipe paper [--jobs 2]
    python benchmarks/optg.py --recipe paper --methods magnitude-layer   # a page of its own

Finished runs are cached in benchmarks/results/cache/optg/ (a rerun resumes).
Writes benchmarks/results/optg_<model>.md and .png (`--recipe paper`:
optg_paper_<model>.md and .png).
"""

import argparse
import tempfile
from pathlib import Path

import common

LABELS = {"optg": "OptG", "magnitude-global": "tfsparse magnitude (global)",
          "magnitude-layer": "tfsparse magnitude (per layer, GMP)", "magnitude-lamp": "tfsparse magnitude (LAMP)",
          "tfmot": "tfmot GMP"}
RECIPES = {
    "adam": dict(methods=("optg", "magnitude-global", "tfmot"), epochs=15, batch_size=128, learning_rates=[1e-3]),
    "paper": dict(methods=("optg", "magnitude-global"), epochs=100, batch_size=256,
                  learning_rates=[0.01, 0.03, 0.1, 0.3], warmup_epochs=5, weight_decay=5e-4),
}

#: Ablations of the paper recipe (label -> method, changes to the recipe), on validation at
#: --select-sparsity, seed 0, each at the learning rate chosen for the method whose criterion it
#: uses (ABLATION_RATE).
ABLATIONS = {
    "OptG without weight decay": ("optg", {"weight_decay": 0.0}),
    "OptG, beta 0.5 (the default of the code's arguments; its configs set 1)": ("optg", {"beta": 0.5}),
    "magnitude (global) without weight decay": ("magnitude-global", {"weight_decay": 0.0}),
    "magnitude (global, no regrowth) on OptG's sigmoid schedule": ("magnitude-sigmoid", {}),
    "OptG's scores on magnitude's schedule (cubic over 75 %, mask lr = lr_w)": ("optg-polynomial", {}),
}
ABLATION_RATE = {"magnitude-sigmoid": "magnitude-global", "optg-polynomial": "optg"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="adam")
    parser.add_argument("--epochs", type=int, help="default: 15 (adam), 100 (paper)")
    parser.add_argument("--learning-rates", type=float, nargs="+",
                        help="peak learning rates; more than one: chosen on validation (default: 1e-3 (adam), "
                             "0.01 0.03 0.1 0.3 (paper))")
    parser.add_argument("--select-sparsity", type=float, default=0.95)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.90, 0.95, 0.98])
    parser.add_argument("--overhead-rounds", type=int, default=6)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes at a time")
    parser.add_argument("--methods", nargs="+", choices=sorted(LABELS),
                        help="default: the recipe's (adam: optg magnitude-global tfmot; paper: optg "
                             "magnitude-global); others write their own page")
    parser.add_argument("--ablations", action="store_true",
                        help="paper recipe: the ablations of ABLATIONS on validation (--select-sparsity, seed 0)")
    args = parser.parse_args()
    recipe = RECIPES[args.recipe]
    args.epochs = args.epochs or recipe["epochs"]
    args.learning_rates = args.learning_rates or recipe["learning_rates"]
    args.methods = tuple(args.methods or recipe["methods"])
    base = recipe_settings(args.recipe, args.model, args.epochs)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        selection = {}
        if len(args.learning_rates) > 1:
            runs = {(method, rate): method_job(data, method, args.select_sparsity, 0, base, rate, validation=True)
                    for method in args.methods for rate in args.learning_rates}
            selection = common.run_all("optg", runs, args.jobs, describe)
        chosen = {method: max(args.learning_rates, key=lambda rate: selection.get((method, rate), {}).get("accuracy", 0))
                  for method in args.methods}
        runs = {label: method_job(data, method, args.select_sparsity, 0, dict(base, **changes),
                                  chosen[ABLATION_RATE.get(method, method)], validation=True)
                for label, (method, changes) in ABLATIONS.items() if args.ablations}
        runs.update({(sparsity, method, seed): method_job(data, method, sparsity, seed, base, chosen[method])
                     for sparsity in args.sparsities for seed in range(args.seeds) for method in args.methods})
        results, ablations = {}, {}
        for key, result in common.run_all("optg", runs, args.jobs, describe).items():
            if key in ABLATIONS:
                ablations[key] = result
            else:
                results.setdefault(key[:2], []).append(result)
        overhead = None
        if args.recipe == "adam":
            overhead = common.cached_worker("optg", dict(kind="overhead", method="optg", data=data, model=args.model,
                                                         rounds=args.overhead_rounds, sparsity=0.9))
    write(args, source, results, overhead, selection, chosen, ablations)


def recipe_settings(name, model, epochs):
    """The worker settings of recipe `name` (see `workers.optimizer`), shared with dense.py."""
    recipe = RECIPES[name]
    settings = dict(model=model, epochs=epochs, batch_size=recipe["batch_size"])
    if name == "paper":
        settings.update(recipe="paper", warmup_epochs=recipe["warmup_epochs"], weight_decay=recipe["weight_decay"])
    return settings


def method_job(data, method, sparsity, seed, base, learning_rate, validation=False):
    if method == "tfmot":
        return common.tfmot_job(data, sparsity, seed, 0.75, learning_rate=learning_rate, **base)
    job = dict(base, kind="method", method=method, data=data, sparsity=sparsity, seed=seed, end_fraction=0.75,
               learning_rate=learning_rate)
    return dict(job, validation=True) if validation else job


def describe(job, result):
    return (f"{'validation' if job.get('validation') else 'test'} sparsity {job['sparsity']:.2f} seed {job['seed']} "
            f"{job.get('method', 'tfmot'):16s} lr {job['learning_rate']:g} accuracy {result['accuracy']:.4f} "
            f"sparsity {result['sparsity']:.4f} time {result['train_seconds']:.0f}s")


def write(args, source, results, overhead, selection, chosen, ablations):
    rows, medians = common.accuracy_rows(results, args.sparsities, args.methods)
    verdicts = []
    others = [m for m in args.methods if m != "optg"]
    for sparsity in (0.95, 0.98):
        if sparsity in args.sparsities and "optg" in args.methods and others:
            best_other = max(medians[(sparsity, m)] for m in others)
            gap = medians[(sparsity, "optg")] - best_other
            verdicts.append(f"{sparsity:.2f}: {gap:+.2f} points vs the better baseline ({'met' if gap > 0 else 'missed'})")
    flips = [[f"{s:.2f}", " ".join(f"{h['flip_fraction']:.3f}" for h in results[(s, "optg")][0]["history"])]
             for s in args.sparsities if "optg" in args.methods]
    command = f"python benchmarks/optg.py --model {args.model} --epochs {args.epochs} --seeds {args.seeds}"
    if args.recipe == "adam":
        budget = f"{args.epochs} epochs, Adam 1e-3 (weights), batch 128, identical batches."
    else:
        command += (f" --recipe paper --learning-rates {' '.join(f'{r:g}' for r in args.learning_rates)} "
                    f"--sparsities {' '.join(f'{s:g}' for s in args.sparsities)}" + (" --ablations" if ablations else ""))
        budget = (f"{args.epochs} epochs, SGD momentum 0.9, learning rate linear from 0 to the peak over "
                  f"{RECIPES['paper']['warmup_epochs']} epochs, then cosine to 0 (Keras CosineDecay with warm-up), "
                  f"coupled weight decay {RECIPES['paper']['weight_decay']:g} on the kernels (an L2 penalty, "
                  "as PyTorch's SGD; the authors' CIFAR-10 value), batch 256, identical batches. Device: the CPU "
                  "(no GPU), at low priority beside other jobs, so no times are reported.")
    if args.methods != RECIPES[args.recipe]["methods"]:
        command += f" --methods {' '.join(args.methods)}"
    title = "OptG" if "optg" in args.methods else ", ".join(LABELS[m] for m in args.methods)
    text = f"""# {title} on {args.model}, Fashion-MNIST{" (the OptG paper's recipe)" if args.recipe == "paper" else ""}

Command: `{command}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Budget for every method: {budget}
OptG: beta = 1, score SGD momentum 0.9, masks by one global top-k at each epoch start. Magnitude
baselines: PolynomialDecay 0 -> target over 75 % of the steps, frequency 100 (global: one threshold
over all layers; LAMP: one threshold over LAMP scores; per layer (GMP, Zhu & Gupta) and tfmot: every
layer at the target).
"""
    if "optg" not in args.methods:
        page = f"optg_{args.model}" if args.recipe == "adam" else f"optg_paper_{args.model}"
        text += (f"\nOptG itself is not in this run: its runs on the same recipe, seeds and batches are in {page}.md "
                 "(each run is deterministic given its seed: the batches come from NumPy, see workers.py).\n")
    if selection:
        candidates = [[LABELS[m], *(f"{100 * selection[(m, r)]['accuracy']:.2f}" for r in args.learning_rates),
                       f"{chosen[m]:g}"] for m in args.methods]
        text += f"""
Peak learning rate, chosen per method on validation (trained on the first 90 % of the training set,
accuracy % on the last 10 %; sparsity {args.select_sparsity:g}, seed 0, the full budget):

{common.markdown_table(["method", *(f"lr {r:g}" for r in args.learning_rates), "chosen"], candidates)}
"""
    if ablations:
        reference = {m: 100 * selection[(m, chosen[m])]["accuracy"] for m in args.methods}
        ablation_rows = [[f"{LABELS[m]} (the recipe)", f"{reference[m]:.2f}"] for m in args.methods]
        ablation_rows += [[label, f"{100 * result['accuracy']:.2f}"] for label, result in ablations.items()]
        text += f"""
Ablations on validation (sparsity {args.select_sparsity:g}, seed 0; each variant at the learning rate chosen
for the method whose criterion it uses): accuracy % on the last 10 % of the training set.

{common.markdown_table(["variant", "validation accuracy %"], ablation_rows)}
"""
    text += f"""
Test accuracy %, median (range) over {args.seeds} seeds:

{common.markdown_table(["sparsity", *[LABELS[m] for m in args.methods]], rows)}
"""
    if verdicts:
        text += f"""
Goal (OptG above {"every baseline" if len(others) > 1 else "the baseline"} at 0.95 and 0.98): {"; ".join(verdicts)}.
"""
    if flips:
        text += f"""
Fraction of mask entries flipped at each epoch start (OptG, seed 0):

{common.markdown_table(["sparsity", "epochs 0, 1, 2, ..."], flips)}
"""
    if overhead:
        text += "\n" + common.overhead_text(overhead, "OptG vs the plain masked model (no method)", 1.2,
                                            "optg_lenet_300_100.md") + "\n"
    name = f"optg_{args.model}" if args.recipe == "adam" else f"optg_paper_{args.model}"
    if args.methods != RECIPES[args.recipe]["methods"]:
        name += "_" + "_".join(args.methods)
    common.save_accuracy_results(name, text, medians, args.sparsities, {m: LABELS[m] for m in args.methods},
                                 f"{args.model}, Fashion-MNIST")


if __name__ == "__main__":
    main()
