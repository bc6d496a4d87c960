"""The benchmark suite: every method side by side with tfmot, on one budget.

Methods x models x sparsities x seeds on one data set, each cell a fresh
worker process (tfmot's prune_low_magnitude under tf_keras), all with the
same recipe: Adam 1e-3, batch 128, `--epochs`, identical batches. Gradual
methods reach the target over 75 % of the steps (frequency 100); DST
methods are sparse from step 0 (ERK, update every 100 steps); ASNI uses
k = min(T / 12, (T/2 - 2) / 4); DE prunes a dense teacher after training (no fine-tuning). The
frozen-weight methods (ASLP, supermask: sparsity emerges; edge-popup: keep
fraction 1 - sparsity) train only mask scores at batch 256 and get a table
of their own. Finished cells are cached in results/cache/<name>/, so an
interrupted suite resumes and a rerun only computes what is new.

    python benchmarks/run.py                 # the default suite (hours on 2 cores)
    python benchmarks/run.py --quick         # a few minutes: 1 seed, 6 epochs, 5,000 examples

Writes benchmarks/results/<name>.md (tables) and <name>.png (accuracy vs
sparsity, one line per method, dense as a reference line).
"""

import argparse
import tempfile
from pathlib import Path

import common

GRADUAL = ("tfmot", "magnitude-layer", "magnitude-global", "asni", "dst-ee", "rigl", "set", "optg")
METHODS = ("dense", *GRADUAL, "asni2", "de", "aslp", "supermask", "edge-popup")
FROZEN = ("aslp", "supermask", "edge-popup")
LABELS = {
    "dense": "dense", "tfmot": "tfmot GMP", "magnitude-layer": "magnitude (layer)",
    "magnitude-global": "magnitude (global)", "asni": "ASNI-I", "asni2": "ASNI-II", "dst-ee": "DST-EE",
    "rigl": "RigL", "set": "SET", "optg": "OptG", "de": "DE (post-training)", "aslp": "ASLP",
    "supermask": "supermask", "edge-popup": "edge-popup",
}


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="suite")
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "conv2"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.90, 0.95, 0.98])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--max-train", type=int)
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 epochs, 5,000 examples, LeNet-300-100, 0.9")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS)
    args = parser.parse_args(argv)
    if args.quick:
        args.name, args.models, args.sparsities = f"{args.name}_quick", ["lenet_300_100"], [0.9]
        args.seeds, args.epochs, args.max_train = 1, 6, 5000  # 240 steps: mask updates at frequency 100
    return args


def command_line(args):
    """The command that reproduces this suite (every setting spelled out)."""
    if args.quick:
        return f"python benchmarks/run.py --quick --name {args.name.removesuffix('_quick')}"
    parts = [
        f"python benchmarks/run.py --name {args.name} --dataset {args.dataset}",
        "--models " + " ".join(args.models),
        "--sparsities " + " ".join(f"{s:g}" for s in args.sparsities),
        f"--seeds {args.seeds} --epochs {args.epochs}",
    ]
    if list(args.methods) != list(METHODS):
        parts.append("--methods " + " ".join(args.methods))
    if args.max_train:
        parts.append(f"--max-train {args.max_train}")
    return " ".join(parts)


def job_for(method, model, sparsity, seed, args, data):
    """(worker job, runs under tf_keras) of one cell."""
    recipe = dict(data=data, model=model, epochs=args.epochs, batch_size=128, learning_rate=1e-3, seed=seed)
    if method == "dense":
        return dict(recipe, kind="accuracy", library="dense"), False
    if method == "tfmot":
        return common.tfmot_job(data, sparsity, seed, 0.75, **{k: v for k, v in recipe.items()
                                                                if k not in ("data", "seed")}), True
    if method in ("asni", "asni2"):
        return dict(recipe, kind="asni", sparsity=sparsity), False
    if method == "de":
        return dict(recipe, kind="de", sparsity=sparsity), False
    if method in ("dst-ee", "rigl", "set"):
        return dict(recipe, kind="dst", method=method, sparsity=sparsity, update_every=100,
                    c=1e-2 if method == "dst-ee" else 0.0), False
    if method in FROZEN:
        frozen = dict(recipe, kind="method", method=method, batch_size=256)
        return (dict(frozen, keep_fraction=round(1 - sparsity, 6)) if method == "edge-popup" else frozen), False
    return dict(recipe, kind="method", method=method, sparsity=sparsity, end_fraction=0.75), False


def accuracy_of(method, result):
    return {"asni": result.get("asni1"), "asni2": result.get("asni2")}.get(method, result.get("accuracy"))


def main(argv=None):
    args = parse(argv)
    cache = args.results_dir / "cache" / args.name
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data(args.dataset, data, args.max_train)
        for model in args.models:
            for sparsity in args.sparsities:
                for seed in range(args.seeds):
                    for method in args.methods:
                        if method in ("dense", "aslp", "supermask") and sparsity != args.sparsities[0]:
                            results[(model, sparsity, method)] = results[(model, args.sparsities[0], method)]
                            continue
                        job, legacy = job_for(method, model, sparsity, seed, args, data)
                        result = common.cached_worker(cache, job, legacy_keras=legacy, timeout=6 * 3600)
                        result = dict(result, accuracy=accuracy_of(method, result))
                        results.setdefault((model, sparsity, method), []).append(result)
                        print(f"{model} {sparsity:.2f} seed {seed} {method:16s} accuracy {result['accuracy']:.4f}",
                              flush=True)
    return write(args, source, results)


def write(args, source, results):
    sections = []
    for model in args.models:
        gradual = [m for m in args.methods if m not in FROZEN]
        rows, medians = common.accuracy_rows({(s, m): results[(model, s, m)] for s in args.sparsities
                                              for m in gradual}, args.sparsities, gradual)
        timing = []
        dense_time = (common.median([r["train_seconds"] for r in results[(model, args.sparsities[0], "dense")]])
                      if "dense" in gradual else None)
        for method in gradual:
            runs = [r for s in args.sparsities for r in results[(model, s, method)]]
            timed = "train_seconds" in runs[0]  # the ASNI job times nothing (it trains three networks)
            seconds = common.median([r["train_seconds"] for r in runs]) if timed else None
            timing.append([LABELS[method], f"{common.median([r['sparsity'] for r in runs]):.3f}",
                           f"{seconds:.0f}" if timed else "-",
                           f"{seconds / dense_time:.2f}" if timed and dense_time else "-"])
        frozen_rows = []
        for method in (m for m in args.methods if m in FROZEN):
            for sparsity in (args.sparsities if method == "edge-popup" else args.sparsities[:1]):
                runs = results[(model, sparsity, method)]
                values = [100 * r["accuracy"] for r in runs]
                frozen_rows.append([LABELS[method] + (f", keep {1 - sparsity:.2f}" if method == "edge-popup" else ""),
                                    f"{common.median(values):.2f} ({min(values):.2f}-{max(values):.2f})",
                                    f"{common.median([r['sparsity'] for r in runs]):.3f}"])
        plot_labels = {m: LABELS[m] for m in gradual if m != "dense"}
        dense = medians.get((args.sparsities[0], "dense"))
        path = args.results_dir / f"{args.name}_{model}.png"
        trained = [medians[(s, m)] for s in args.sparsities for m in plot_labels if m != "de"]
        zoom = None
        if "de" in plot_labels and trained and min(medians[(s, "de")] for s in args.sparsities) < min(trained) - 5:
            zoom = (min(trained) - 1, max(trained + [dense or 0]) + 1)  # DE lies far below the rest
        common.plot_accuracy(medians, args.sparsities, plot_labels, f"{model}, {args.dataset}", path,
                             reference=dense, zoom=zoom)
        sections.append(f"""## {model}

Test accuracy %, median (range) over {args.seeds} seed(s):

{common.markdown_table(["sparsity", *[LABELS[m] for m in gradual]], rows)}

{verdicts(medians, args.sparsities, gradual)}

Final weight sparsity (median over sparsities and seeds; DE prunes Dense layers only), training
seconds per run (median; DE: the evolution after the teacher's training) and time vs dense:

{common.markdown_table(["method", "sparsity", "seconds", "x dense"], timing)}

Frozen random weights (only mask scores learn; ASLP and supermask find their own sparsity):

{common.markdown_table(["method", "test accuracy %", "sparsity"], frozen_rows) if frozen_rows else "(not run)"}

![{model}]({path.name})
""")
    text = f"""# Benchmark suite: {args.name}

Command: `{command_line(args)}`
Machine: {common.machine()}; {common.versions()}. Data: {source}{f" (first {args.max_train} training examples)" if args.max_train else ""}.
Budget for every cell: {args.epochs} epochs, Adam 1e-3, batch 128 (frozen-weight methods: batch 256),
identical batches; {args.seeds} seed(s). Gradual pruning reaches the target over 75 % of the steps;
DST is sparse from step 0; DE prunes a dense teacher trained on the same budget.

""" + "\n".join(sections)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / f"{args.name}.md").write_text(text)
    print(text)
    return text


def verdicts(medians, sparsities, methods):
    """The issue's goals, checked on the medians."""
    if "tfmot" not in methods:
        return ""
    ours = [m for m in methods if m not in ("dense", "tfmot")]
    lines = []
    if 0.98 in sparsities and ours:
        best = max(ours, key=lambda m: medians[(0.98, m)])
        gap = medians[(0.98, best)] - medians[(0.98, "tfmot")]
        lines.append(f"At 0.98 the best tfsparse method is {LABELS[best]}, {gap:+.2f} points vs tfmot "
                     f"(goal >= +1.0: {'met' if gap >= 1.0 else 'missed'}).")
    gradual = [m for m in ours if m in GRADUAL]
    worst = min(((medians[(s, m)] - medians[(s, "tfmot")], m, s) for s in sparsities for m in gradual),
                default=None)
    if worst:
        lines.append(f"Worst gradual method vs tfmot: {LABELS[worst[1]]} at {worst[2]:.2f}, {worst[0]:+.2f} points "
                     f"(goal >= -0.5: {'met' if worst[0] >= -0.5 else 'missed'}).")
    return " ".join(lines)


if __name__ == "__main__":
    main()
