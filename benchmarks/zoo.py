"""The model zoo: tfsparse on architectures this project did not write.

Every `keras.applications` architecture (enumerated from the module: its
functions whose names start with an uppercase letter, so new ones are picked
up), built with weights=None, classes=10, classifier_activation=None (logits, so
that int8 top-1 agreement is not decided by the ties of a near-uniform softmax
of random weights) at the smallest input it accepts
(32x32x3, or the minimum its error message names: 75x75 for InceptionV3 /
InceptionResNetV2, 71x71 for Xception), plus models written the way users
write them: a keras.io-style transformer block (unregistered custom layers,
no get_config, MultiHeadAttention + a Sequential FFN on an Embedding; once
with **kwargs passed on, once with keras.io's exact __init__ signatures), tiny
KerasHub BertBackbone and GPT2Backbone built from constructor arguments (no
preset), an LSTM, a GRU and a Bidirectional(LSTM) text model, and a
subclassed CNN. For each model:

1. coverage: `tfsparse.prune(model)`, then the fraction of weight-matrix
   parameters masked (`tfsparse.summary(...)["layers"]`, by params) and the
   weight matrices left dense with the reason;
2. strip parity: random 50 % masks, `tfsparse.strip`, max |stripped - pruned|
   over the outputs on a batch of 4 (and no masked layer left in the result);
3. train-step time, pruned / plain: both compiled the same way (SGD 0.01,
   a loss matching the output), `train_on_batch` timed in ONE process in
   alternating pairs (plain-pruned, then pruned-plain, ...) after two warm-up
   steps each; each timing is a fixed number of steps (at least ~1 s);
   ratio per pair, median and range over `--pairs` pairs;
4. TFLite (`tfsparse.export.to_tflite` on the 50 %-masked stripped model),
   float32 and int8: size vs the dense float32 file, max |error| and top-1
   agreement over 32 random inputs (int8 calibrated on them), the LiteRT
   configuration that runs it. Skipped above 30 M parameters (`--tflite-max`);
   int8 is refused for recurrent layers (a documented limitation), which is
   recorded as the result;
5. seconds per model (the worker process, imports included).

Each model runs in its own worker process (`--worker NAME`) with a timeout;
finished rows are cached in results/cache/zoo/, so an interrupted run resumes
and a rerun only computes what is missing (`--rerun` recomputes, `--retry-failed`
recomputes only failed rows).

    python benchmarks/zoo.py                       # everything (about 1.5 h on 2 shared cores)
    python benchmarks/zoo.py --quick               # a few small models
    python benchmarks/zoo.py --models MobileNetV3Small,gpt2

Writes benchmarks/results/zoo.md, zoo.png and zoo.json (raw numbers)
(`--name` other than zoo: <name>.md/.png/.json).
"""

import argparse
import hashlib
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import common  # noqa: E402

L = keras.layers
CUSTOM = ("transformer", "transformer_verbatim", "bert", "gpt2", "lstm", "gru", "bilstm", "subclassed_cnn")
QUICK = ("MobileNetV3Small", "transformer", "gpt2", "lstm", "subclassed_cnn")
#: Layer classes the issue lists: their kernels must all be masked.
PRUNABLE_KINDS = ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose",
                  "Conv3DTranspose", "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
                  "Embedding", "LSTMCell", "GRUCell", "SimpleRNNCell")
IMAGE_SIZES = (32, 75, 96, 128, 224, 331)
VOCABULARY, SEQUENCE = 1000, 32
PARITY_BATCH, TFLITE_SAMPLES = 4, 32


def application_names():
    """The architectures keras.applications offers in this Keras version."""
    return sorted(name for name in dir(keras.applications)
                  if name[:1].isupper() and callable(getattr(keras.applications, name)))


def model_names():
    return [*application_names(), *CUSTOM]


# --- the models -----------------------------------------------------------------------------------------------


class Case:
    """A model with what it takes to run it: a batch maker, a loss, notes."""

    def __init__(self, name, model, make_batch, loss, input_note, notes=(), batch_size=16):
        self.name, self.model, self.make_batch, self.loss = name, model, make_batch, loss
        self.input_note, self.notes, self.batch_size = input_note, list(notes), batch_size

    def batch(self, size, seed=0):
        """(x, y) with `size` examples."""
        return self.make_batch(np.random.default_rng(seed), size)


def image_batch(size_hw, classes=10):
    def make(rng, n):
        x = rng.uniform(0, 255, (n, size_hw, size_hw, 3)).astype("float32")  # raw pixels, as the apps take them
        return x, rng.integers(0, classes, n)
    return make


def build_application(name):
    """keras.applications.<name>(weights=None, classes=10, logits out) at the smallest
    input size it accepts: 32x32x3, or the minimum its error names, or the
    next size in IMAGE_SIZES. Raises with every attempt when none builds."""
    constructor = getattr(keras.applications, name)
    tried, sizes = [], list(IMAGE_SIZES)
    while sizes:
        size = sizes.pop(0)
        try:
            model = constructor(weights=None, classes=10, input_shape=(size, size, 3), classifier_activation=None)
        except Exception as error:  # record it, try a larger input
            message = _first_line(error)
            tried.append(f"{size}x{size}: {type(error).__name__}: {message}")
            minimum = re.search(r"at least (\d+)x(\d+)", message)
            if minimum and int(minimum.group(1)) > size:
                sizes = [int(minimum.group(1))] + [s for s in sizes if s > int(minimum.group(1))]
            continue
        notes = [f"{size}x{size} refused ({t.split(': ', 1)[1]})" for t in tried]
        return Case(name, model, image_batch(size), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                    f"{size}x{size}x3", notes)
    raise RuntimeError("no input size builds: " + " | ".join(tried))


class TokenAndPositionEmbedding(L.Layer):
    """keras.io's "Text classification with Transformer" embedding (no
    get_config; `**kwargs` passed on, which Keras's automatic config needs
    to rebuild the layer: `VerbatimTokenAndPositionEmbedding` is without)."""

    def __init__(self, maxlen, vocab_size, embed_dim, **kwargs):
        super().__init__(**kwargs)
        self.token_emb = L.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = L.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = keras.ops.shape(x)[-1]
        positions = keras.ops.arange(start=0, stop=maxlen, step=1)
        return self.token_emb(x) + self.pos_emb(positions)


class TransformerBlock(L.Layer):
    """keras.io's TransformerBlock: MultiHeadAttention + a Sequential FFN (no
    get_config; `**kwargs` passed on)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.att = L.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential([L.Dense(ff_dim, activation="relu"), L.Dense(embed_dim)])
        self.layernorm1 = L.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = L.LayerNormalization(epsilon=1e-6)
        self.dropout1 = L.Dropout(rate)
        self.dropout2 = L.Dropout(rate)

    def call(self, inputs, training=False):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)


class VerbatimTokenAndPositionEmbedding(TokenAndPositionEmbedding):
    """keras.io's signature exactly: no **kwargs, so Keras's automatic config
    (which adds trainable and dtype) cannot rebuild it as it is
    (keras.models.clone_model and .keras loading fail); tfsparse retries with
    the arguments __init__ takes."""

    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__(maxlen, vocab_size, embed_dim)


class VerbatimTransformerBlock(TransformerBlock):
    """keras.io's signature exactly (no **kwargs)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__(embed_dim, num_heads, ff_dim, rate)


class SubclassedCNN(keras.Model):
    """A keras.Model subclass with Conv2D / Dense sublayers."""

    def __init__(self, classes=10, **kwargs):
        super().__init__(**kwargs)
        self.classes = classes
        self.conv1 = L.Conv2D(16, 3, padding="same", activation="relu")
        self.conv2 = L.Conv2D(32, 3, padding="same", activation="relu")
        self.pool = L.MaxPooling2D()
        self.flatten = L.Flatten()
        self.hidden = L.Dense(64, activation="relu")
        self.logits = L.Dense(classes)

    def call(self, x):
        x = self.pool(self.conv1(x))
        x = self.pool(self.conv2(x))
        return self.logits(self.hidden(self.flatten(x)))

    def get_config(self):
        return {**super().get_config(), "classes": self.classes}


def token_batch(classes=10):
    def make(rng, n):
        return rng.integers(0, VOCABULARY, (n, SEQUENCE)).astype("int32"), rng.integers(0, classes, n)
    return make


def build_custom(name):
    logits = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    text_note = f"{SEQUENCE} token ids < {VOCABULARY}"
    if name in ("transformer", "transformer_verbatim"):
        verbatim = name == "transformer_verbatim"
        inputs = keras.Input((SEQUENCE,), dtype="int32")
        x = (VerbatimTokenAndPositionEmbedding if verbatim else TokenAndPositionEmbedding)(SEQUENCE, VOCABULARY, 32)(inputs)
        x = (VerbatimTransformerBlock if verbatim else TransformerBlock)(32, 2, 32)(x)
        x = L.GlobalAveragePooling1D()(x)
        x = L.Dropout(0.1)(x)
        x = L.Dense(20, activation="relu")(x)
        x = L.Dropout(0.1)(x)
        model = keras.Model(inputs, L.Dense(2)(x), name=name)
        notes = ["keras.io layers verbatim: __init__ without **kwargs"] if verbatim else []
        return Case(name, model, token_batch(2), logits, text_note, notes, batch_size=32)
    if name in ("bert", "gpt2"):
        import keras_hub

        sizes = dict(vocabulary_size=VOCABULARY, num_layers=2, num_heads=2, hidden_dim=64, intermediate_dim=128,
                     max_sequence_length=SEQUENCE)
        backbone = (keras_hub.models.BertBackbone if name == "bert" else keras_hub.models.GPT2Backbone)(**sizes)

        def make(rng, n):
            x = {"token_ids": rng.integers(0, VOCABULARY, (n, SEQUENCE)).astype("int32"),
                 "padding_mask": np.ones((n, SEQUENCE), "int32")}
            if name == "bert":
                x["segment_ids"] = rng.integers(0, 2, (n, SEQUENCE)).astype("int32")
                y = {"sequence_output": rng.normal(size=(n, SEQUENCE, 64)).astype("float32"),
                     "pooled_output": rng.normal(size=(n, 64)).astype("float32")}
            else:
                y = rng.normal(size=(n, SEQUENCE, 64)).astype("float32")
            return x, y

        loss = {"sequence_output": "mse", "pooled_output": "mse"} if name == "bert" else "mse"
        note = f"KerasHub {type(backbone).__name__}, " + ", ".join(f"{k}={v}" for k, v in sizes.items())
        return Case(name, backbone, make, loss, text_note, [note, "trained on MSE to random targets"],
                    batch_size=32)
    if name in ("lstm", "gru", "bilstm"):
        recurrent = {"lstm": lambda: L.LSTM(64), "gru": lambda: L.GRU(64),
                     "bilstm": lambda: L.Bidirectional(L.LSTM(32))}[name]()
        model = keras.Sequential([keras.Input((SEQUENCE,), dtype="int32"), L.Embedding(VOCABULARY, 32),
                                  recurrent, L.Dense(10)], name=name)
        return Case(name, model, token_batch(), logits, text_note, batch_size=32)
    if name == "subclassed_cnn":
        model = SubclassedCNN()
        model(np.zeros((1, 32, 32, 3), "float32"))
        make = image_batch(32)
        return Case(name, model, lambda rng, n: ((lambda x, y: (x / 255, y))(*make(rng, n))), logits,
                    "32x32x3", batch_size=16)
    raise ValueError(f"Unknown model {name!r}. Known: {', '.join(model_names())}")


def build(name, seed=0):
    """The Case for `name` (an application name or one of CUSTOM)."""
    keras.utils.clear_session()
    keras.utils.set_random_seed(seed)
    if name in CUSTOM:
        return build_custom(name)
    if name in application_names():
        return build_application(name)
    raise ValueError(f"Unknown model {name!r}. Known: {', '.join(model_names())}")


# --- the measurements -----------------------------------------------------------------------------------------


def prune(model):
    """tfsparse.prune with its coverage warnings collected (they are reported, not printed)."""
    import tfsparse

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruned = tfsparse.prune(model)
    return pruned, [str(w.message) for w in caught if "left" in str(w.message) and "dense" in str(w.message)]


def coverage(pruned):
    """Fraction of weight-matrix parameters masked and the matrices left dense."""
    import tfsparse

    rows = tfsparse.summary(pruned, print_fn=None)["layers"]
    total = sum(r["params"] for r in rows)
    masked = sum(r["params"] for r in rows if r["masked"])
    dense = [{"name": r["name"], "type": r["type"], "params": r["params"], "reason": r["reason"]}
             for r in rows if not r["masked"]]
    kinds = [r for r in rows if r["type"] in PRUNABLE_KINDS]
    return {
        "weight_matrices": len(rows), "params": total, "masked_params": masked,
        "masked_fraction": masked / total if total else 0.0,
        "masked_fraction_listed_kinds": (sum(r["params"] for r in kinds if r["masked"])
                                          / max(1, sum(r["params"] for r in kinds))),
        "left_dense": dense,
    }


def random_masks(pruned, density=0.5, seed=0):
    import tfsparse

    rng = np.random.default_rng(seed)
    handles = tfsparse.masked_weights(pruned)
    tfsparse.masking.assign_masks(handles, {h.name: rng.random(h.shape) < density for h in handles})
    return len(handles)


def outputs(model, x):
    """The model's outputs on x (inference) as a flat list of numpy arrays."""
    return [keras.ops.convert_to_numpy(v) for v in keras.tree.flatten(model(x, training=False))]


def strip_parity(pruned, x):
    """Strips `pruned` and compares: max |stripped - pruned| over all outputs,
    the largest |output| (for a relative reading) and the masked layers left."""
    import tfsparse
    from tfsparse import layers as masked_layers

    stripped = tfsparse.strip(pruned)
    want, got = outputs(pruned, x), outputs(stripped, x)
    left = [layer.name for layer in stripped._flatten_layers(include_self=False, recursive=True)
            if masked_layers.is_masked(layer)]
    left += [r["name"] for r in tfsparse.summary(stripped, print_fn=None)["layers"] if r["masked"]]
    return stripped, {
        "max_abs_diff": max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                            for a, b in zip(want, got)),
        "output_scale": max(float(np.max(np.abs(a))) for a in want),
        "finite": all(bool(np.all(np.isfinite(a))) for a in want),
        "masked_layers_after_strip": left,
        "stripped_sparsity": tfsparse.sparsity(stripped),
    }


def train_step_ratio(case, pruned, pairs=5, min_seconds=1.0, seed=0):
    """train_on_batch time of `pruned` over `case.model`, both compiled alike,
    measured in alternating pairs in this process."""
    x, y = case.batch(case.batch_size, seed=seed + 1)
    models = {"plain": case.model, "pruned": pruned}
    for model in models.values():
        model.compile(keras.optimizers.SGD(0.01), loss=case.loss)
    warmup = {}
    for label, model in models.items():
        for _ in range(2):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            warmup[label] = time.perf_counter() - start
    steps = max(1, math.ceil(min_seconds / max(min(warmup.values()), 1e-4)))

    def timed(model):
        start = time.perf_counter()
        for _ in range(steps):
            model.train_on_batch(x, y)
        return (time.perf_counter() - start) / steps

    times = {"plain": [], "pruned": []}
    for index in range(pairs):
        order = ("plain", "pruned") if index % 2 == 0 else ("pruned", "plain")
        for label in order:
            times[label].append(timed(models[label]))
    ratios = [p / q for p, q in zip(times["pruned"], times["plain"])]
    return {
        "batch_size": case.batch_size, "steps_per_timing": steps, "pairs": pairs,
        "plain_s": statistics.median(times["plain"]), "pruned_s": statistics.median(times["pruned"]),
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "ratios": ratios, "jit_compile": bool(getattr(case.model, "jit_compile", False)),
    }


def tflite(case, stripped, directory, quantizations=(None, "int8")):
    """to_tflite on the stripped model, one row per quantization (or the error)."""
    from tfsparse import export

    x, _ = case.batch(TFLITE_SAMPLES, seed=2)
    rows = {}
    for quantization in quantizations:
        label = quantization or "float32"
        path = Path(directory) / f"{case.name}_{label}.tflite"
        start = time.perf_counter()
        try:
            report = export.to_tflite(stripped, path, quantization=quantization, representative_data=x,
                                      verification_data=x)
        except Exception as error:  # recorded: e.g. int8 refused for recurrent layers
            rows[label] = {"error": f"{type(error).__name__}: {_first_line(error, 400)}",
                           "seconds": time.perf_counter() - start}
            continue
        rows[label] = {
            "size_bytes": report.size_bytes, "dense_float_size_bytes": report.dense_float_size_bytes,
            "size_ratio": report.size_ratio, "max_abs_error": report.max_abs_error,
            "top1_agreement": report.top1_agreement, "outputs": report.outputs, "runtime": report.runtime,
            "attempts": [{"runtime": n, "error": e} for n, e in report.attempts],
            "sparse_tensors": report.sparse_tensors, "batch_size": report.batch_size,
            "seconds": time.perf_counter() - start,
        }
    return rows


class Stage:
    """Names the step a failure happened in (`error.zoo_stage`)."""

    def __init__(self, name):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, trace):
        if error is not None and not hasattr(error, "zoo_stage"):
            error.zoo_stage = self.name
        return False


def check(name, seed=0):
    """Build, prune, coverage, random 50 % masks, strip, parity: the checks
    without timing or export (what tests/test_zoo.py asserts on). A failing
    build or prune raises (its stage in `error.zoo_stage`); a failing strip
    is recorded in result["strip"]["error"] and `stripped` is None."""
    with Stage("build"):
        case = build(name, seed)
    with Stage("prune"):
        pruned, warned = prune(case.model)
    result = {"name": name, "input": case.input_note, "notes": case.notes, "params": int(case.model.count_params())}
    with Stage("coverage"):
        result["coverage"] = coverage(pruned)
    result["coverage"]["warning"] = warned[0][:300] if warned else None
    result["masks_set"] = random_masks(pruned, 0.5, seed)
    x, _ = case.batch(PARITY_BATCH, seed=seed + 3)
    try:
        stripped, result["strip"] = strip_parity(pruned, x)
    except Exception as error:  # recorded; the timing does not need it
        stripped, result["strip"] = None, {"error": f"{type(error).__name__}: {_first_line(error, 400)}",
                                           "traceback": traceback.format_exc()[-3000:]}
    return case, pruned, stripped, result


def measure(name, pairs=5, tflite_max=30_000_000, timing=True, export=True, seed=0):
    """One row of the zoo table."""
    start = time.perf_counter()
    case, pruned, stripped, result = check(name, seed)
    result["seconds_check"] = time.perf_counter() - start
    if export:
        if stripped is None:
            result["tflite"] = {"skipped": "strip failed (to_tflite strips first)"}
        elif result["params"] > tflite_max:
            result["tflite"] = {"skipped": f"{result['params'] / 1e6:.0f} M parameters > {tflite_max / 1e6:.0f} M "
                                           "(conversion time and memory on 2 cores)"}
        else:
            with Stage("tflite"), tempfile.TemporaryDirectory() as tmp:
                result["tflite"] = tflite(case, stripped, tmp)
    del stripped
    if timing:
        with Stage("train step timing"):
            result["train_step"] = train_step_ratio(case, pruned, pairs=pairs, seed=seed)
    result["seconds_in_worker"] = time.perf_counter() - start
    return result


# --- the runner -----------------------------------------------------------------------------------------------


def parse(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", help="comma-separated names (default: all; see --list)")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    parser.add_argument("--pairs", type=int, default=5, help="timed plain/pruned pairs per model")
    parser.add_argument("--tflite-max", type=float, default=30e6, help="skip TFLite above this many parameters")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model (worker process)")
    parser.add_argument("--name", default="zoo", help="results file stem")
    parser.add_argument("--results-dir", type=Path, default=common.RESULTS)
    parser.add_argument("--rerun", action="store_true", help="ignore cached rows")
    parser.add_argument("--retry-failed", action="store_true", help="recompute cached rows that failed")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.models:
        args.models = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = sorted(set(args.models) - set(model_names()))
        if unknown:
            parser.error(f"unknown models {unknown}; known: {', '.join(model_names())}")
    else:
        args.models = list(QUICK) if args.quick else model_names()
    return args


def command_line(args):
    parts = ["python benchmarks/zoo.py"]
    if args.quick:
        parts.append("--quick")
    elif args.models != model_names():
        parts.append("--models " + ",".join(args.models))
    if args.pairs != 5:
        parts.append(f"--pairs {args.pairs}")
    if args.tflite_max != 30e6:
        parts.append(f"--tflite-max {args.tflite_max:g}")
    if args.name != "zoo":
        parts.append(f"--name {args.name}")
    return " ".join(parts)


def settings(args, name):
    return {"model": name, "pairs": args.pairs, "tflite_max": int(args.tflite_max), "version": 1}


def run_worker(args, name):
    """`measure(name)` in a fresh process: the row, or a row with the error."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(HERE.parent))
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--pairs", str(args.pairs),
               "--tflite-max", str(args.tflite_max)]
    start = time.perf_counter()
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timeout after {args.timeout} s", "seconds": time.perf_counter() - start}
    seconds = time.perf_counter() - start
    lines = [line for line in completed.stdout.splitlines() if line.startswith("{")]
    if completed.returncode != 0 or not lines:
        tail = (completed.stderr or completed.stdout)[-3000:]
        return {"name": name, "error": f"worker exit code {completed.returncode}", "stderr_tail": tail,
                "seconds": seconds}
    return dict(json.loads(lines[-1]), seconds=seconds)


def cached_row(args, name):
    key = hashlib.sha1(json.dumps(settings(args, name), sort_keys=True).encode()).hexdigest()[:12]
    path = args.results_dir / "cache" / "zoo" / f"{name}-{key}.json"
    if path.exists() and not args.rerun:
        row = json.loads(path.read_text())["result"]
        if not (args.retry_failed and "error" in row):
            return row, True
    row = run_worker(args, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"settings": settings(args, name), "result": row}))
    partial.replace(path)
    return row, False


def worker_main(args):
    try:
        row = measure(args.worker, pairs=args.pairs, tflite_max=args.tflite_max)
    except Exception as error:  # reported as the model's row
        stage = getattr(error, "zoo_stage", "measure")
        row = {"name": args.worker, "error": f"{stage}: {type(error).__name__}: {_first_line(error, 500)}",
               "traceback": traceback.format_exc()[-4000:]}
    print(json.dumps(row, default=_json_default), flush=True)


def main(argv=None):
    args = parse(argv)
    if args.list:
        print("\n".join(model_names()))
        return None
    if args.worker:
        return worker_main(args)
    start = time.perf_counter()
    rows = []
    for index, name in enumerate(args.models):
        row, cached = cached_row(args, name)
        rows.append(row)
        print(f"[{index + 1}/{len(args.models)}] {name}: {summary_line(row)}"
              f"{' (cached)' if cached else ''}", flush=True)
    return write(args, rows, time.perf_counter() - start)


# --- the report -----------------------------------------------------------------------------------------------


def summary_line(row):
    if "error" in row:
        return "FAILED " + row["error"][:200]
    train = row.get("train_step", {})
    if "error" in row["strip"]:
        return (f"masked {row['coverage']['masked_fraction']:.4f}, STRIP FAILED {row['strip']['error'][:150]}, "
                f"train ratio {train.get('ratio', float('nan')):.3f}, {row.get('seconds', 0):.0f} s")
    return (f"masked {row['coverage']['masked_fraction']:.4f}, strip diff {row['strip']['max_abs_diff']:.2g}, "
            f"train ratio {train.get('ratio', float('nan')):.3f}, {row.get('seconds', 0):.0f} s")


def left_dense_text(cov):
    if not cov["left_dense"]:
        return "none"
    groups = {}
    for r in cov["left_dense"]:
        groups.setdefault(r["reason"], []).append(r["name"])
    parts = [f"{', '.join(names[:2])}{f' +{len(names) - 2}' if len(names) > 2 else ''} ({reason})"
             for reason, names in groups.items()]
    return "; ".join(parts)


def runtime_text(runtime):
    return {"default (XNNPACK delegate)": "XNNPACK", "builtin kernels, no default delegates": "builtin"}.get(
        runtime, runtime)


def tflite_cells(row):
    export = row.get("tflite")
    if export is None:
        return ["-", "-", "-"]
    if "skipped" in export:
        return ["skipped: " + export["skipped"], "skipped", "-"]
    cells, runtimes = [], []
    for label in ("float32", "int8"):
        r = export.get(label, {})
        if "error" in r:
            refused = "recurrent" in r["error"] and "int8" in r["error"]
            cells.append("refused: int8 on recurrent layers (documented)" if refused else f"failed: {r['error'][:120]}")
            continue
        top1 = "-" if r["top1_agreement"] is None else f"{100 * r['top1_agreement']:.0f} %"
        cells.append(f"{r['size_ratio']:.3f} / {top1} / {r['max_abs_error']:.2g}")
        runtimes.append(f"{label}: {runtime_text(r['runtime'])}")
    return cells + ["; ".join(runtimes) or "-"]


def table_rows(rows):
    out = []
    for row in rows:
        if "error" in row:
            out.append([row["name"], "-", "-", "**failed**: " + row["error"][:200].replace("|", "/"),
                        *["-"] * 7, f"{row.get('seconds', 0):.0f}"])
            continue
        cov, strip, train = row["coverage"], row["strip"], row.get("train_step")
        ratio = (f"**{train['ratio']:.2f}** ({train['ratio_min']:.2f}-{train['ratio_max']:.2f})"
                 if train else "-")
        if "error" in strip:
            parity = "**strip failed**: " + strip["error"][:120].replace("|", "/")
        else:
            parity = f"{strip['max_abs_diff']:.1e}" + ("" if not strip["masked_layers_after_strip"] else " (masked left!)")
        out.append([row["name"], row["input"], f"{row['params'] / 1e6:.2f}",
                    f"{100 * cov['masked_fraction']:.2f}", left_dense_text(cov).replace("|", "/"), parity,
                    f"{train['plain_s'] * 1000:.0f} ms" if train else "-", ratio,
                    *tflite_cells(row), f"{row.get('seconds', 0):.0f}"])
    return out


def write(args, rows, total_seconds):
    results_dir = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if "error" not in r]
    failed = [r for r in rows if "error" in r]
    timed = [r for r in ok if r.get("train_step")]
    met = [r["name"] for r in timed if r["train_step"]["ratio"] <= 1.05]
    missed = [f"{r['name']} {r['train_step']['ratio']:.2f}" for r in timed if r["train_step"]["ratio"] > 1.05]
    full = [r["name"] for r in ok if r["coverage"]["masked_fraction"] == 1.0]
    partial = [f"{r['name']} ({100 * r['coverage']['masked_fraction']:.2f} %)" for r in ok
               if r["coverage"]["masked_fraction"] < 1.0]
    stripped = [r for r in ok if "error" not in r["strip"]]
    strip_failed = [f"{r['name']} ({r['strip']['error'][:160]})" for r in ok if "error" in r["strip"]]
    worst_parity = max(stripped, key=lambda r: r["strip"]["max_abs_diff"]) if stripped else None
    header = ["model", "input", "M params", "masked % (weight-matrix params)", "left dense (reason)",
              "strip max abs diff", "plain step", "train step pruned / plain: median (range)",
              "TFLite float32: size ratio / top-1 / max err", "TFLite int8: size ratio / top-1 / max err",
              "LiteRT runtime", "s"]
    notes = [f"- {r['name']}: {'; '.join(r['notes'])}" for r in ok if r.get("notes")]
    text = f"""# Model zoo: coverage, strip parity, training overhead and TFLite export

Command: `{command_line(args)}`: {len(rows)} models, {sum(r.get('seconds', 0) for r in rows) / 60:.1f} min of
worker time in all (rows cached from an earlier invocation count at their recorded time; this invocation:
{total_seconds / 60:.1f} min).
Machine: {common.machine()} (shared with other jobs while this ran, so timings are noisy); {_versions()}.

Per model, in its own worker process: `tfsparse.prune(model)` with default arguments; **masked %**: masked
weight-matrix parameters / all weight-matrix parameters (`tfsparse.summary(pruned)["layers"]`, every variable of
rank >= 2 but biases); **strip max abs diff**: random 50 % masks, `tfsparse.strip`, max |stripped - pruned| over
all outputs on 4 inputs (the applications output logits: classifier_activation=None); **train step**: SGD 0.01,
`train_on_batch` of a batch of 16 images / 32 sequences, plain and pruned timed alternately in one process
(pairs plain-pruned, pruned-plain, ... after 2 warm-up steps each; {args.pairs} pairs; each timing a fixed number
of steps lasting at least ~1 s), median and range of the per-pair ratios, "plain step" the median plain step;
**TFLite**: `tfsparse.export.to_tflite` on the 50 %-masked stripped model, float32 and int8 (calibrated and verified
on {TFLITE_SAMPLES} random inputs: raw pixels in [0, 255) for the applications, token ids for the text models),
size / the dense float32 file, top-1 agreement and max |TFLite - Keras| (for the KerasHub backbones the "top-1"
is the arg-max over hidden units of the sequence output, not a class); skipped above {args.tflite_max / 1e6:.0f} M
parameters. **s**: worker seconds (imports, build, prune, strip, export, timing). Weights are random
(weights=None): the numbers are about the library, not accuracy.

{common.markdown_table(header, table_rows(rows))}

## Summary

- Models: {len(rows)} ({len(ok)} measured, {len(failed)} failed{': ' + ', '.join(r['name'] + ' (' + r['error'][:150] + ')' for r in failed) if failed else ''}).
- Fully masked (100 % of weight-matrix parameters): {len(full)} of {len(ok)}{'; partly: ' + ', '.join(partial) if partial else ''}.
- Strip parity: largest max |stripped - pruned| {worst_parity['strip']['max_abs_diff']:.2g} ({worst_parity['name']}); no stripped model has a masked layer left: {all(not r['strip']['masked_layers_after_strip'] for r in stripped)}; strip failed: {'; '.join(strip_failed) if strip_failed else 'none'}.
- Train-step ratio goal (issue #19: <= 1.05): met by {len(met)} of {len(timed)}; not met: {', '.join(missed) if missed else 'none'}.

Input sizes and notes:

{chr(10).join(notes) if notes else '(none)'}

![zoo]({args.name}.png)
""" if worst_parity else f"# Model zoo\n\nCommand: `{command_line(args)}`\n\nNo model measured.\n\n" + \
        common.markdown_table(header, table_rows(rows)) + "\n"
    (results_dir / f"{args.name}.md").write_text(text)
    meta = {"command": command_line(args), "machine": common.machine(), "versions": _versions(),
            "total_seconds": total_seconds, "pairs": args.pairs, "tflite_max": args.tflite_max}
    (results_dir / f"{args.name}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1,
                                                              default=_json_default))
    if ok:
        plot(rows, results_dir / f"{args.name}.png")
    print(text)
    return text


def plot(rows, path):
    from matplotlib.figure import Figure

    names = [r["name"] for r in rows]
    positions = np.arange(len(rows))[::-1]
    figure = Figure(figsize=(15, 2 + 0.24 * len(rows)))
    axes = figure.subplots(1, 3, sharey=True)
    ratio = [r.get("train_step", {}).get("ratio", np.nan) if "error" not in r else np.nan for r in rows]
    low = [r.get("train_step", {}).get("ratio_min", np.nan) if "error" not in r else np.nan for r in rows]
    high = [r.get("train_step", {}).get("ratio_max", np.nan) if "error" not in r else np.nan for r in rows]
    error = np.array([np.subtract(ratio, low), np.subtract(high, ratio)])
    colors = ["tab:green" if v <= 1.05 else "tab:red" for v in ratio]
    axes[0].barh(positions, np.nan_to_num(ratio), xerr=np.nan_to_num(error), color=colors, capsize=2)
    axes[0].axvline(1.05, color="black", linestyle="--", linewidth=0.8, label="goal 1.05")
    axes[0].axvline(1.0, color="gray", linewidth=0.6)
    axes[0].set(title="train step pruned / plain (median, range)", xlabel="ratio")
    axes[0].legend(loc="lower right", fontsize="small")
    masked = [100 * r["coverage"]["masked_fraction"] if "error" not in r else np.nan for r in rows]
    axes[1].barh(positions, np.nan_to_num(masked), color="tab:blue")
    axes[1].set(title="weight-matrix params masked by prune (%)", xlim=(min([90, *np.nan_to_num(masked, nan=100)]) - 1, 100.5))
    for label, offset, color in (("float32", -0.2, "tab:orange"), ("int8", 0.2, "tab:purple")):
        values = [((r.get("tflite") or {}).get(label) or {}).get("size_ratio", np.nan) if "error" not in r else np.nan
                  for r in rows]
        axes[2].barh(positions + offset, np.nan_to_num(values), height=0.4, color=color, label=label)
    axes[2].set(title="TFLite size / dense float32 (50 % masks)", xlabel="ratio (0: skipped / refused)")
    axes[2].legend(loc="lower right", fontsize="small")
    axes[0].set_yticks(positions, names, fontsize="small")
    for axis in axes:
        axis.set_ylim(-0.7, len(rows) - 0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)


def _versions():
    import importlib.metadata as md

    found = []
    for name in ("tensorflow", "keras", "keras-hub", "ai-edge-litert"):
        try:
            found.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return ", ".join(found)


def _first_line(error, limit=300):
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:limit]


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (tuple, set)):
        return list(value)
    return str(value)


if __name__ == "__main__":
    main()
