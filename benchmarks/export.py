"""TFLite export: file size, fidelity and LiteRT latency, dense vs sparse, float vs int8.

1. LeNet-300-100 and LeNet-5 trained on full Fashion-MNIST while pruned to
   0.90 (MagnitudePruning, every layer at the target, Adam 1e-3, batch 128),
   exported by `tfsparse.export.to_tflite` six ways (dense / sparse x float32,
   float16, dynamic, int8). For each file: size vs the dense float32 file,
   max |logit error| and top-1 agreement with Keras and accuracy on the whole
   test set, the LiteRT configuration that runs it, and the median latency of
   `--invokes` single-example invokes on one thread.
2. XNNPACK's sparse path: a MobileNet-v1-style net (`mobilenet_like`) whose
   1x1 convolutions (`tfsparse.export.xnnpack_sparse_layer`) are pruned to 0.8,
   exported dense and sparse in float32, latency under the default (XNNPACK)
   configuration. Random weights: latency does not depend on training.

    python benchmarks/export.py [--epochs 8] [--invokes 500]

Writes benchmarks/results/export.md and export.png.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402
import tfsparse  # noqa: E402
from tfsparse import export  # noqa: E402
from tfsparse_app import datasets, zoo  # noqa: E402

VARIANTS = (
    ("dense float32", dict(sparse=False)),
    ("sparse float32", dict()),
    ("sparse float16", dict(quantization="float16")),
    ("sparse dynamic", dict(quantization="dynamic")),
    ("dense int8", dict(sparse=False, quantization="int8")),
    ("sparse int8", dict(quantization="int8")),
)


def latency_ms(path, options, example, invokes):
    """Median wall time of one invoke on one example (one thread)."""
    interp = export.interpreter(path, options, num_threads=1)
    detail = interp.get_input_details()[0]
    interp.resize_tensor_input(detail["index"], [1, *example.shape])
    interp.allocate_tensors()
    detail = interp.get_input_details()[0]
    value = example[None].astype(np.float32)
    if detail["dtype"] != np.float32:
        scale, zero = detail["quantization"]
        value = np.clip(np.round(value / scale + zero), -128, 127)
    interp.set_tensor(detail["index"], value.astype(detail["dtype"]))
    for _ in range(20):
        interp.invoke()
    times = []
    for _ in range(invokes):
        start = time.perf_counter()
        interp.invoke()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def trained_pruned(name, data, epochs):
    keras.utils.set_random_seed(0)
    model = tfsparse.prune(zoo.get(name, data.input_shape, data.num_classes))
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=128, epochs=epochs, verbose=0,
              callbacks=[tfsparse.methods.MagnitudePruning(0.9)])
    return model


def measure_zoo(data, epochs, invokes, tmp):
    rows = []
    for name in ("lenet_300_100", "lenet5"):
        model = trained_pruned(name, data, epochs)
        keras_logits = keras.ops.convert_to_numpy(tfsparse.strip(model).predict(data.x_test, verbose=0))
        keras_accuracy = float(np.mean(keras_logits.argmax(-1) == data.y_test))
        for label, options in VARIANTS:
            path = Path(tmp) / f"{name}_{label.replace(' ', '_')}.tflite"
            report = export.to_tflite(model, path, representative_data=data.x_train[:500],
                                      verification_data=data.x_test, **options)
            logits = export.run(export.interpreter(path, report.interpreter_options), data.x_test)
            rows.append({
                "model": name, "variant": label, "bytes": report.size_bytes, "ratio": report.size_ratio,
                "max_abs_error": report.max_abs_error, "top1_agreement": report.top1_agreement,
                "accuracy": float(np.mean(logits.argmax(-1) == data.y_test)), "keras_accuracy": keras_accuracy,
                "runtime": report.runtime,
                "latency_ms": latency_ms(path, report.interpreter_options, data.x_test[0], invokes),
            })
            print(rows[-1], flush=True)
    return rows


def mobilenet_like(size=97):
    """A MobileNet-v1-style net inside XNNPACK's sparse-subgraph rules: a 3x3
    stride-2 first conv on 3 channels, 3x3 depthwise + 1x1 conv blocks, a
    spatial mean at the end. The odd input size makes every "same" padding
    symmetric (1 on each side), as the rules require; Keras's own MobileNet
    pads asymmetrically and would not qualify."""
    layers = keras.layers
    x = inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(16, 3, strides=2, padding="same", activation="relu6")(x)
    for width, stride in ((32, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1), (512, 1), (512, 1)):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", activation="relu6")(x)
        x = layers.Conv2D(width, 1, activation="relu6")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(10)(x))


def measure_xnnpack(invokes, tmp):
    keras.utils.set_random_seed(0)
    pruned = tfsparse.prune(mobilenet_like(), layers=export.xnnpack_sparse_layer)
    rng = np.random.default_rng(0)
    weights = tfsparse.masked_weights(pruned)
    tfsparse.masking.assign_masks(weights, {w.name: rng.random(w.shape) >= 0.8 for w in weights})
    example = rng.random((97, 97, 3), dtype=np.float32)
    result = {"layers": len(tfsparse.masked_weights(pruned))}
    for label, sparse in (("dense", False), ("sparse", True)):
        path = Path(tmp) / f"mobilenet_{label}.tflite"
        report = export.to_tflite(pruned, path, sparse=sparse)
        result[label] = {"bytes": report.size_bytes, "runtime": report.runtime,
                         "latency_ms": [latency_ms(path, report.interpreter_options, example, invokes)
                                        for _ in range(3)]}
        print(label, result[label], flush=True)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--invokes", type=int, default=500)
    args = parser.parse_args()
    data = datasets.load("fashion_mnist", download=False)
    with tempfile.TemporaryDirectory() as tmp:
        rows = measure_zoo(data, args.epochs, args.invokes, tmp)
        xnnpack = measure_xnnpack(args.invokes, tmp)
    write(args, data.source, rows, xnnpack)


def write(args, source, rows, xnnpack):
    table = [[r["model"], r["variant"], f"{r['bytes']:,}", f"{r['ratio']:.3f}", f"{r['max_abs_error']:.2g}",
              f"{100 * r['top1_agreement']:.2f}", f"{100 * r['accuracy']:.2f}",
              f"{100 * (r['accuracy'] - r['keras_accuracy']):+.2f}", r["runtime"], f"{r['latency_ms']:.3f}"]
             for r in rows]
    dense = statistics.median(xnnpack["dense"]["latency_ms"])
    sparse = statistics.median(xnnpack["sparse"]["latency_ms"])
    text = f"""# TFLite / LiteRT export

Command: `python benchmarks/export.py --epochs {args.epochs} --invokes {args.invokes}`
Machine: {common.machine()}; {common.versions()}, ai-edge-litert {_version("ai-edge-litert")}. Data: {source}.
Models pruned to 0.90 during {args.epochs} epochs of training (MagnitudePruning, every layer at the
target). Fidelity on the whole test set (10,000 images); latency: median of {args.invokes} invokes of
one example on one thread, after 20 warm-up invokes, in the configuration the export report names.

{common.markdown_table(["model", "file", "bytes", "x dense float", "max abs logit error",
                        "top-1 agreement %", "TFLite accuracy %", "vs Keras", "runs with", "latency ms"], table)}

## XNNPACK's sparse path

MobileNet-v1-style net (97x97x3, random weights, `mobilenet_like`), its {xnnpack["layers"]} 1x1 convolutions pruned to 0.8
(`tfsparse.prune(model, layers=tfsparse.export.xnnpack_sparse_layer)`), float32, default LiteRT
configuration (XNNPACK), median of 3 x {args.invokes} invokes:
dense file {xnnpack["dense"]["bytes"]:,} bytes, {dense:.3f} ms; sparse file {xnnpack["sparse"]["bytes"]:,} bytes,
{sparse:.3f} ms; ratio sparse / dense {sparse / dense:.3f}.
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "export.md").write_text(text)
    plot(rows, common.RESULTS / "export.png")
    print(text)


def plot(rows, path):
    from matplotlib.figure import Figure

    models = sorted({r["model"] for r in rows})
    figure = Figure(figsize=(11, 4))
    axes = figure.subplots(1, 2)
    width = 0.8 / len(models)
    labels = [label for label, _ in VARIANTS]
    for i, model in enumerate(models):
        chosen = [next(r for r in rows if r["model"] == model and r["variant"] == label) for label in labels]
        positions = np.arange(len(labels)) + i * width
        axes[0].bar(positions, [r["ratio"] for r in chosen], width, label=model)
        axes[1].bar(positions, [r["latency_ms"] for r in chosen], width, label=model)
    for axis, title in zip(axes, ("file size / dense float32", "latency per example (ms, 1 thread)")):
        axis.set_xticks(np.arange(len(labels)) + width / 2, labels, rotation=30, ha="right")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _version(name):
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    main()
