"""Training time per epoch: pruned model vs plain model, tfsparse vs tfmot.

For each library, one worker process builds the plain and the pruned model
(90 % target, polynomial schedule, frequency 100) and alternates one-epoch
fits of the two, `--rounds` times, on the first `--examples` Fashion-MNIST
images, batch 128, Adam. The first pair (tracing) is dropped. The ratio is
the median over pairs of pruned / plain epoch time: each pair is measured
back to back, so the machine's drift (we saw 25 % between runs) cancels.

    python benchmarks/overhead.py

Writes benchmarks/results/overhead.md and overhead.png.
"""

import argparse
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

import common

MODELS = ("lenet_300_100", "lenet5")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--examples", type=int, default=20000)
    args = parser.parse_args()
    rows, ratios = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        common.export_data("fashion_mnist", data)
        for model in MODELS:
            for library, legacy in (("keras3", False), ("tf_keras", True)):
                job = dict(kind="epoch_time", library=library, data=data, model=model,
                           rounds=args.rounds, examples=args.examples)
                times = common.run_worker(job, legacy_keras=legacy)
                plain, pruned = common.median(times["plain"]), common.median(times["pruned"])
                ratio = common.median(times["ratios"])
                name = "tfsparse (Keras 3)" if library == "keras3" else "tfmot (tf_keras)"
                ratios[(model, name)] = ratio
                rows.append([model, name, f"{plain:.3f}", f"{pruned:.3f}", f"**{ratio:.3f}**",
                             f"{min(times['ratios']):.3f}-{max(times['ratios']):.3f}"])
                print(rows[-1], flush=True)
    text = f"""# Training overhead of pruning: time per epoch, pruned / plain

Command: `python benchmarks/overhead.py --rounds {args.rounds} --examples {args.examples}`
Machine: {common.machine()}; {common.versions()}.
Fashion-MNIST (first {args.examples} images), batch 128, Adam; 90 % target, PolynomialDecay, frequency 100.
Plain and pruned one-epoch fits alternate {args.rounds} times in one process per library; the first pair
(tracing) is dropped; ratio = median over pairs of pruned / plain (range over pairs alongside).

{common.markdown_table(["model", "library", "plain s/epoch", "pruned s/epoch", "ratio (median)", "ratio range"], rows)}

Goal (issue 2): tfsparse ratio <= 1.05 and not worse than tfmot's own ratio.
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "overhead.md").write_text(text)
    fig = Figure(figsize=(5, 3.2))
    axis = fig.subplots()
    names = ["tfsparse (Keras 3)", "tfmot (tf_keras)"]
    for offset, name in zip((-0.2, 0.2), names):
        axis.bar([i + offset for i in range(len(MODELS))], [ratios[(m, name)] for m in MODELS], width=0.4, label=name)
    axis.axhline(1.0, color="black", linewidth=0.8)
    axis.set_xticks(range(len(MODELS)), MODELS)
    axis.set_ylabel("epoch time pruned / plain")
    axis.legend()
    fig.tight_layout()
    fig.savefig(common.RESULTS / "overhead.png", dpi=100)
    print(text)


if __name__ == "__main__":
    main()
