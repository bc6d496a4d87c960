"""ASNI-I and ASNI-II on the authors' recipe, next to tfmot at the same sparsity.

Full Fashion-MNIST; default LeNet-300-100 with the authors' LeNet recipe:
Adam 1.2e-4, batch 60, T = 50 epochs, M = 0.98, k = 5. Per seed (own
process): ASNI-I; ASNI-II retrained from its 2-numbers-per-layer
initialization; the same mask retrained from a fresh random initialization;
and tfmot's gradual magnitude pruning (PolynomialDecay over the first 70 % of
steps, frequency 100) to ASNI-I's final sparsity with the same optimizer,
batch and epochs.

    python benchmarks/asni.py [--model conv2 --epochs 20 --magnitude 0.992 --scale 2 --lr 2e-4]

Writes benchmarks/results/asni_<model>.md, and from seed 0 the schedule plot
asni_<model>_schedule.png and the per-layer histograms of the surviving
ASNI-I weights with c_plus / c_minus, asni_<model>_centroids.png.
"""

import argparse
import tempfile
from pathlib import Path

import common


def verdict(met):
    return "met" if met else "missed"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet_300_100")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--magnitude", type=float, default=0.98)
    parser.add_argument("--scale", type=float, default=5.0)
    parser.add_argument("--lr", type=float, default=1.2e-4)
    parser.add_argument("--batch-size", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    runs = {"asni1": [], "asni2": [], "random_same_mask": [], "tfmot": [], "sparsity": []}
    sizes = None
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        for seed in range(args.seeds):
            job = dict(kind="asni", data=data, model=args.model, seed=seed, epochs=args.epochs,
                       batch_size=args.batch_size, learning_rate=args.lr, magnitude=args.magnitude, scale=args.scale,
                       plots=str(common.RESULTS) if seed == 0 else None)
            result = common.run_worker(job, timeout=4 * 3600)
            tfmot = common.run_worker(dict(kind="accuracy", library="tfmot", data=data, model=args.model,
                                           sparsity=round(result["sparsity"], 4), seed=seed, epochs=args.epochs,
                                           batch_size=args.batch_size, learning_rate=args.lr,
                                           end_fraction=0.7, frequency=100), legacy_keras=True, timeout=4 * 3600)
            for key in ("asni1", "asni2", "random_same_mask", "sparsity"):
                runs[key].append(result[key])
            runs["tfmot"].append(tfmot["accuracy"])
            sizes = (result["init_bytes"], result["dense_bytes"])
            print(f"seed {seed}: {result} tfmot {tfmot['accuracy']:.4f}", flush=True)
    rows = []
    for key, label in (("asni1", "ASNI-I"), ("asni2", "ASNI-II (2 numbers per layer + mask + signs)"),
                       ("random_same_mask", "same mask, fresh random init"), ("tfmot", "tfmot GMP, same sparsity")):
        values = [100 * v for v in runs[key]]
        rows.append([label, f"{common.median(values):.2f}", f"{min(values):.2f}-{max(values):.2f}"])
    gap = 100 * (common.median(runs["asni1"]) - common.median(runs["tfmot"]))
    retrain_gap = 100 * (common.median(runs["asni2"]) - common.median(runs["asni1"]))
    text = f"""# ASNI on {args.model}, Fashion-MNIST

Command: `python benchmarks/asni.py --model {args.model} --epochs {args.epochs} --magnitude {args.magnitude} --scale {args.scale} --lr {args.lr} --batch-size {args.batch_size} --seeds {args.seeds}`
Machine: {common.machine()}; {common.versions()}. Data: {source}.
Recipe: Adam {args.lr}, batch {args.batch_size}, T = {args.epochs}, M = {args.magnitude}, k = {args.scale}; {args.seeds} seeds.
Final weight sparsity (ASNI-I, the network after the prune of epoch T-2): {common.median(runs['sparsity']):.4f}.

{common.markdown_table(["network", "test accuracy % (median)", "range"], rows)}

ASNI-I - tfmot: {gap:+.2f} points (goal >= -0.3: {verdict(gap >= -0.3)}). ASNI-II - ASNI-I: {retrain_gap:+.2f} points (goal >= -1: {verdict(retrain_gap >= -1)}).
ASNI-II initialization: {sizes[0]:,} bytes (mask bits, sign bits of survivors, 2 float32 per layer) vs {sizes[1]:,} bytes of dense float32 kernels ({sizes[1] / sizes[0]:.0f}x smaller).
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / f"asni_{args.model}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
