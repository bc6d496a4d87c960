"""Quantization-aware training vs post-training int8, on a pruned LeNet-300-100.

LeNet-300-100 on full Fashion-MNIST, pruned to `--sparsity` (MagnitudePruning,
every layer at the target, Adam 1e-3, batch 128, `--epochs` epochs). Then two
arms train `--extra-epochs` more epochs from that model with the masks fixed
(Adam `--extra-lr`, batch 128), so that they have the same budget:

- float control: the masked model itself, exported by post-training int8
  quantization (`to_tflite(..., quantization="int8", representative_data=
  500 training images)`);
- QAT: `tfsparse.quantize_aware(pruned)`, exported to int8 from its learned
  ranges (no representative data).

For each: accuracy of the float (Keras) model and of the int8 file on the
whole test set (run in LiteRT), top-1 agreement of the file with its Keras
model, file size, and the zero fraction of the int8 kernels in the file.

    python benchmarks/qat.py [--seeds 0 1] [--epochs 8] [--extra-epochs 2]

Writes benchmarks/results/qat.md and qat.json.
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import tfsparse  # noqa: E402
from tfsparse import export  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(logits, labels):
    return float(np.mean(np.asarray(logits).argmax(-1) == labels))


def int8_file(model, path, data, **options):
    report = export.to_tflite(model, path, quantization="int8", verification_data=data.x_test, **options)
    logits = export.run(export.interpreter(path, report.interpreter_options), data.x_test)
    kernels = [row for row in report.tensors if row["dtype"] == "int8" and len(row["shape"]) == 2]
    elements = [int(np.prod(row["shape"])) for row in kernels]
    zeros = sum(row["zero_fraction"] * n for row, n in zip(kernels, elements)) / sum(elements)
    return {"accuracy": accuracy(logits, data.y_test), "top1_agreement": report.top1_agreement,
            "bytes": report.size_bytes, "ratio": report.size_ratio, "kernel_zeros": zeros,
            "runtime": report.runtime}


def run_seed(seed, data, args, tmp):
    keras.utils.set_random_seed(seed)
    x, y = data.x_train, data.y_train
    pruned = tfsparse.prune(tfsparse.models.lenet_300_100(data.input_shape, data.num_classes))
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0,
               callbacks=[tfsparse.methods.MagnitudePruning(args.sparsity)])
    result = {"seed": seed, "pruned_accuracy": accuracy(pruned.predict(data.x_test, verbose=0), data.y_test),
              "mask_sparsity": tfsparse.sparsity(pruned)}

    qat = tfsparse.quantize_aware(pruned)  # a copy: made before the control trains on
    start = time.perf_counter()
    pruned.compile(keras.optimizers.Adam(args.extra_lr), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=128, epochs=args.extra_epochs, verbose=0)
    result["float_seconds"] = time.perf_counter() - start
    result["float_accuracy"] = accuracy(pruned.predict(data.x_test, verbose=0), data.y_test)
    result["ptq"] = int8_file(pruned, Path(tmp) / f"ptq{seed}.tflite", data, representative_data=x[:500])

    start = time.perf_counter()
    qat.compile(keras.optimizers.Adam(args.extra_lr), LOSS, metrics=["accuracy"])
    qat.fit(x, y, batch_size=128, epochs=args.extra_epochs, verbose=0)
    result["qat_seconds"] = time.perf_counter() - start
    result["qat_keras_accuracy"] = accuracy(qat.predict(data.x_test, verbose=0), data.y_test)
    result["qat"] = int8_file(qat, Path(tmp) / f"qat{seed}.tflite", data)
    print(json.dumps(result), flush=True)
    return result


def table(results):
    def cell(values):
        values = [100 * v for v in values]
        if len(values) == 1:
            return f"{values[0]:.2f}"
        return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    def file_row(label, key):
        files = [r[key] for r in results]
        size = f"{np.median([f['bytes'] for f in files]):,.0f} ({np.median([f['ratio'] for f in files]):.3f}x)"
        return (label, cell([f["accuracy"] for f in files]), cell([f["top1_agreement"] for f in files]),
                cell([f["kernel_zeros"] for f in files]), size)

    rows = [
        ("float sparse (Keras)", cell([r["float_accuracy"] for r in results]), "", "", ""),
        file_row("post-training int8 (file)", "ptq"),
        ("QAT (Keras, fake-quantized)", cell([r["qat_keras_accuracy"] for r in results]), "", "", ""),
        file_row("QAT int8 (file)", "qat"),
    ]
    header = ("model", "test accuracy %", "top-1 agreement with its Keras model %", "int8 kernel zeros %",
              "file bytes (x dense float32)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--extra-epochs", type=int, default=2)
    parser.add_argument("--extra-lr", type=float, default=1e-4)
    args = parser.parse_args()
    data = tfsparse.datasets.load("fashion_mnist", download=False)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run_seed(seed, data, args, tmp) for seed in args.seeds]
    settings = (f"LeNet-300-100, Fashion-MNIST ({data.source}, {len(data.x_train):,} train / "
                f"{len(data.x_test):,} test), sparsity {args.sparsity} (every layer), {args.epochs} epochs "
                f"of MagnitudePruning (Adam 1e-3, batch 128), then {args.extra_epochs} epochs at Adam "
                f"{args.extra_lr:g} with masks fixed: float (control) or quantization-aware; seeds "
                f"{args.seeds} (median (min-max) over seeds)")
    text = "\n".join([
        "# Quantization-aware training vs post-training int8 (pruned LeNet-300-100)", "",
        settings + ".", "", table(results), "",
        f"Mask sparsity: {np.median([r['mask_sparsity'] for r in results]):.4f}. Training time of the extra "
        f"epochs: float {np.median([r['float_seconds'] for r in results]):.1f} s, QAT "
        f"{np.median([r['qat_seconds'] for r in results]):.1f} s. Accuracy of the pruned model before the "
        f"extra epochs: {100 * np.median([r['pruned_accuracy'] for r in results]):.2f} %.",
        "", "Written by `python benchmarks/qat.py`; per-seed numbers in qat.json.", "",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qat.md").write_text(text)
    (RESULTS / "qat.json").write_text(json.dumps({"settings": settings, "results": results}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
