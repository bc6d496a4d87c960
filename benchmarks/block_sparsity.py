"""Block and N:M sparsity (issue 20): accuracy, file size, encoding and LiteRT latency.

1. Block-sparse Dense: LeNet-300-100 on full Fashion-MNIST pruned to 0.9 in
   Keras (4, 1) and (16, 1) blocks (tfsparse `granularity="block4x1"` /
   `"block16x1"`, and tfmot's `block_size=(4, 1)` / `(16, 1)`: tfmot pools
   the kernel as it is, (in, out) for a Dense layer, so its block_size is
   the Keras block shape), vs unstructured 0.9 and dense; the 16x1 and
   unstructured runs once more with the logits layer left dense.
2. N:M: 2:4 vs unstructured 0.5 on LeNet-300-100 and LeNet-5.

Recipe for every run: Adam 1e-3, batch 128, `--epochs`, PolynomialDecay
0 -> target over the first 70 % of the steps, frequency 100, every layer at
the target ("layer" allocation, as tfmot), identical batches and initial
weights per seed (`workers.fit_same_batches`); tfmot runs in its own process
under tf_keras. The seed-0 model of each configuration is exported by
`tfsparse.export.to_tflite` in float32 and int8 (tfmot's weights are loaded
into the same Keras 3 architecture first, so both go through the same
converter); then every file is timed in every LiteRT configuration, side by
side in one run (`tfsparse.latency.compare`).

    python benchmarks/block_sparsity.py [--seeds 3] [--epochs 8] [--rounds 10] [--invokes 500]

About 28 minutes on 2 CPU cores (42 training runs, 14 exports, 2 minutes of latency).

Runs and exports are cached in results/cache/block_sparsity/ (a rerun
resumes); latency is measured afresh on every run unless `--reuse-latency`
(then the tables are rewritten from the last measurement). Writes
benchmarks/results/block_sparsity.md and .png.
"""

import argparse
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple, Optional

import numpy as np

import common

CACHE = common.RESULTS / "cache" / "block_sparsity"
PATHS = ("data", "weights", "files")  # job keys naming files: not part of the cache key
RECIPE = dict(batch_size=128, learning_rate=1e-3, end_fraction=0.7, frequency=100)
TFMOT_BLOCKS = {"block4x1": (4, 1), "block16x1": (16, 1)}


class Config(NamedTuple):
    """One trained configuration. `last_dense`: the logits layer is left
    dense (not pruned), the others pruned to `sparsity`."""

    model: str
    label: str
    library: str  # "dense", "tfsparse" or "tfmot"
    granularity: Optional[str] = None
    sparsity: float = 0.0
    last_dense: bool = False


LENET = "lenet_300_100"
BLOCK = [
    Config(LENET, "dense", "dense"),
    Config(LENET, "unstructured 0.9", "tfsparse", "weight", 0.9),
    Config(LENET, "block 4x1", "tfsparse", "block4x1", 0.9),
    Config(LENET, "block 4x1 (tfmot)", "tfmot", "block4x1", 0.9),
    Config(LENET, "block 16x1", "tfsparse", "block16x1", 0.9),
    Config(LENET, "block 16x1 (tfmot)", "tfmot", "block16x1", 0.9),
    # A 100x10 logits kernel has 7 blocks of 16 per class; at 0.9 only 7 of its 70 blocks stay, so some
    # classes lose every input. The same runs with the logits layer dense:
    Config(LENET, "unstructured 0.9, logits dense", "tfsparse", "weight", 0.9, True),
    Config(LENET, "block 16x1, logits dense", "tfsparse", "block16x1", 0.9, True),
    Config(LENET, "block 16x1 (tfmot), logits dense", "tfmot", "block16x1", 0.9, True),
]
NM = [
    Config(model, *rest)
    for model in (LENET, "lenet5")
    for rest in (("dense", "dense"), ("unstructured 0.5", "tfsparse", "weight", 0.5), ("2:4", "tfsparse", "2:4", 0.5))
]
PRECISIONS = {"float32": dict(quantization=None), "int8": dict(quantization="int8")}


# --- worker side (a fresh process per job) ------------------------------------------------------------------------


def train_job(job):
    """Trains one configuration; writes the stripped model's weights to
    job["weights"] (.npz, Keras weight order) and returns accuracy etc."""
    import workers

    x, y, xt, yt = workers.load(job)
    if job["library"] == "tfmot":
        import tensorflow_model_optimization as tfmot
        import tf_keras as keras
    else:
        import keras

        import tfsparse
    keras.utils.set_random_seed(job["seed"])
    model = workers.build(keras, job["model"], x.shape[1:])
    steps = int(np.ceil(len(x) / job["batch_size"])) * job["epochs"]
    schedule = dict(initial_sparsity=0.0, final_sparsity=job["sparsity"], begin_step=0,
                    end_step=int(job["end_fraction"] * steps), frequency=job["frequency"])
    callbacks, logits = [], model.layers[-1]
    if job["library"] == "tfmot":
        api = tfmot.sparsity.keras
        options = dict(pruning_schedule=api.PolynomialDecay(**schedule),
                       block_size=TFMOT_BLOCKS.get(job["granularity"], (1, 1)))
        if job.get("last_dense"):  # tfmot's way to prune some layers: wrap them in a clone (weights kept)
            model = keras.models.clone_model(model, clone_function=lambda layer: api.prune_low_magnitude(
                layer, **options) if layer.weights and layer is not logits else layer)
        else:
            model = api.prune_low_magnitude(model, **options)
        callbacks = [api.UpdatePruningStep()]
    elif job["library"] == "tfsparse":
        callbacks = [tfsparse.methods.MagnitudePruning(schedule=tfsparse.schedules.PolynomialDecay(**schedule),
                                                       allocation="layer", granularity=job["granularity"])]
        model = tfsparse.prune(model, exclude=[logits.name] if job.get("last_dense") else None)
    model.compile(keras.optimizers.Adam(job["learning_rate"]),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    workers.fit_same_batches(model, x, y, job, callbacks)
    seconds = time.perf_counter() - start
    if job["library"] == "tfmot":
        model = api.strip_pruning(model)
    elif job["library"] == "tfsparse":
        model = tfsparse.strip(model)
    predictions = np.asarray(model.predict(xt, batch_size=1024, verbose=0)).argmax(-1)
    Path(job["weights"]).parent.mkdir(parents=True, exist_ok=True)
    np.savez(job["weights"], *model.get_weights())
    return {"accuracy": float(np.mean(predictions == yt)), "sparsity": workers.kernel_sparsity(model),
            "train_seconds": seconds}


def export_job(job):
    """Loads trained weights into the Keras 3 architecture and exports them
    with `to_tflite` in each precision; TFLite accuracy on the whole test set."""
    import keras

    import workers
    from tfsparse import export, structure, tflite_tensors

    x, _, xt, yt = workers.load(job)
    model = workers.build(keras, job["model"], x.shape[1:])
    with np.load(job["weights"]) as saved:
        model.set_weights([saved[f"arr_{i}"] for i in range(len(saved.files))])
    kernels = [w.numpy() for w in model.weights if len(w.shape) >= 2]
    result = {"structure": [structure.describe(k) for k in kernels], "files": {}}
    keras_logits = keras.ops.convert_to_numpy(model.predict(xt, batch_size=1024, verbose=0))
    result["keras_accuracy"] = float(np.mean(keras_logits.argmax(-1) == yt))
    Path(job["files"]).mkdir(parents=True, exist_ok=True)
    for precision in job["precisions"]:
        path = Path(job["files"]) / f"{Path(job['weights']).stem}_{precision}.tflite"
        try:
            report = export.to_tflite(model, path, sparse=job["sparse"], representative_data=x[:500],
                                      verification_data=xt[:256], **PRECISIONS[precision])
        except (RuntimeError, ValueError) as error:
            result["files"][precision] = {"error": str(error).splitlines()[0]}
            continue
        logits = export.run(export.interpreter(path, report.interpreter_options), xt)
        weights = [row for row in report.tensors if len(row["shape"]) >= 2]
        result["files"][precision] = {
            "path": str(path), "bytes": report.size_bytes, "runtime": report.runtime, "attempts": report.attempts,
            "accuracy": float(np.mean(logits.argmax(-1) == yt)), "max_abs_error": report.max_abs_error,
            "encodings": [tflite_tensors.encoding_label(row) for row in weights],
            "lost": sum(bool(tflite_tensors.lost_positions(row)) for row in weights),
        }
    return result


# --- driver ---------------------------------------------------------------------------------------------------------


def train(config, seed, args, data):
    name = (f"{config.model}_{config.library}_{config.granularity or 'dense'}_{config.sparsity:g}"
            f"{'_logits_dense' if config.last_dense else ''}_e{args.epochs}_s{seed}")
    job = dict(RECIPE, kind="train", data=data, model=config.model, library=config.library,
               granularity=config.granularity, sparsity=config.sparsity, seed=seed, epochs=args.epochs,
               weights=str(CACHE / "weights" / f"{name}.npz"))
    if config.last_dense:  # only when set, so that the other runs keep their cache keys
        job["last_dense"] = True
    result = common.cached_worker(CACHE, job, legacy_keras=config.library == "tfmot", script=__file__, paths=PATHS)
    return job, result


def exported(config, train_job, data):
    settings = {k: v for k, v in train_job.items() if k not in PATHS}
    job = dict(kind="export", data=data, model=config.model, train=settings, weights=train_job["weights"],
               files=str(CACHE / "files"), sparse=config.library != "dense", precisions=list(PRECISIONS))
    return common.cached_worker(CACHE, job, script=__file__, paths=PATHS)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--invokes", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--reuse-latency", action="store_true",
                        help="rewrite the tables with the last latency measurement (cache/block_sparsity/latency.json)")
    args = parser.parse_args()
    configs = list(dict.fromkeys(BLOCK + NM))  # the dense LeNet-300-100 is in both sections: trained once
    runs, exports = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "data.npz")
        source = common.export_data("fashion_mnist", data)
        for seed in range(args.seeds):
            for config in configs:
                job, result = train(config, seed, args, data)
                runs.setdefault(config, []).append(result)
                print(f"seed {seed} {config.model} {config.label:32s} accuracy {result['accuracy']:.4f} "
                      f"sparsity {result['sparsity']:.4f} {result['train_seconds']:.0f}s", flush=True)
                if seed == 0:
                    exports[config] = dict(exported(config, job, data), dead=units_without_input(job["weights"]))
    # The files sit in CACHE/files (the path a cached export recorded may be another checkout's).
    files = {file_name(config, precision): str(CACHE / "files" / Path(info["path"]).name)
             for config, export in exports.items() for precision, info in export["files"].items() if "path" in info}
    if args.reuse_latency:
        latency = json.loads((CACHE / "latency.json").read_text())
    else:
        from tfsparse.latency import compare

        latency = compare(files, rounds=args.rounds, invokes=args.invokes, warmup=args.warmup)
        CACHE.mkdir(parents=True, exist_ok=True)
        (CACHE / "latency.json").write_text(json.dumps(latency, indent=1))
    write(args, source, runs, exports, latency)


def file_name(config, precision):
    return f"{config.model} {config.label} {precision}"


def units_without_input(weights):
    """Per kernel, the output units (last axis) whose incoming weights are all zero."""
    with np.load(weights) as saved:
        kernels = [saved[name] for name in saved.files if saved[name].ndim >= 2]
    return [int(np.sum(~np.any(k.reshape(-1, k.shape[-1]) != 0, axis=0))) for k in kernels]


def write(args, source, runs, exports, latency):
    from tfsparse.latency import CONFIGS

    keys = [f"{runtime}/{threads}" for runtime, threads in CONFIGS]
    text = f"""# Block and N:M sparsity: accuracy, files, LiteRT latency (issue 20)

Command: `python benchmarks/block_sparsity.py --seeds {args.seeds} --epochs {args.epochs} --rounds {args.rounds} --invokes {args.invokes} --warmup {args.warmup}`
Machine: {common.machine()}, no GPU, shared with other jobs while it ran (latency: read the ratios measured
in the same run, not absolute values across runs); {common.versions()}, ai-edge-litert {_version("ai-edge-litert")}.
Data: Fashion-MNIST from {source} (60,000 training, 10,000 test images).

Recipe for every run: Adam 1e-3, batch 128, {args.epochs} epochs, PolynomialDecay 0 -> target over the first
70 % of the steps, frequency 100, every pruned layer at the target (tfmot's per-layer rule; the logits
layer is pruned too unless the row says "logits dense"), the same initial weights and batches per seed for
both libraries; {args.seeds} seeds, test accuracy as median (min-max). Blocks run along the kernel's input
axis: Keras (4, 1) / (16, 1) are LiteRT's 1x4 / 1x16 FULLY_CONNECTED blocks; tfmot gets
`block_size=(4, 1)` / `(16, 1)` (it pools the (in, out) kernel as it is), average pooling in both.

## Findings

{findings(runs, exports, latency)}

## 1. Block-sparse Dense: LeNet-300-100 at 0.9

{accuracy_table(runs, exports, BLOCK)}

Files of the seed-0 models, written by `tfsparse.export.to_tflite` (sparse encoding on for the pruned
models; tfmot's weights are loaded into the Keras 3 model first, so both libraries go through the same
converter). "kernels": the encoding of the three weight matrices (784x300, 300x100, 100x10) as
`tfsparse inspect` reports it; TFLite accuracy: the file's, on the whole test set, in the configuration
`to_tflite` chose:

{files_table(exports, BLOCK)}

LiteRT latency per example (batch 1), median ms (IQR) of {args.rounds} rounds x {args.invokes} invokes after
{args.warmup} warm-up invokes (`tfsparse.latency`), every file and configuration interleaved in
the same run; "x": the ratio to the dense file of the same model and precision in the same configuration;
"fails": the configuration does not run the file (errors below); "(noisy)": IQR above the median, the
machine was busy meanwhile (2-thread runs suffer most). "XNNPACK nodes": delegate nodes in the
xnnpack interpreter's plan; 0 means XNNPACK took no op and the "xnnpack" columns ran LiteRT's builtin kernels.

{latency_table(latency, BLOCK, keys)}

## 2. N:M 2:4 vs unstructured 0.5

LeNet-5's first convolution has one input channel: a group of 4 along it is a partial group of 1, which
2:4 keeps (so 2:4 leaves that kernel dense), and any zero pattern of it counts as whole blocks.

{accuracy_table(runs, exports, NM)}

{files_table(exports, [c for c in NM if c.library != "dense"])}

{latency_table(latency, NM, keys)}

{failures(latency)}

![block and N:M sparsity](block_sparsity.png)
"""
    common.RESULTS.mkdir(exist_ok=True)
    (common.RESULTS / "block_sparsity.md").write_text(text)
    plot(runs, latency, keys, common.RESULTS / "block_sparsity.png")
    print(text)


def _median_accuracy(runs, config):
    return common.median([100 * r["accuracy"] for r in runs[config]])


def _ratios(latency, name, baseline):
    """{configuration: median / baseline's median} where both ran."""
    return {key: result["median_ms"] / latency[baseline][key]["median_ms"] for key, result in latency[name].items()
            if result["ok"] and latency[baseline][key]["ok"]}


def _range(ratios):
    return f"x{min(ratios.values()):.2f}-{max(ratios.values()):.2f}" if ratios else "no configuration ran"


def findings(runs, exports, latency):
    """The measured answers, computed from the tables (so a rerun cannot leave stale prose)."""
    by_label = {config.label: config for config in BLOCK}
    acc = {label: _median_accuracy(runs, config) for label, config in by_label.items()}
    lines = []
    for block, baseline in (("block 4x1", "unstructured 0.9"), ("block 16x1", "unstructured 0.9"),
                            ("block 16x1, logits dense", "unstructured 0.9, logits dense")):
        tfmot = block.replace("x1", "x1 (tfmot)", 1)
        lines.append(f"- Accuracy, {block}: {acc[block]:.2f} %, {acc[block] - acc[baseline]:+.2f} points vs {baseline} "
                     f"({acc[baseline]:.2f}), {acc[block] - acc[tfmot]:+.2f} vs tfmot's ({acc[tfmot]:.2f}); "
                     f"dense {acc['dense']:.2f}.")
    dead = {config.label: exports[config]["dead"] for config in BLOCK if any(exports[config]["dead"])}
    if dead:
        lines.append("- Output units left with no input weight at all (seed 0, per kernel): "
                     + "; ".join(f"{label}: {units}" for label, units in dead.items())
                     + ". At 0.9 per layer, the 100x10 logits kernel keeps 7 of its 70 blocks of 16: classes lose "
                     "every input.")
    dense_float, dense_int8 = (file_name(by_label["dense"], p) for p in PRECISIONS)
    for label, precision, baseline in (("block 4x1", "float32", dense_float), ("block 16x1", "int8", dense_int8),
                                       ("block 16x1", "float32", dense_float)):
        name = file_name(by_label[label], precision)
        ratios = _ratios(latency, name, baseline)
        lines.append(f"- Latency, {label} {precision} vs dense {precision}: {_range(ratios)} over the "
                     f"configurations that run it ({', '.join(f'{k} x{v:.2f}' for k, v in ratios.items())}).")
    pruned = {file_name(c, p) for c in BLOCK if c.library != "dense" for p in PRECISIONS}
    ran = [(result["median_ms"], name, key) for name, by_key in latency.items() if name.startswith(LENET)
           for key, result in by_key.items() if result["ok"]]
    fastest, fastest_sparse = min(ran), min(r for r in ran if r[1] in pruned)
    lines.append(f"- Fastest LeNet-300-100 file: {fastest[1]} under {fastest[2]} ({fastest[0]:.4f} ms); fastest "
                 f"pruned one: {fastest_sparse[1]} under {fastest_sparse[2]} ({fastest_sparse[0]:.4f} ms, "
                 f"x{fastest_sparse[0] / fastest[0]:.2f}).")
    for config, export in exports.items():
        for precision, info in export["files"].items():
            if info.get("lost"):
                lines.append(
                    f"- {config.label}, {precision}: the converter dropped the partial last block of {info['lost']} "
                    f"kernel(s) (300 and 100 inputs are not multiples of 16); the file's accuracy is "
                    f"{100 * info['accuracy']:.2f} % vs {100 * export['keras_accuracy']:.2f} % in Keras. `to_tflite` "
                    "wrote it when this was measured (only float32 files were checked); it now refuses it.")
    for model in (LENET, "lenet5"):
        nm = {c.label: c for c in NM if c.model == model}
        difference = _median_accuracy(runs, nm["2:4"]) - _median_accuracy(runs, nm["unstructured 0.5"])
        size = exports[nm["2:4"]]["files"]["float32"]["bytes"] / exports[nm["dense"]]["files"]["float32"]["bytes"]
        ratios = _ratios(latency, file_name(nm["2:4"], "float32"), file_name(nm["dense"], "float32"))
        lines.append(f"- 2:4 on {model}: {difference:+.2f} points vs unstructured 0.5; float32 file x{size:.3f} "
                     f"of dense; latency vs dense float32 {_range(ratios)}.")
    return "\n".join(lines)


def _accuracies(results):
    values = [100 * r["accuracy"] for r in results]
    return f"{common.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def accuracy_table(runs, exports, configs):
    rows = []
    for config in configs:
        results = runs[config]
        rows.append([config.model, config.label, _accuracies(results),
                     f"{common.median([r['sparsity'] for r in results]):.3f}",
                     ", ".join(exports[config]["structure"]), ", ".join(map(str, exports[config]["dead"])),
                     f"{common.median([r['train_seconds'] for r in results]):.0f}"])
    return common.markdown_table(["model", "configuration", "test accuracy %", "kernel sparsity",
                                  "kernel structure (seed 0)", "units without input (seed 0)", "train s"], rows)


def files_table(exports, configs):
    dense_float = {c.model: exports[c]["files"]["float32"]["bytes"] for c in exports if c.library == "dense"}
    rows = []
    for config in configs:
        export = exports[config]
        for precision, info in export["files"].items():
            if "error" in info:
                rows.append([config.model, config.label, precision, "export refused: " + info["error"], "", "", "", ""])
                continue
            rows.append([config.model, config.label, precision, f"{info['bytes']:,}",
                         f"{info['bytes'] / dense_float[config.model]:.3f}", _kernels(info["encodings"]),
                         f"{100 * info['accuracy']:.2f} ({100 * (info['accuracy'] - export['keras_accuracy']):+.2f})",
                         info["runtime"]])
    return common.markdown_table(["model", "configuration", "precision", "bytes", "x dense float32", "kernels",
                                  "TFLite accuracy % (vs Keras)", "to_tflite chose"], rows)


def _kernels(encodings):
    """"3x block 1x4 -> FULLY_CONNECTED"-style summary of the kernel encodings, in order."""
    groups = []
    for label in encodings:
        if groups and groups[-1][1] == label:
            groups[-1][0] += 1
        else:
            groups.append([1, label])
    return "; ".join(f"{count}x {label}" if count > 1 else label for count, label in groups)


def latency_table(latency, configs, keys):
    rows = []
    for config in configs:
        for precision in PRECISIONS:
            name = file_name(config, precision)
            if name not in latency:
                continue
            base = latency.get(f"{config.model} dense {precision}")
            cells = []
            for key in keys:
                result = latency[name][key]
                if not result["ok"]:
                    cells.append("fails")
                    continue
                cell = f"{result['median_ms']:.4f} ({result['iqr_ms']:.4f})"
                if base and base[key]["ok"] and config.library != "dense":
                    cell += f" x{result['median_ms'] / base[key]['median_ms']:.2f}"
                if result["iqr_ms"] > result["median_ms"]:  # the machine was busy during this measurement
                    cell += " (noisy)"
                cells.append(cell + (" **wrong outputs**" if result.get("agrees") is False else ""))
            xnnpack = latency[name].get("xnnpack/1", {})
            rows.append([config.model, config.label, precision, *cells, xnnpack.get("delegate_nodes", "-")])
    return common.markdown_table(["model", "configuration", "precision", *[f"{k} thr." for k in keys],
                                  "XNNPACK nodes"], rows)


def failures(latency):
    failed = {name: [key for key, result in by_key.items() if not result["ok"]] for name, by_key in latency.items()}
    lines = [f"- {name}: {', '.join(keys)}" for name, keys in failed.items() if keys]
    if not lines:
        return "Every file ran in every configuration."
    errors = {re.sub(r"\d+", "N", result["error"])  # node numbers differ between files
              for by_key in latency.values() for result in by_key.values() if not result["ok"]}
    return "Configurations that do not run:\n\n" + "\n".join(lines) + "\n\nErrors: " + "; ".join(sorted(errors))


def plot(runs, latency, keys, path):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(18, 5.5))
    axes = figure.subplots(1, 3, gridspec_kw={"width_ratios": [1.2, 0.8, 1.6]})
    for axis, configs, title in ((axes[0], BLOCK, "LeNet-300-100 at 0.9"), (axes[1], NM, "2:4 vs unstructured 0.5")):
        labels = [c.label if c.model == LENET else f"{c.label} (LeNet-5)" for c in configs]
        for index, config in enumerate(configs):
            values = [100 * r["accuracy"] for r in runs[config]]
            axis.scatter([index] * len(values), values, color="C0", s=15)
            axis.plot([index - 0.3, index + 0.3], [common.median(values)] * 2, color="C1")
        axis.set_xticks(range(len(configs)), labels, rotation=40, ha="right", fontsize="small")
        axis.set(ylabel="test accuracy % (dots: seeds, bar: median)", title=title)
    names = [n for n in (file_name(c, p) for c in BLOCK for p in PRECISIONS) if n in latency]
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        positions = np.arange(len(names)) + offset * width
        results = [latency[name][key] for name in names]
        axes[2].bar(positions, [r["median_ms"] if r["ok"] else np.nan for r in results], width,
                    label=f"{key} threads", color=f"C{offset}")
        failed = [p for p, r in zip(positions, results) if not r["ok"]]
        axes[2].scatter(failed, [0] * len(failed), marker="x", color=f"C{offset}", zorder=3)
    axes[2].set_xticks(np.arange(len(names)) + 0.4 - width / 2, [n.removeprefix(f"{LENET} ") for n in names],
                       rotation=40, ha="right", fontsize="small")
    axes[2].set(ylabel="median ms per invoke (same run)", title="LeNet-300-100, LiteRT batch 1 (x: fails)")
    axes[2].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def _version(name):
    import importlib.metadata

    return importlib.metadata.version(name)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1].startswith("{"):  # a worker process (common.run_worker)
        job = json.loads(sys.argv[1])
        print(json.dumps({"train": train_job, "export": export_job}[job["kind"]](job)))
    else:
        main()
