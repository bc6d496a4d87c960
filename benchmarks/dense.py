"""The dense model's accuracy on a benchmark recipe: the reference that
"within N points of dense" is measured against.

Full Fashion-MNIST, the same batches as the pruning benchmarks (see
`workers.fit_same_batches`), no pruning. The recipes are optg.py's: `adam`
(Adam, batch 128) and `paper` (the OptG paper's SGD momentum 0.9, warm-up then
cosine, batch 256, coupled weight decay 5e-4). With more than one
`--learning-rates`, the peak learning rate is chosen on a validation split (the
last 10 % of the training set, seed 0, the full budget), as optg.py chooses the
pruning methods' rates; the test set is read only by the seeds' final runs.

    python benchmarks/dense.py --recipe paper [--epochs 100] [--seeds 3] [--jobs 2]

Finished runs are cached in benchmarks/results/cache/dense/ (a rerun resumes).
Writes benchmarks/results/dense_<recipe>_<model>_<epochs>_epochs.md.
"""

import argparse
import tempfile
from pathlib import Path

import common
from optg import RECIPES, recipe_settings


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="paper")
    parser.add_argument("--epochs", type=int, help="default: the recipe's (15 adam, 100 paper)")
    parser.add_argument("--learning-rates", type=float, nargs="+", help="default: the recipe's")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=1, help="worker processes at a time")
    args = parser.parse_args()
    recipe = RECIPES[args.recipe]
    args.epochs = args.epochs or recipe["epochs"]
    args.learning_rates = args.learning_rates or recipe["learning_rates"]
    base = dict(recipe_settings(args.recipe, args.model, args.epochs), kind="method", method="dense", sparsity=0.0)

    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        base["data"] = data
        selection = {}
        if len(args.learning_rates) > 1:
            selection = common.run_all("dense", {rate: dict(base, seed=0, learning_rate=rate, validation=True)
                                                 for rate in args.learning_rates}, args.jobs, describe)
        chosen = max(args.learning_rates, key=lambda rate: selection.get(rate, {}).get("accuracy", 0))
        results = common.run_all("dense", {seed: dict(base, seed=seed, learning_rate=chosen)
                                           for seed in range(args.seeds)}, args.jobs, describe)
    write(args, source, selection, chosen, list(results.values()))


def describe(job, result):
    return (f"{'validation' if job.get('validation') else 'test'} seed {job['seed']} lr {job['learning_rate']:g} "
            f"accuracy {result['accuracy']:.4f} time {result['train_seconds']:.0f}s")


def describe_recipe(name, epochs):
    recipe = RECIPES[name]
    if name == "adam":
        return f"{epochs} epochs, Adam, batch {recipe['batch_size']}"
    return (f"{epochs} epochs, SGD momentum 0.9, {recipe['warmup_epochs']} warm-up epochs then cosine to 0, coupled "
            f"weight decay {recipe['weight_decay']:g} on the kernels, batch {recipe['batch_size']}")


def write(args, source, selection, chosen, results):
    accuracies = [100 * result["accuracy"] for result in results]
    command = (f"python benchmarks/dense.py --model {args.model} --recipe {args.recipe} --epochs {args.epochs} "
               f"--seeds {args.seeds} --learning-rates {' '.join(f'{r:g}' for r in args.learning_rates)}")
    text = f"""# Dense {args.model} on the {args.recipe} recipe, Fashion-MNIST

Command: `{command}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Recipe: optg.py's `{args.recipe}`, {describe_recipe(args.recipe, args.epochs)}; no pruning, the pruning
benchmarks' batches.
"""
    if selection:
        rows = [[f"{rate:g}", f"{100 * selection[rate]['accuracy']:.2f}"] for rate in args.learning_rates]
        text += f"""
Peak learning rate, chosen on validation (trained on the first 90 % of the training set, accuracy %
on the last 10 %, seed 0): {chosen:g}

{common.markdown_table(["learning rate", "validation accuracy %"], rows)}
"""
    text += f"""
Test accuracy %, {args.seeds} seeds: median {common.median(accuracies):.2f} (range {min(accuracies):.2f}-{max(accuracies):.2f});
each seed: {", ".join(f"{a:.2f}" for a in accuracies)}.
"""
    path = common.RESULTS / f"dense_{args.recipe}_{args.model}_{args.epochs}_epochs.md"
    path.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
