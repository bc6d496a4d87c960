"""Channel pruning that becomes speed: accuracy and LiteRT latency after `tfsparse.shrink`.

1. ResNet-20 on full Fashion-MNIST (28x28): a dense model trained for
   `--epochs`; from it, `--prune-epochs` more epochs of
   `ChannelPruning(--sparsity)` (L2 group norm, the sparsity ramping over the
   first 70 %, then fine-tuning with the masks fixed) and `tfsparse.shrink`;
   the honest baselines at the same budget (`--epochs + --prune-epochs`):
   * the same dense training continued for `--prune-epochs` (the reference),
   * the shrunk architecture trained from scratch (same layer widths),
   * unstructured `MagnitudePruning` from the dense model to the same number
     of nonzero weights as the shrunk model (LiteRT stores it with DENSIFY).
   Test accuracy of each, and LiteRT latency (batch 1, float32, XNNPACK and
   builtin kernels, 1 and 2 threads, all files side by side, interleaved).
2. keras.applications MobileNetV2 (alpha 1.0) and ResNet50 at 224x224, random
   weights, 50 % of the channels of every prunable group removed by L2 norm:
   latency of the shrunk vs the dense file (no accuracy: no ImageNet here).

    python benchmarks/channel_pruning.py [--epochs 6 --prune-epochs 4 --seeds 1]

Trained models are cached in results/cache/channel_pruning/ (a rerun
measures latency again and retrains nothing). Writes
results/channel_pruning.md, .json and .png.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
import litert_latency  # noqa: E402
import tfsparse  # noqa: E402
from tfsparse import export, latency  # noqa: E402
from tfsparse.methods import ChannelPruning, MagnitudePruning  # noqa: E402
from tfsparse_app import datasets, zoo  # noqa: E402

CACHE = common.RESULTS / "cache" / "channel_pruning"
BATCH_SIZE = 128
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def compiled(model, learning_rate):
    model.compile(keras.optimizers.Adam(learning_rate), LOSS, metrics=["accuracy"])
    return model


def fit(model, data, epochs, callbacks=()):
    model.fit(data.x_train, data.y_train, batch_size=BATCH_SIZE, epochs=epochs,
              callbacks=list(callbacks), verbose=2)


def accuracy(model, data):
    plain = tfsparse.strip(model) if tfsparse.masked_weights(model) else model
    compiled(plain, 1e-3)
    return float(plain.evaluate(data.x_test, data.y_test, batch_size=512, verbose=0)[1])


def nonzero_weights(model):
    """Nonzero entries of the weight matrices (rank >= 2), biases aside."""
    return int(sum(np.count_nonzero(keras.ops.convert_to_numpy(w)) for w in model.weights if len(w.shape) >= 2))


def cached(name, build):
    """(model, info) trained by `build()` once, then loaded from the cache."""
    path, info_path = CACHE / f"{name}.keras", CACHE / f"{name}.json"
    if path.exists() and info_path.exists():
        return keras.saving.load_model(path, compile=False), json.loads(info_path.read_text())
    model, info = build()
    CACHE.mkdir(parents=True, exist_ok=True)
    model.save(path)
    info_path.write_text(json.dumps(info))
    return model, info


def train_resnet(data, args, seed):
    """The four ResNet-20 models of one seed, plain and stripped."""
    tag = f"resnet20_s{args.sparsity}_e{args.epochs}+{args.prune_epochs}_n{len(data.x_train)}_seed{seed}"

    def dense_start():
        keras.utils.set_random_seed(seed)
        model = compiled(zoo.resnet20(data.input_shape, data.num_classes), args.lr)
        fit(model, data, args.epochs)
        return model, {}

    start, _ = cached(f"{tag}_dense_start", dense_start)

    def dense():
        model = compiled(keras.models.clone_model(start), args.lr)
        model.set_weights(start.get_weights())
        fit(model, data, args.prune_epochs)
        return model, {"accuracy": accuracy(model, data)}

    def channel():
        model = compiled(tfsparse.prune(start), args.lr)
        steps = args.prune_epochs * int(np.ceil(len(data.x_train) / BATCH_SIZE))
        fit(model, data, args.prune_epochs, [ChannelPruning(args.sparsity, frequency=max(steps // 40, 1))])
        small = tfsparse.shrink(model)
        return small, {"accuracy": accuracy(small, data)}

    def scratch():
        keras.utils.set_random_seed(seed + 1000)
        model = compiled(keras.models.clone_model(shrunk), args.lr)  # same widths, fresh weights
        fit(model, data, args.epochs + args.prune_epochs)
        return model, {"accuracy": accuracy(model, data)}

    def unstructured():
        model = compiled(tfsparse.prune(start), args.lr)
        target = 1.0 - nonzero_weights(shrunk) / nonzero_weights(start)
        steps = args.prune_epochs * int(np.ceil(len(data.x_train) / BATCH_SIZE))
        fit(model, data, args.prune_epochs,
            [MagnitudePruning(target, allocation="global", frequency=max(steps // 40, 1))])
        plain = tfsparse.strip(model)
        return plain, {"accuracy": accuracy(plain, data), "sparsity": target}

    results = {"dense": cached(f"{tag}_dense", dense), "channel pruned + shrink": cached(f"{tag}_channel", channel)}
    shrunk = results["channel pruned + shrink"][0]  # the baselines below match it
    results["same widths from scratch"] = cached(f"{tag}_scratch", scratch)
    results["unstructured, same nonzeros"] = cached(f"{tag}_unstructured", unstructured)
    return results


def export_files(named_models, directory, sample, sparse_names=()):
    files = {}
    for name, model in named_models.items():
        path = Path(directory) / f"{name.replace(' ', '_').replace(',', '')}.tflite"
        export.to_tflite(model, path, sparse=name in sparse_names, verification_data=sample)
        files[name] = str(path)
    return files


def applications(directory, size, sparsity=0.5):
    """Dense and shrunk .tflite files of MobileNetV2 and ResNet50 at size x size."""
    files, params = {}, {}
    sample = np.random.default_rng(0).random((4, size, size, 3), dtype=np.float32)
    for name, build in (("MobileNetV2", keras.applications.MobileNetV2),
                        ("ResNet50", keras.applications.ResNet50)):
        keras.utils.set_random_seed(0)
        model = build(input_shape=(size, size, 3), weights=None)
        masked = tfsparse.prune(model)
        method = ChannelPruning(sparsity)
        method.set_model(masked)
        method.update_masks(sparsity)
        small = tfsparse.shrink(masked)
        params[name] = (model.count_params(), small.count_params())
        files.update(export_files({f"{name} dense": model, f"{name} shrunk": small}, directory, sample))
    return files, params


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--prune-epochs", type=int, default=4)
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--invokes", type=int, default=200)
    parser.add_argument("--max-train", type=int, default=None, help="a smoke test on fewer images")
    parser.add_argument("--input-size", type=int, default=224, help="of the keras.applications models")
    args = parser.parse_args()

    data = datasets.load("fashion_mnist", download=False, max_train=args.max_train)
    runs = [train_resnet(data, args, seed) for seed in range(args.seeds)]
    accuracies = {name: [100 * run[name][1]["accuracy"] for run in runs] for name in runs[0]}
    first = runs[0]
    with tempfile.TemporaryDirectory() as directory:
        sample = data.x_test[:200]
        resnet_files = export_files({name: model for name, (model, _) in first.items()}, directory, sample,
                                    sparse_names=("unstructured, same nonzeros",))
        sizes = {name: os.path.getsize(path) for name, path in resnet_files.items()}
        resnet_latency = latency.compare(resnet_files, rounds=args.rounds, invokes=args.invokes)
        app_files, app_params = applications(directory, args.input_size)
        app_latency = latency.compare(app_files, rounds=3, invokes=max(args.invokes // 20, 5), warmup=5)
    write(args, data, first, accuracies, sizes, resnet_latency, app_params, app_latency)


def write(args, data, first, accuracies, sizes, resnet_latency, app_params, app_latency):
    rows = []
    for name, (model, info) in first.items():
        values = accuracies[name]
        cell = f"{common.median(values):.2f}" + (f" ({min(values):.2f}-{max(values):.2f})" if len(values) > 1 else "")
        xnn = resnet_latency[name]["xnnpack/1"]
        base = resnet_latency["dense"]["xnnpack/1"]
        rows.append([name, cell, f"{nonzero_weights(model):,}", f"{sizes[name]:,}",
                     f"{xnn['median_ms']:.3f}" if xnn["ok"] else "fails",
                     f"{base['median_ms'] / xnn['median_ms']:.2f}x" if xnn["ok"] else "-"])
    app_rows = []
    for name, (dense_params, small_params) in app_params.items():
        for threads in (1, 2):
            key = f"xnnpack/{threads}"
            dense, small = app_latency[f"{name} dense"][key], app_latency[f"{name} shrunk"][key]
            app_rows.append([name, threads, f"{dense_params:,} -> {small_params:,}", f"{dense['median_ms']:.1f}",
                             f"{small['median_ms']:.1f}", f"{dense['median_ms'] / small['median_ms']:.2f}x"])
    text = f"""# Channel pruning + shrink: accuracy and LiteRT latency

`python benchmarks/channel_pruning.py --epochs {args.epochs} --prune-epochs {args.prune_epochs} --sparsity {args.sparsity} --seeds {args.seeds}`

Machine: {common.machine()} (shared with other jobs while it ran: read ratios within one table, not
absolute times across tables). {common.versions()}. Data: {data.source}, {len(data.x_train):,} training and
{len(data.x_test):,} test images.

## ResNet-20 on Fashion-MNIST (28x28)
Dense: {args.epochs} + {args.prune_epochs} epochs (Adam {args.lr}, batch {BATCH_SIZE}). Channel pruning: from the dense model
after {args.epochs} epochs, {args.prune_epochs} epochs of `ChannelPruning({args.sparsity})` (L2 group norm, every prunable group
loses {args.sparsity:.0%} of its channels over the first 70 % of those epochs), then `tfsparse.shrink`. The shrunk
architecture trained from scratch for all {args.epochs + args.prune_epochs} epochs; unstructured global magnitude pruning
from the same dense start to the shrunk model's number of nonzero weights. Seeds: {args.seeds} (median (min-max)).
Latency: float32 files, batch 1, LiteRT default runtime (XNNPACK), 1 thread, median of {args.rounds} x {args.invokes}
interleaved invokes; speedup = dense median / file median.

{common.markdown_table(["model", "test accuracy %", "nonzero weights", "file bytes", "latency ms", "speedup"], rows)}

All configurations (median ms (IQR), x dense):

{litert_latency.format_table(resnet_latency, baseline="dense")}

## keras.applications at {args.input_size}x{args.input_size}, 50 % of every prunable group's channels removed (random weights)
Latency, float32, XNNPACK, median of 3 x {max(args.invokes // 20, 5)} interleaved invokes.

{common.markdown_table(["model", "threads", "params", "dense ms", "shrunk ms", "speedup"], app_rows)}

All configurations:

{litert_latency.format_table(app_latency)}
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "channel_pruning.md").write_text(text)
    (common.RESULTS / "channel_pruning.json").write_text(json.dumps(
        {"accuracies": accuracies, "sizes": sizes, "resnet_latency": resnet_latency,
         "applications": {"params": app_params, "latency": app_latency}}, indent=1, default=str))
    plot(first, accuracies, resnet_latency)
    print(text)


def plot(first, accuracies, latency):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.5, 4))
    axis = figure.subplots()
    for name in first:
        result = latency[name]["xnnpack/1"]
        if result["ok"]:
            axis.scatter(result["median_ms"], common.median(accuracies[name]), s=60, label=name)
    axis.set(xlabel="LiteRT latency, batch 1, XNNPACK 1 thread (ms)", ylabel="test accuracy % (median)",
             title="ResNet-20 on Fashion-MNIST")
    axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(common.RESULTS / "channel_pruning.png", dpi=100)


if __name__ == "__main__":
    main()
