"""Global allocation at a fresh initialization: does a layer collapse? (issue #19)

Builds keras.applications ResNet50, EfficientNetB0 and DenseNet121
(weights=None, input 32x32x3, 10 classes, seed 0) and computes the masks of
every Conv2D / DepthwiseConv2D / Dense kernel from magnitude scores |kernel|
with `tfsparse.allocation.get(...).masks(...)` at sparsity 0.8 and 0.95, for
`Global(min_density=0)` (the guard before issue #19: one weight per layer),
`Global()` (the default floor: 1% of each layer), `LAMP(min_density=0)`
and `LAMP()`. Reports the smallest kept fraction of a layer, the layers
below 1% (the default floor, as `keep_count(n, 0.99)` weights) and those
left with a single weight. Kernel shapes do not depend on the input size.

    python benchmarks/allocation_floor.py

Writes benchmarks/results/allocation_floor.md.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
from tfsparse import allocation  # noqa: E402

MODELS = {"ResNet50": keras.applications.ResNet50, "EfficientNetB0": keras.applications.EfficientNetB0,
          "DenseNet121": keras.applications.DenseNet121}
ALLOCATIONS = {
    "global, min_density=0 (old guard)": lambda: allocation.Global(min_density=0),
    "global (default floor)": allocation.Global,
    "lamp, min_density=0": lambda: allocation.LAMP(min_density=0),
    "lamp (default floor)": allocation.LAMP,
}
FLOOR = 0.01  # the default floor at these sparsities (min(1%, half the density))


def magnitude_scores(model):
    """|kernel| of every Conv2D / DepthwiseConv2D / Dense layer, by weight path."""
    kinds = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    return {layer.kernel.path: np.abs(keras.ops.convert_to_numpy(layer.kernel))
            for layer in model._flatten_layers() if isinstance(layer, kinds)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.8, 0.95])
    parser.add_argument("--input-size", type=int, default=32)
    args = parser.parse_args()

    rows = []
    for model_name, factory in MODELS.items():
        keras.utils.set_random_seed(0)
        model = factory(weights=None, input_shape=(args.input_size, args.input_size, 3), classes=10)
        scores = magnitude_scores(model)
        total = sum(v.size for v in scores.values())
        del model
        keras.backend.clear_session()
        for sparsity in args.sparsities:
            for label, make in ALLOCATIONS.items():
                start = time.perf_counter()
                masks = make().masks(scores, sparsity)
                seconds = time.perf_counter() - start
                kept = {name: int(mask.sum()) for name, mask in masks.items()}
                assert sum(kept.values()) == round(total * (1 - sparsity))
                fractions = {name: kept[name] / masks[name].size for name in masks}
                smallest = min(fractions, key=fractions.get)
                below = sum(kept[n] < allocation.keep_count(masks[n].size, 1 - FLOOR) for n in masks)
                single = sum(count == 1 for count in kept.values())
                rows.append([model_name, f"{sparsity:.2f}", label, f"{fractions[smallest]:.2e}",
                             f"`{smallest.rsplit('/', 1)[0]}` ({masks[smallest].size:,})",
                             f"{below} / {len(masks)}", single, f"{seconds:.2f}"])
                print(" | ".join(str(cell) for cell in rows[-1]), flush=True)
        rows.append([f"{model_name}: {len(scores)} kernels, {total / 1e6:.1f} M weights"] + [""] * 7)

    header = ["model", "sparsity", "allocation", "smallest kept fraction", "in layer (weights)",
              "layers below 1%", "layers with 1 weight", "seconds"]
    text = f"""# Global and LAMP allocation at a fresh initialization (issue #19)

Command: `python benchmarks/allocation_floor.py`. Machine: {common.machine()}. {common.versions()}.
keras.applications models, weights=None, input {args.input_size}x{args.input_size}x3, 10 classes, seed 0;
magnitude scores |kernel| of every Conv2D / DepthwiseConv2D / Dense kernel; totals exact in every row.
"Below 1%": fewer than `keep_count(n, 0.99)` weights kept, the default floor at these sparsities.

{common.markdown_table(header, rows)}
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "allocation_floor.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
