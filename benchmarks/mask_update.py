"""Cost of one global magnitude mask update over 25 million weights.

Measures `MagnitudePruning(allocation="global").update_masks` end to end
(read kernels and masks, one global threshold, exact tie handling, assign
masks, zero newly pruned kernel entries and their Adam slots) on a model of
four 2500x2500 masked Dense layers, against `tf.math.top_k` over the same
values alone. Median of `--repeats` runs.

    python benchmarks/mask_update.py

Writes benchmarks/results/mask_update.md.
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import common  # noqa: E402
import tfsparse  # noqa: E402


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--width", type=int, default=2500)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()

    layers = [keras.Input((args.width,))] + [keras.layers.Dense(args.width, use_bias=False) for _ in range(args.layers)]
    model = tfsparse.prune(keras.Sequential(layers))
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)  # Adam slots exist, as in training
    n = sum(w.size for w in tfsparse.masked_weights(model))
    method = tfsparse.methods.MagnitudePruning(0.9, allocation="global")
    method.set_model(model)

    ours = []
    for repeat in range(args.repeats):
        target = 0.5 + 0.4 * repeat / max(args.repeats - 1, 1)  # a real, growing update each time
        start = time.perf_counter()
        method.update_masks(target)
        ours.append(time.perf_counter() - start)
    assert abs(tfsparse.sparsity(model) - 0.9) < 1e-6

    values = tf.constant(np.abs(np.random.default_rng(0).normal(size=n)).astype("float32"))
    top_k = []
    for _ in range(max(args.repeats // 2, 1)):
        start = time.perf_counter()
        tf.math.top_k(values, k=n // 10)[0].numpy()
        top_k.append(time.perf_counter() - start)
    partition = []
    host = values.numpy()
    for _ in range(args.repeats):
        start = time.perf_counter()
        np.partition(host, n - n // 10)
        partition.append(time.perf_counter() - start)

    rows = [
        ["tfsparse global update_masks (whole update, Adam slots included)", f"{common.median(ours):.3f}"],
        ["np.partition alone (the threshold step)", f"{common.median(partition):.3f}"],
        ["tf.math.top_k alone (k = 10 %)", f"{common.median(top_k):.3f}"],
    ]
    text = f"""# Global magnitude mask update, {n / 1e6:.0f} M weights

Command: `python benchmarks/mask_update.py --repeats {args.repeats}`. Machine: {common.machine()}.
Model: {args.layers} masked Dense layers of {args.width}x{args.width}; medians of {args.repeats} runs (top_k: {len(top_k)}).

{common.markdown_table(["operation", "seconds (median)"], rows)}

Goal (issue 2): <= 0.5 s for the whole update. Ratio top_k / tfsparse: {common.median(top_k) / common.median(ours):.1f}x.
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "mask_update.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
