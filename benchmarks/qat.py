"""Quantization-aware training vs post-training int8 on pruned LeNets, and the export policy.

For each model (LeNet-300-100, LeNet-5), sparsity and seed, on full
Fashion-MNIST: the model is pruned to the sparsity (MagnitudePruning, every
layer at the target, Adam 1e-3, batch 128, `--epochs` epochs). Then two arms
train `--extra-epochs` more epochs from that model with the masks fixed
(Adam `--extra-lr`, batch 128), so that they have the same budget:

- float control: the masked model itself, exported by post-training int8
  quantization (`to_tflite(..., quantization="int8", representative_data=
  500 training images, policy="smallest")`: the sparse file, or the dense
  one where the converter cannot store the sparse one correctly);
- QAT: `tfsparse.quantize_aware(pruned)`, exported to int8 from its learned
  ranges (no representative data), with `policy="both"`: the smallest file
  and the fastest one on this machine, both measured;
- QAT per tensor: `tfsparse.quantize_aware(pruned, per_channel=False)` (one
  int8 scale per Dense kernel; conv kernels stay per channel), exported
  with `policy="smallest"`.

For each: accuracy of the float (Keras) model and of the int8 file on the
whole test set (run in LiteRT), top-1 agreement of the file with its Keras
model, file size, the zero fraction of the int8 kernels in the file, and the
policy's measurements (batch-1 median latency of the sparse and the dense
int8 file in each LiteRT configuration).

    python benchmarks/qat.py [--models lenet_300_100 lenet5] [--sparsities 0.9 0.95 0.98] [--seeds 0 1 2]

Finished cells are cached in benchmarks/results/cache/qat/ (a rerun resumes).
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

import common  # noqa: E402
import tfsparse  # noqa: E402
from tfsparse import export  # noqa: E402
from tfsparse_app import datasets, zoo  # noqa: E402

RESULTS = common.RESULTS
CACHE = RESULTS / "cache" / "qat"
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def accuracy(logits, labels):
    return float(np.mean(np.asarray(logits).argmax(-1) == labels))


def int8_file(model, path, data, **options):
    report = export.to_tflite(model, path, quantization="int8", verification_data=data.x_test, **options)
    logits = export.run(export.interpreter(path, report.interpreter_options), data.x_test)
    kernels = [row for row in report.tensors if row["dtype"] == "int8" and len(row["shape"]) >= 2]
    elements = [int(np.prod(row["shape"])) for row in kernels]
    zeros = sum(row["zero_fraction"] * n for row, n in zip(kernels, elements)) / sum(elements)
    return {"accuracy": accuracy(logits, data.y_test), "top1_agreement": report.top1_agreement,
            "bytes": report.size_bytes, "ratio": report.size_ratio, "kernel_zeros": zeros,
            "runtime": report.runtime, "sparse_encoding": report.sparse,
            "dense_float_bytes": report.dense_float_size_bytes,
            "candidates": report.candidates}


def run_cell(model_name, sparsity, seed, data, args, tmp):
    cache = CACHE / f"{model_name}-{sparsity}-{seed}-{args.epochs}-{args.extra_epochs}-{args.extra_lr}-pt.json"
    if cache.exists():
        return json.loads(cache.read_text())
    keras.utils.set_random_seed(seed)
    x, y = data.x_train, data.y_train
    pruned = tfsparse.prune(zoo.get(model_name, data.input_shape, data.num_classes))
    pruned.compile(keras.optimizers.Adam(1e-3), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=128, epochs=args.epochs, verbose=0,
               callbacks=[tfsparse.methods.MagnitudePruning(sparsity)])
    result = {"model": model_name, "sparsity": sparsity, "seed": seed,
              "pruned_accuracy": accuracy(pruned.predict(data.x_test, verbose=0), data.y_test),
              "mask_sparsity": tfsparse.sparsity(pruned)}

    qat = tfsparse.quantize_aware(pruned)  # copies: made before the control trains on
    qat_per_tensor = tfsparse.quantize_aware(pruned, per_channel=False)
    start = time.perf_counter()
    pruned.compile(keras.optimizers.Adam(args.extra_lr), LOSS, metrics=["accuracy"])
    pruned.fit(x, y, batch_size=128, epochs=args.extra_epochs, verbose=0)
    result["float_seconds"] = time.perf_counter() - start
    result["float_accuracy"] = accuracy(pruned.predict(data.x_test, verbose=0), data.y_test)
    result["ptq"] = int8_file(pruned, Path(tmp) / "ptq.tflite", data, representative_data=x[:500],
                             policy="smallest")

    start = time.perf_counter()
    qat.compile(keras.optimizers.Adam(args.extra_lr), LOSS, metrics=["accuracy"])
    qat.fit(x, y, batch_size=128, epochs=args.extra_epochs, verbose=0)
    result["qat_seconds"] = time.perf_counter() - start
    result["qat_keras_accuracy"] = accuracy(qat.predict(data.x_test, verbose=0), data.y_test)
    result["qat"] = int8_file(qat, Path(tmp) / "qat.tflite", data, policy="both")
    result["dense_float_bytes"] = result["qat"].pop("dense_float_bytes")

    qat_per_tensor.compile(keras.optimizers.Adam(args.extra_lr), LOSS, metrics=["accuracy"])
    qat_per_tensor.fit(x, y, batch_size=128, epochs=args.extra_epochs, verbose=0)
    result["qat_per_tensor"] = int8_file(qat_per_tensor, Path(tmp) / "qat_per_tensor.tflite", data, policy="smallest")
    print(json.dumps(result), flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(result))
    return result


def cell(values):
    values = [100 * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def encodings(cells, arm):
    """"sparse", or how many of the seeds' files had to be written dense."""
    dense = sum(not r[arm].get("sparse_encoding", True) for r in cells)
    return f"dense in {dense} of {len(cells)}" if dense else "sparse"


def accuracy_table(results):
    header = ("model", "sparsity", "float sparse (Keras)", "post-training int8 (file)", "QAT int8 (file)",
              "QAT - PTQ", "QAT - float", "agreement PTQ / QAT %", "int8 kernel zeros %",
              "encoding written PTQ / QAT", "QAT per-tensor int8 (file)", "per-tensor - float")
    rows = []
    for (model, sparsity), cells in results.items():
        float_, ptq, qat = ([r["float_accuracy"] for r in cells], [r["ptq"]["accuracy"] for r in cells],
                            [r["qat"]["accuracy"] for r in cells])
        rows.append((model, f"{sparsity:.2f}", cell(float_), cell(ptq), cell(qat),
                     f"{100 * (np.median(qat) - np.median(ptq)):+.2f}", f"{100 * (np.median(qat) - np.median(float_)):+.2f}",
                     f"{100 * np.median([r['ptq']['top1_agreement'] for r in cells]):.2f} / "
                     f"{100 * np.median([r['qat']['top1_agreement'] for r in cells]):.2f}",
                     f"{100 * np.median([r['qat']['kernel_zeros'] for r in cells]):.2f}",
                     f"{encodings(cells, 'ptq')} / {encodings(cells, 'qat')}",
                     cell([r["qat_per_tensor"]["accuracy"] for r in cells]),
                     f"{100 * (np.median([r['qat_per_tensor']['accuracy'] for r in cells]) - np.median(float_)):+.2f}"))
    return common.markdown_table(header, rows)


def policy_table(results):
    header = ("model", "sparsity", "dense float32 bytes", "smallest: QAT int8 file bytes (x dense float32; encoding)",
              "dense int8 bytes", "sparse int8 ms (runtime)", "dense int8 ms, XNNPACK", "fastest file",
              "fastest ms / dense int8 XNNPACK", "smallest per-tensor QAT file bytes (x dense float32)")
    rows = []
    for (model, sparsity), cells in results.items():
        def median_of(encoding, runtime):
            values = [row["median_ms"] for r in cells for row in r["qat"]["candidates"]
                      if row["encoding"] == encoding and row["runtime"] == runtime and row["median_ms"] is not None]
            return np.median(values) if values else None

        def best_sparse():
            options = [(median_of("sparse", runtime), runtime) for runtime in ("xnnpack", "builtin")]
            options = [option for option in options if option[0] is not None]
            return min(options) if options else (None, "none runs")

        smallest = np.median([r["qat"]["bytes"] for r in cells])  # what policy "both" wrote at its path
        dense_int8 = np.median([row["size_bytes"] for r in cells for row in r["qat"]["candidates"]
                                if row["encoding"] == "dense" and row["runtime"] == "xnnpack"])
        dense_float = np.median([r["dense_float_bytes"] for r in cells])
        sparse_ms, sparse_runtime = best_sparse()
        dense_xnnpack = median_of("dense", "xnnpack")
        fastest = [min((row for row in r["qat"]["candidates"] if row["median_ms"] is not None),
                       key=lambda row: row["median_ms"]) for r in cells]
        chosen = sorted({f"{row['encoding']} / {row['runtime']}" for row in fastest})
        ratio = np.median([row["median_ms"] for row in fastest]) / dense_xnnpack
        per_tensor = np.median([r["qat_per_tensor"]["bytes"] for r in cells])
        rows.append((model, f"{sparsity:.2f}", f"{dense_float:,.0f}",
                     f"{smallest:,.0f} ({smallest / dense_float:.3f}x; {encodings(cells, 'qat')})", f"{dense_int8:,.0f}",
                     "-" if sparse_ms is None else f"{sparse_ms:.4f} ({sparse_runtime})", f"{dense_xnnpack:.4f}",
                     ", ".join(chosen), f"{ratio:.2f}", f"{per_tensor:,.0f} ({per_tensor / dense_float:.3f}x)"))
    return common.markdown_table(header, rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet_300_100", "lenet5"])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95, 0.98])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--extra-epochs", type=int, default=2)
    parser.add_argument("--extra-lr", type=float, default=1e-4)
    args = parser.parse_args()
    data = datasets.load("fashion_mnist", download=False)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            for sparsity in args.sparsities:
                results[(model, sparsity)] = [run_cell(model, sparsity, seed, data, args, tmp) for seed in args.seeds]
    flat = [r for cells in results.values() for r in cells]
    settings = (f"Fashion-MNIST ({data.source}, {len(data.x_train):,} train / {len(data.x_test):,} test), "
                f"every layer at the sparsity, {args.epochs} epochs of MagnitudePruning (Adam 1e-3, batch 128), "
                f"then {args.extra_epochs} epochs at Adam {args.extra_lr:g} with masks fixed: float (control), "
                f"quantization-aware, or quantization-aware with per-tensor Dense kernels; seeds {args.seeds} (median (min-max) over seeds)")
    command = (f"python benchmarks/qat.py --models {' '.join(args.models)} --sparsities "
               f"{' '.join(map(str, args.sparsities))} --seeds {' '.join(map(str, args.seeds))} --epochs {args.epochs} "
               f"--extra-epochs {args.extra_epochs} --extra-lr {args.extra_lr:g}")
    text = "\n".join([
        "# Quantization-aware training vs post-training int8, and the export policy", "",
        f"Command: `{command}`",
        f"Machine: {common.machine()}, no GPU, shared with other jobs while it ran (latency: ratios measured in "
        f"the same run, interleaved, 3 rounds of 100 batch-1 invokes per configuration); {common.versions()}.", "",
        settings + ".", "",
        "## Test accuracy % (whole test set; int8 files run in LiteRT)", "",
        accuracy_table(results), "",
        "## Export policy (`to_tflite(qat, path, quantization=\"int8\", policy=\"both\")`, medians over seeds)", "",
        "\"smallest\" writes the sparse int8 file; \"fastest\" the file and LiteRT configuration with the lowest "
        "median batch-1 latency among those that compute the model (1 thread).", "",
        policy_table(results), "",
        f"Training time of the extra epochs (median): float {np.median([r['float_seconds'] for r in flat]):.1f} s, "
        f"QAT {np.median([r['qat_seconds'] for r in flat]):.1f} s (both timed while other jobs ran). "
        "Per-cell numbers in qat.json.", "",
    ])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "qat.md").write_text(text)
    (RESULTS / "qat.json").write_text(json.dumps({"settings": settings, "command": command, "results": flat}, indent=1))
    print(text)


if __name__ == "__main__":
    main()
