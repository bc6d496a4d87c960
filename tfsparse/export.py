"""Export to TFLite / LiteRT with sparse weights and quantization, verified.

`to_tflite` strips a masked model, converts it (TFLite builtin ops only,
unless told otherwise) with TFLite's sparse weight encoding and the requested
quantization, then LOADS what it produced in the LiteRT interpreter, runs
sample inputs and compares with Keras before the file appears at `path`.

Inputs and outputs are matched by name, never by tensor position: the file's
signature takes the model's inputs under their Keras names (the `keras.Input`
names of a functional model, the keys of a dict input) and returns its
outputs under theirs (the output layer names, or the keys of a dict output).
The tensor order LiteRT reports is not the model's order, so `run` and apps
should go through the signature (`interp.get_signature_runner()`).

Recurrent layers (LSTM, GRU, ... unless built with `unroll=True`) become a
TFLite WHILE loop of builtin ops. Its loop state (a TensorList) needs a
static batch size, so such models are exported with batch 1 by default
(`batch_size`); `run` feeds them one example per invoke. TF 2.21's int8
calibrator crashes the process on these loops, so `quantization="int8"` is
refused for them before converting ("dynamic" and "float16" work).

Interpreter configurations are tried in order: the default (LiteRT applies
its XNNPACK delegate), then the builtin kernels without default delegates.
On this project's reference machine (TF 2.21, ai-edge-litert 2.x) sparse +
int8 files fail under XNNPACK ("failed to delegate FULLY_CONNECTED") and run
with the builtin kernels; the report says which configuration ran and why
the others did not, so the app can create its interpreter the same way.

Quantization-aware models (`tfsparse.quantize_aware`) export to int8 from
the ranges they learned: `quantization="int8"` converts the QAT model itself
(not stripped: its FakeQuant ops carry the activation ranges, and its
kernels already lie on the int8 grid the converter reproduces), needs no
`representative_data` (when given, it only serves as verification inputs),
and refuses a model whose ranges never saw a training batch, or a file that
is not full-integer. Other quantizations export the stripped float model.
"""

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tfsparse import export_policy, latency
from tfsparse import quantization as qat
from tfsparse import tflite_tensors
from tfsparse._utils import write_atomically
from tfsparse.surgery import is_pruned, strip

QUANTIZATIONS = (None, "dynamic", "float16", "int8")
#: The quantizations whose int8 kernels have per-channel or per-tensor scales.
PER_CHANNEL_CHOICE = ("dynamic", "int8")
VERIFY_SAMPLES = 256
CALIBRATION_SAMPLES = 500
#: Random verification ids for an integer input no Embedding reads are drawn in [0, SMALL_IDS).
SMALL_IDS = 8

#: (name, keyword arguments of ai_edge_litert.interpreter.Interpreter), in the order tried.
RUNTIMES = tuple((latency.RUNTIME_NAMES[key], options) for key, options in latency.RUNTIMES.items())
#: A LiteRT interpreter of a file, with the `interpreter_options` of its `ExportReport`.
interpreter = latency.interpreter


@dataclass
class ExportReport:
    """What `to_tflite` wrote and what the verification found.

    Attributes:
        path: the written file.
        size_bytes / dense_float_size_bytes: this file and the same model
            converted dense in float32, for comparison.
        quantization, sparse: the conversion settings.
        runtime: the interpreter configuration that ran the file (see
            `RUNTIMES`); `interpreter_options` are its keyword arguments.
        attempts: (configuration, error or None) for each one tried.
        max_abs_error: largest |TFLite output - Keras output| over all
            outputs and verification inputs (dequantized for int8 outputs).
        top1_agreement: fraction of verification inputs whose arg-max over
            the last axis agrees; with several such outputs the lowest of
            them. None when no output has a class axis.
        samples: number of verification inputs.
        inputs: the file's signature inputs, in the model's order: dicts
            with name, shape (None for the free batch axis and unknown
            sizes), dtype and quantization (scale, zero point).
        outputs: per output name: max_abs_error and top1_agreement.
        batch_size: the batch size fixed in the file (`run` feeds it in
            chunks of that size), or None for any batch.
        verification_inputs: where the verification inputs came from.
        tensors: per-constant-tensor rows from the flatbuffer
            (`tfsparse.tflite_tensors.tensor_rows`).
        policy: the `policy` given to `to_tflite`, or None.
        candidates: with a policy, one row per (encoding, runtime) it
            compared: size_bytes, median_ms (batch 1), or why_not.
        choice: with a policy, which file was written and why.
        also_wrote: with `policy="both"`, the fastest file when it is not
            the one at `path`.
    """

    path: Path
    size_bytes: int
    dense_float_size_bytes: int
    quantization: str
    sparse: bool
    runtime: str
    interpreter_options: dict
    attempts: list
    max_abs_error: float
    top1_agreement: float
    samples: int
    inputs: list
    outputs: dict
    batch_size: int
    verification_inputs: str
    tensors: list = field(repr=False)
    policy: str = None
    candidates: list = field(default_factory=list, repr=False)
    choice: str = None
    also_wrote: Path = None

    @property
    def size_ratio(self):
        return self.size_bytes / self.dense_float_size_bytes

    @property
    def sparse_tensors(self):
        return sum(row["sparse"] for row in self.tensors)

    def to_dict(self):
        return {
            "path": str(self.path), "size_bytes": self.size_bytes,
            "dense_float_size_bytes": self.dense_float_size_bytes, "size_ratio": self.size_ratio,
            "quantization": self.quantization, "sparse": self.sparse, "runtime": self.runtime,
            "attempts": [{"runtime": name, "error": error} for name, error in self.attempts],
            "max_abs_error": self.max_abs_error, "top1_agreement": self.top1_agreement,
            "samples": self.samples, "sparse_tensors": self.sparse_tensors,
            "inputs": self.inputs, "outputs": self.outputs, "batch_size": self.batch_size,
            "verification_inputs": self.verification_inputs,
            "policy": self.policy, "candidates": self.candidates, "choice": self.choice,
            "also_wrote": None if self.also_wrote is None else str(self.also_wrote),
        }

    def __str__(self):
        lines = [
            f"wrote {self.path}: {self.size_bytes:,} bytes = {self.size_ratio:.3f} x the dense float32 file "
            f"({self.dense_float_size_bytes:,} bytes); quantization {self.quantization}, "
            f"{self.sparse_tensors} sparse-encoded tensors",
            f"verified in LiteRT on {self.samples} inputs ({self.verification_inputs}): "
            + _agreement(self.max_abs_error, self.top1_agreement),
        ]
        if len(self.outputs) > 1:
            lines += [f"  output '{name}': {_agreement(**row)}" for name, row in self.outputs.items()]
        lines.append("inputs: " + ", ".join(
            f"{row['name']} {row['dtype']} ({', '.join('N' if d is None else str(d) for d in row['shape'])})"
            for row in self.inputs))
        if self.batch_size is not None:
            lines.append(f"batch size fixed to {self.batch_size} in the file: "
                         f"feed {self.batch_size} example(s) per invoke")
        lines.append(f"runs with: {self.runtime}")
        for name, error in self.attempts:
            if error is not None:
                lines.append(f"does not run with: {name} ({error})")
        if self.policy is not None:
            lines += [f"policy '{self.policy}': wrote the {self.choice}",
                      export_policy.candidates_table(self.candidates)]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Input:
    """One model input: its signature name, shape after the batch axis, dtype.

    `tensor` is the functional model's `keras.Input` tensor (None for other
    models); it tells which layers read the input.
    """

    name: str
    shape: tuple
    dtype: str
    tensor: object = field(default=None, compare=False, repr=False)

    @property
    def is_integer(self):
        return self.dtype.startswith(("int", "uint"))


def to_tflite(
    model,
    path,
    quantization=None,
    representative_data=None,
    sparse=True,
    int8_io=False,
    allow_flex_ops=False,
    verification_data=None,
    input_signature=None,
    batch_size=None,
    policy=None,
    threads=1,
    per_channel=None,
):
    """Converts `model` to a verified .tflite file at `path`.

    Args:
        model: a Keras model, masked (it is stripped first) or plain:
            functional (any number of inputs and outputs, list or dict
            inputs), Sequential, or subclassed (called at least once, or
            described by `input_signature`).
        path: the file to write. Its directory must exist. The file is
            written only after the verification passed.
        quantization: `None` (float32), `"dynamic"` (int8 weights, float
            activations), `"float16"` (float16 weights) or `"int8"` (full
            integer; needs `representative_data`, except for a
            quantization-aware model, whose trained ranges it uses).
        representative_data: input examples for int8 calibration (not used
            to calibrate a quantization-aware model); also the default
            verification inputs. For one input an array (N, *input
            shape); for several a list or tuple of arrays in `model.inputs`
            order, or a dict keyed by input name (as `ExportReport.inputs`
            lists them). Integer inputs (token ids) keep their dtype.
        sparse: store kernels with TFLite's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`; applies to tensors
            with at least about 30 % zeros).
        int8_io: with `"int8"`: int8 float-valued inputs and outputs instead
            of float (integer inputs such as token ids stay as they are).
        allow_flex_ops: allow TensorFlow (Flex) ops; the app then needs the
            Flex delegate. Off by default: builtin ops only.
        verification_data: inputs to compare TFLite with Keras on, in the
            forms `representative_data` takes; default: up to 256 of
            `representative_data`, else random inputs: floats in [0, 1),
            integer inputs ids in [0, input_dim) of the Embedding that reads
            them (else in [0, SMALL_IDS)); the report says which.
        input_signature: the model's input (a `keras.InputSpec`,
            `tf.TensorSpec` or `keras.Input` with the batch axis first), or
            a list or dict of them as the model's `call` takes them. Needed
            for a subclassed model never called; for a called one Keras
            records the shapes but not the dtypes, so its inputs are floats
            unless this says otherwise. Names: the dict keys, else the specs'
            names, else input_0, input_1, ...
        batch_size: the batch size fixed in the file; None: any batch, or 1
            for models with recurrent layers that are not unrolled (their
            TFLite loop needs a static batch).
        policy: None (write the encoding `sparse` says), or which file to
            write, measured rather than assumed: `"smallest"`, `"fastest"`
            (median batch-1 latency on this machine, `threads` threads,
            over every LiteRT configuration that computes the model) or
            `"both"` (the smallest at `path`, the fastest beside it as
            `<name>.fastest.tflite` when it differs). The model is converted
            sparse and dense with the same quantization, both verified; the
            report lists the comparison (`candidates`) and the `choice`.
            Sparse int8 files, for one, are the smallest but do not run
            under XNNPACK, where dense int8 is fastest.
        threads: interpreter threads for the `policy` timings.
        per_channel: with `"int8"` or `"dynamic"`: one int8 scale per
            output channel of each kernel (True, the converter's default)
            or one per kernel (False: a smaller file, as TFLite stores a
            scale and a zero point per channel, twice for a sparse kernel;
            post-training, the coarser grid can cost accuracy). None: True,
            or for a quantization-aware model its own choice
            (`quantize_aware(..., per_channel=...)`), which an explicit value
            must match.

    Returns:
        An `ExportReport` (`print` it for a summary).

    Example:

    ```python
    report = tfsparse.export.to_tflite(pruned, "model.tflite", quantization="int8",
                                       representative_data=x_train[:500])
    print(report)
    ```
    """
    import tensorflow as tf

    path = Path(path)
    if policy is not None:
        export_policy.check_policy(policy, sparse)
        _check_arguments(model, path, quantization, representative_data, int8_io, batch_size, per_channel)
        return export_policy.write_by_policy(
            to_tflite, model, path, policy, threads=threads, quantization=quantization,
            representative_data=representative_data, int8_io=int8_io, allow_flex_ops=allow_flex_ops,
            verification_data=verification_data, input_signature=input_signature, batch_size=batch_size,
            per_channel=per_channel,
        )
    _check_arguments(model, path, quantization, representative_data, int8_io, batch_size, per_channel)
    loops = _recurrent_loops(model)
    from_qat = quantization == "int8" and qat.is_quantize_aware(model)
    if per_channel is None:
        per_channel = qat.per_channel_scales(model) if from_qat else True
    plain = model if from_qat else strip(model) if is_pruned(model) else model
    structure = _model_inputs(plain, input_signature)
    inputs = keras.tree.flatten(structure)
    _build(plain, structure)
    batch_size = batch_size if batch_size is not None or not loops else 1
    representative = None if representative_data is None else _as_input_arrays(
        representative_data, inputs, "representative_data")
    samples, source = _verification_inputs(plain, inputs, verification_data, representative)

    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        _save(tf, plain, structure, batch_size, saved)
        content = _convert(tf, saved, quantization, representative, sparse, int8_io, allow_flex_ops, batch_size,
                           from_qat, per_channel)
        if from_qat:  # the baseline is the same model, dense and float
            saved = os.path.join(tmp, "float_model")
            _save(tf, strip(model), structure, batch_size, saved)
        dense_size = len(_convert(tf, saved, None, None, False, False, allow_flex_ops, batch_size))
    if from_qat:
        _check_full_integer(content)
    if quantization is not None:
        _refuse_lost_blocks(content)
    expected = _keras_outputs(plain, structure, samples)
    runtime, options, attempts, outputs, rows = _run_verified(content, samples, expected, quantization)
    top1 = [row["top1_agreement"] for row in rows.values() if row["top1_agreement"] is not None]
    write_atomically(path, content)
    return ExportReport(
        path=path, size_bytes=len(content), dense_float_size_bytes=dense_size,
        quantization=_quantization_text(quantization, from_qat, per_channel),
        sparse=sparse, runtime=runtime,
        interpreter_options=options, attempts=attempts,
        max_abs_error=max(row["max_abs_error"] for row in rows.values()),
        top1_agreement=min(top1) if top1 else None, samples=len(next(iter(samples.values()))),
        inputs=_signature_inputs(interpreter(content, options), inputs), outputs=rows,
        batch_size=batch_size, verification_inputs=source, tensors=tflite_tensors.tensor_rows(path),
    )


def xnnpack_sparse_layer(layer):
    """Layer selector for XNNPACK's sparse inference path (a `layers=` of
    `tfsparse.prune`).

    XNNPACK runs float 1x1 convolutions (stride 1, no groups or dilation,
    on feature maps larger than 1x1) with sparse kernels when at least 2/3
    of their weights are zero and they sit in a MobileNet-like subgraph; the
    same rule as tfmot's `PruneForLatencyOnXNNPack`. Prune the selected layers
    to 0.7-0.9 and export in float32 (`quantization=None` or "float16").

    Example: `tfsparse.prune(mobilenet, layers=tfsparse.export.xnnpack_sparse_layer)`
    """
    if type(layer) is not keras.layers.Conv2D:
        return False
    spatial = tuple(layer.input.shape[1:3]) if getattr(layer, "_inbound_nodes", None) else ()
    return (
        tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
        and spatial != (1, 1)
    )


def run(interp, inputs):
    """Runs a batch through the interpreter of a file `to_tflite` wrote.

    Args:
        interp: from `interpreter(...)`.
        inputs: an array (files with one input), or a dict of arrays keyed
            by the signature's input names (`ExportReport.inputs`).

    Returns:
        An array for files with one output, else a dict of arrays keyed by
        output name. Float values: int8 inputs and outputs are converted
        with the tensors' scale and zero point; integer inputs (token ids)
        are passed as they are. A file with a fixed batch size is run in
        chunks of that size.
    """
    outputs = _run_signature(interp, inputs)
    return next(iter(outputs.values())) if len(outputs) == 1 else outputs


def _run_signature(interp, inputs):
    if not interp.get_signature_list():
        raise ValueError("run needs a .tflite file with a signature (files written by to_tflite have one).")
    runner = interp.get_signature_runner()
    details = runner.get_input_details()
    if not isinstance(inputs, dict):
        if len(details) != 1:
            raise ValueError(f"This file has inputs {sorted(details)}: pass a dict keyed by these names. "
                             f"Received: {_describe(inputs)}")
        inputs = {next(iter(details)): inputs}
    if set(inputs) != set(details):
        raise ValueError(f"This file's inputs are {sorted(details)}. Received: a dict with keys {sorted(inputs)}")
    values = {name: _to_tensor_values(name, np.asarray(inputs[name]), details[name]) for name in details}
    count = len(next(iter(values.values())))
    fixed = {int(detail["shape_signature"][0]) for detail in details.values()} - {-1}
    chunk = fixed.pop() if fixed else count
    results = []
    for start in range(0, count, chunk):
        batch = {name: _padded(value[start:start + chunk], chunk) for name, value in values.items()}
        results.append(runner(**batch))
    output_details = runner.get_output_details()
    return {
        name: _from_tensor_values(np.concatenate([result[name] for result in results])[:count], output_details[name])
        for name in output_details
    }


def _to_tensor_values(name, values, detail):
    expected = [int(d) for d in detail["shape_signature"][1:]]
    if values.ndim != len(expected) + 1 or any(e not in (-1, v) for e, v in zip(expected, values.shape[1:])):
        shape = ", ".join("?" if d == -1 else str(d) for d in expected)
        raise ValueError(f"Input '{name}' of this file takes a batch of shape (N, {shape}). "
                         f"Received: an array of shape {values.shape}")
    scale, zero = detail["quantization"]
    if scale and values.dtype != detail["dtype"]:  # real values for a quantized input
        info = np.iinfo(detail["dtype"])
        values = np.clip(np.round(values / scale + zero), info.min, info.max)
    return values.astype(detail["dtype"])


def _from_tensor_values(values, detail):
    scale, zero = detail["quantization"]
    return (values.astype(np.float32) - zero) * scale if scale else values


def _padded(values, size):
    """`values` with its last example repeated up to `size` (a fixed batch)."""
    missing = size - len(values)
    return np.concatenate([values, np.repeat(values[-1:], missing, axis=0)]) if missing else values


#: Largest error, relative to the largest |Keras output|, that a float32
#: file may show: above it the file computes something else (the converter
#: drops the inputs of a partial block, say), whatever the runtime.
FLOAT32_TOLERANCE = 1e-3


def _refuse_lost_blocks(content):
    """Raises when the converter dropped the partial last block of a
    block-sparse kernel (TF 2.21 encodes whole blocks only). A float32 file
    is checked exactly by `_run_verified`; a quantized one differs from
    Keras by rounding anyway, and lost weights can hide in that: a
    LeNet-300-100 in (16, 1) blocks lost 20 points of accuracy that way."""
    lost = {row["name"]: positions for row in tflite_tensors.tensor_rows(content)
            if (positions := tflite_tensors.lost_positions(row))}
    if lost:
        details = "; ".join(f"'{name}': last {n} of dim {d}" for name, by_dim in lost.items() for d, n in by_dim.items())
        raise ValueError(
            "The converter stored a block-sparse kernel without its partial last block, so the "
            f"quantized file would compute a different model ({details}); nothing was written. "
            "The converter picks block encoding itself where whole blocks are zero, also for "
            "unstructured masks at high sparsity. Export with policy=\"smallest\" (it writes the "
            "dense-encoded file when the sparse one cannot be right) or sparse=False; or prune with a "
            "block that divides the layer's input size, or leave that layer dense (`exclude=` in "
            "tfsparse.prune)."
        )


def _run_verified(content, samples, expected, quantization):
    """Runs every interpreter configuration and picks the first whose
    outputs are finite and no further from Keras than the best one's (with
    slack): a delegate can load a file and compute garbage (XNNPACK on
    block-sparse dynamic-range weights), and some files compute NaN
    everywhere (block-sparse float16). Returns (name, options, attempts,
    outputs, rows); raises when no configuration computes the model."""
    results, attempts = [], []
    for name, options in RUNTIMES:
        try:
            outputs = _run_signature(interpreter(content, options), samples)
        except (RuntimeError, ValueError) as error:
            attempts.append([name, _first_line(error)])
            continue
        rows = _compare(expected, outputs)
        finite = all(np.all(np.isfinite(value)) for value in outputs.values())
        error = max(row["max_abs_error"] for row in rows.values()) / _scale(expected)
        attempts.append([name, None if finite else "outputs are NaN or infinite"])
        if finite:
            results.append((name, options, outputs, rows, error))
    if not results:
        raise RuntimeError(
            "The converted model runs in no LiteRT configuration tried; nothing was written. "
            + "; ".join(f"{name}: {error}" for name, error in attempts)
        )
    best = min(result[4] for result in results)
    if quantization is None and best > FLOAT32_TOLERANCE:
        raise RuntimeError(
            f"The converted float32 model differs from the Keras model by {best:.3g} of its largest "
            "output in every LiteRT configuration; nothing was written. `tfsparse inspect` on a file "
            "converted with sparse=False tells whether the sparse encoding lost weights (a partial "
            "block of a block-sparse kernel is dropped by the converter)."
        )
    for name, options, outputs, rows, error in results:
        if error <= 2 * best + FLOAT32_TOLERANCE:
            return name, options, _mark_rejected(attempts, results, name, best), outputs, rows
    raise AssertionError("unreachable: the best result passes its own test")


def _mark_rejected(attempts, results, chosen, best):
    """Attempts with, for the configurations that ran but computed worse
    than the best one, why they were not chosen."""
    errors = {result[0]: result[4] for result in results}
    marked = []
    for name, error in attempts:
        if error is None and name != chosen and errors[name] > 2 * best + FLOAT32_TOLERANCE:
            error = f"wrong outputs: error {errors[name]:.3g} of the largest output, best {best:.3g}"
        marked.append((name, error))
    return marked


def _scale(expected):
    return max(float(np.max(np.abs(value))) for value in expected.values()) or 1.0


def _signature_inputs(interp, inputs):
    details = interp.get_signature_runner().get_input_details()
    return [{
        "name": spec.name,
        "shape": [None if d == -1 else int(d) for d in details[spec.name]["shape_signature"]],
        "dtype": np.dtype(details[spec.name]["dtype"]).name,
        "quantization": [float(details[spec.name]["quantization"][0]), int(details[spec.name]["quantization"][1])],
    } for spec in inputs]


def _model_inputs(model, input_signature):
    """The model's call argument as a structure of `_Input` leaves.

    Functional models know their inputs; Sequential ones once built. For a
    subclassed model Keras records only the shapes it was first called with
    (`_build_shapes_dict`), as its own `model.export` does.
    """
    if input_signature is not None:
        structure = input_signature
        for spec in keras.tree.flatten(structure):
            if getattr(spec, "shape", None) is None or getattr(spec, "dtype", None) is None:
                raise TypeError(
                    "`input_signature` must be a keras.InputSpec, tf.TensorSpec or keras.Input with a shape "
                    f"and a dtype, or a list or dict of them. Received: input_signature={input_signature!r}")
    elif getattr(model, "_inputs_struct", None) is not None:
        structure = model._inputs_struct
    elif isinstance(model, keras.Sequential) and model.built:
        structure = model.inputs[0]
    else:
        structure = _called_shapes(model)
    leaves = keras.tree.flatten_with_path(structure)
    inputs = [
        _Input(
            name=_input_name(path, spec, index),
            shape=tuple(None if d is None else int(d) for d in tuple(spec.shape)[1:]),
            dtype=keras.backend.standardize_dtype(spec.dtype),
            tensor=spec if isinstance(spec, keras.KerasTensor) and input_signature is None else None,
        )
        for index, (path, spec) in enumerate(leaves)
    ]
    names = [spec.name for spec in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"The model's input names must be unique to match them in LiteRT. Received: {names}")
    return keras.tree.pack_sequence_as(structure, inputs)


def _build(model, structure):
    """Creates the weights of a model described by `input_signature` but
    never called (a SavedModel can only track built models): one call on
    zeros, which are valid ids for integer inputs."""
    if not model.built:
        zeros = {spec.name: np.zeros((1, *(d or 1 for d in spec.shape)), spec.dtype)
                 for spec in keras.tree.flatten(structure)}
        model(_packed(structure, zeros), training=False)


def _input_name(path, spec, index):
    keys = [str(part) for part in path if isinstance(part, str)]
    return "_".join(keys) or getattr(spec, "name", None) or f"input_{index}"


def _called_shapes(model):
    shapes = getattr(model, "_build_shapes_dict", None)
    if not model.built or not shapes:
        raise ValueError(
            f"to_tflite cannot tell the inputs of this {type(model).__name__}: Keras records them when a "
            "subclassed model is first called. Call it once on a batch (model(x)), or pass "
            "input_signature=keras.InputSpec(shape=(None, ...), dtype=...). Received: a model never called"
        )
    if len(shapes) != 1:
        raise ValueError(
            "to_tflite exports models whose call() takes one input argument (a tensor, or a list or dict of "
            f"tensors). Received: a {type(model).__name__} called with {', '.join(shapes)}"
        )
    return _shape_specs(next(iter(shapes.values())))


def _shape_specs(shapes):
    """Recorded call shapes (nested dicts/lists of shape tuples) as InputSpecs."""
    if isinstance(shapes, dict):
        return {key: _shape_specs(value) for key, value in shapes.items()}
    if all(d is None or isinstance(d, int) for d in shapes):
        return keras.InputSpec(shape=(None, *tuple(shapes)[1:]), dtype=keras.config.floatx())
    return [_shape_specs(value) for value in shapes]


def _output_names(model, outputs):
    """Signature names of the model's outputs, in `keras.tree.flatten` order:
    the keys of dict outputs, else a functional model's output layer names,
    else output_0, output_1, ..."""
    paths = [path for path, _ in keras.tree.flatten_with_path(outputs)]
    keyed = ["_".join(str(part) for part in path if isinstance(part, str)) for path in paths]
    if all(keyed) and len(set(keyed)) == len(keyed):
        return keyed
    names = list(getattr(model, "output_names", None) or [])
    if len(names) == len(paths) and len(set(names)) == len(names):
        return names
    return [f"output_{index}" for index in range(len(paths))]


def _keras_outputs(model, structure, samples):
    outputs = model(_packed(structure, samples), training=False)
    flat = [keras.ops.convert_to_numpy(value) for value in keras.tree.flatten(outputs)]
    return dict(zip(_output_names(model, outputs), flat))


def _packed(structure, values):
    """`values` (keyed by input name) in the structure the model's call takes."""
    return keras.tree.pack_sequence_as(structure, [values[spec.name] for spec in keras.tree.flatten(structure)])


def _save(tf, model, structure, batch_size, directory):
    """A SavedModel whose one signature takes the inputs and returns the
    outputs by name (Keras's own `model.export` names outputs output_0, ...
    and cannot fix the batch size)."""
    inputs = keras.tree.flatten(structure)
    specs = [tf.TensorSpec((batch_size, *spec.shape), spec.dtype, name=spec.name) for spec in inputs]

    def serve(*values):
        outputs = model(keras.tree.pack_sequence_as(structure, list(values)), training=False)
        return dict(zip(_output_names(model, outputs), keras.tree.flatten(outputs)))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", serve, input_signature=specs)
    archive.write_out(directory, verbose=False)


def _compare(expected, actual):
    rows = {}
    for name, want in expected.items():
        got = actual[name]
        if got.shape != want.shape:
            raise RuntimeError(f"Output '{name}' has shape {got.shape} in LiteRT and {want.shape} in Keras; "
                               "nothing was written.")
        has_classes = want.ndim >= 2 and want.shape[-1] > 1
        rows[name] = {
            "max_abs_error": float(np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)))),
            "top1_agreement": float(np.mean(got.argmax(-1) == want.argmax(-1))) if has_classes else None,
        }
    return rows


def _quantization_text(quantization, from_qat, per_channel):
    if quantization is None:
        return "none (float32)"
    details = ["quantization-aware ranges"] * from_qat
    details += ["per-tensor kernel scales"] * (quantization in PER_CHANNEL_CHOICE and not per_channel)
    return quantization + (f" ({', '.join(details)})" if details else "")


def _agreement(max_abs_error, top1_agreement):
    return f"max |tflite - keras| = {max_abs_error:.3g}" + (
        "" if top1_agreement is None else f", top-1 agreement {top1_agreement:.2%}")


def _convert(tf, saved, quantization, representative, sparse, int8_io, allow_flex_ops, batch_size, from_qat=False,
             per_channel=True):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    if quantization in PER_CHANNEL_CHOICE and not per_channel:
        # TF 2.21: the first switch serves post-training quantization, the
        # quantization-aware path reads only the second (FULLY_CONNECTED;
        # its conv kernels stay per channel, as `quantize_aware` trains them).
        converter._experimental_disable_per_channel = True
        converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantization is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    converter.optimizations = optimizations
    # A quantization-aware graph makes the converter quantize from its
    # FakeQuant ops; TF 2.21 asks for a representative dataset whenever the
    # ops are restricted to TFLITE_BUILTINS_INT8, so `_check_full_integer`
    # checks the result instead.
    int8_only = quantization == "int8" and not from_qat
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if int8_only else tf.lite.OpsSet.TFLITE_BUILTINS
    ops = [builtins] + ([tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex_ops else [])
    converter.target_spec.supported_ops = ops
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if int8_only:
        converter.representative_dataset = lambda: _calibration_batches(representative, batch_size or 1)
    if quantization == "int8":
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and others
        raise _conversion_error(error, allow_flex_ops, batch_size) from error


def _check_full_integer(content):
    """Raises when an op of the converted QAT file computes in float (other
    than the QUANTIZE of a float input and the DEQUANTIZE of a float output)."""
    interp = interpreter(content)
    types = {detail["index"]: np.dtype(detail["dtype"]) for detail in interp.get_tensor_details()}
    float_ops = sorted({
        op["op_name"] for op in interp._get_ops_details()
        if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE")
        and any(index >= 0 and types.get(index) in (np.float32, np.float16)
                for index in [*op["inputs"], *op["outputs"]])
    })
    if float_ops:
        raise RuntimeError(
            f"The quantization-aware model converted with float ops ({', '.join(float_ops)}): some tensor "
            "has no learned range. Nothing was written. Layers that tfsparse.quantize_aware supports give "
            "every tensor a range; was the model changed after quantize_aware?"
        )


def _calibration_batches(values, size):
    """Dicts keyed by signature input name, as the converter takes them for
    a SavedModel signature; integer inputs keep their dtype."""
    count = min(len(next(iter(values.values()))), CALIBRATION_SAMPLES)
    for start in range(0, count - size + 1, size):
        yield {name: value[start:start + size] for name, value in values.items()}


_ERROR_MESSAGE = re.compile(r"error: (?:loc\(.*\)\): )?(.+)")
_TF_OP = re.compile(r"'(tf\.\w+)' op")


def _conversion_error(error, allow_flex_ops, batch_size):
    """A ValueError naming the TensorFlow ops TFLite could not take and what to try."""
    text = str(error)
    messages = list(dict.fromkeys(_ERROR_MESSAGE.findall(text))) or [_first_line(error)]
    ops = list(dict.fromkeys(_TF_OP.findall(text)))
    if "element_shape to be static" in text and batch_size is None:
        hint = ("These ops keep a loop's state (TensorList, e.g. a recurrent layer) and need a static batch size: "
                "pass batch_size=1.")
    elif ops and not allow_flex_ops:
        hint = (f"TFLite's builtin ops do not cover {', '.join(ops)}: replace the layer that uses "
                f"{'it' if len(ops) == 1 else 'them'}, or pass allow_flex_ops=True to keep TensorFlow (Flex) ops "
                "(the app then needs the Flex delegate; ai-edge-litert's Python interpreter has none, so to_tflite "
                "cannot verify such a file here).")
    elif not allow_flex_ops:
        hint = ("If the model needs TensorFlow ops that TFLite lacks, pass allow_flex_ops=True "
                "(the app then needs the Flex delegate).")
    else:
        hint = ""
    where = f" at {', '.join(ops)}" if ops else ""
    return ValueError(f"TFLite conversion failed{where}: {messages[0][:300]}. {hint}".rstrip())


def _check_arguments(model, path, quantization, representative_data, int8_io, batch_size, per_channel=None):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model={model!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    from_qat = quantization == "int8" and qat.is_quantize_aware(model)
    if from_qat:
        qat.check_ranges(model)
    if quantization == "int8" and representative_data is None and not from_qat:
        raise ValueError(
            "quantization='int8' needs `representative_data` (a few hundred typical inputs) "
            "to calibrate the activation ranges, or a quantization-aware model (tfsparse.quantize_aware, "
            "trained), whose ranges it uses. Received: representative_data=None"
        )
    loops = _recurrent_loops(model)
    if quantization == "int8" and loops:
        raise ValueError(
            f"quantization='int8' cannot calibrate the recurrent layers {loops}: TF 2.21's int8 calibrator "
            "crashes the process on their TFLite while loop. Use quantization='dynamic' or 'float16', or build "
            "these layers with unroll=True (fixed sequence length: the loop becomes plain ops that int8 handles). "
            "Received: quantization='int8'"
        )
    if per_channel is not None:
        if not isinstance(per_channel, bool):
            raise ValueError(f"`per_channel` must be None, True or False. Received: per_channel={per_channel!r}")
        if quantization not in PER_CHANNEL_CHOICE:
            raise ValueError(
                f"`per_channel` sets the scales of int8 kernels: it needs quantization='int8' or 'dynamic'. "
                f"Received: per_channel={per_channel}, quantization={quantization!r}")
        if from_qat and per_channel != qat.per_channel_scales(model):
            trained = "one scale per output channel" if not per_channel else "one scale per kernel"
            raise ValueError(
                f"The quantization-aware model was trained with {trained} "
                f"(tfsparse.quantize_aware(..., per_channel={not per_channel})); its file must keep them. "
                f"Leave `per_channel` unset. Received: per_channel={per_channel}")
    if int8_io and quantization != "int8":
        raise ValueError(f"int8_io=True needs quantization='int8'. Received: quantization={quantization!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"`batch_size` must be None or a positive integer. Received: batch_size={batch_size!r}")
    if path.is_dir():
        raise IsADirectoryError(f"`path` is a directory: {path}. Give a file name such as {path / 'model.tflite'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The directory of `path` does not exist: {path.parent}. Received: path={path}")


def _recurrent_loops(model):
    """Names of the recurrent layers that become a TFLite while loop (not unrolled)."""
    return [layer.name for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.RNN) and not layer.unroll]


def _as_input_arrays(data, inputs, argument):
    """`data` (array, list/tuple in input order, or dict by name) as arrays keyed by input name."""
    names = [spec.name for spec in inputs]
    if isinstance(data, dict):
        if set(data) != set(names):
            raise ValueError(f"`{argument}` is keyed by input name; this model's inputs are {names}. "
                             f"Received: a dict with keys {sorted(map(str, data))}")
        arrays = [data[name] for name in names]
    elif len(inputs) == 1:
        single = isinstance(data, (list, tuple)) and len(data) == 1 and np.ndim(data[0]) == len(inputs[0].shape) + 1
        arrays = [data[0] if single else data]
    elif isinstance(data, (list, tuple)) and len(data) == len(inputs):
        arrays = list(data)
    else:
        raise ValueError(f"`{argument}` must be a list of {len(inputs)} arrays (one per input, in the order "
                         f"{names}) or a dict keyed by those names. Received: {_describe(data)}")
    values = {spec.name: _as_input_array(array, spec, argument) for spec, array in zip(inputs, arrays)}
    counts = {name: len(value) for name, value in values.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"The arrays of `{argument}` must hold the same number of examples. Received: {counts}")
    return values


def _as_input_array(data, spec, argument):
    values = np.asarray(data)
    label = f"`{argument}` for input '{spec.name}'"
    received = f"Received: an array of dtype {values.dtype} and shape {values.shape}"
    if values.dtype.kind not in "biuf":
        raise ValueError(f"{label} must be numeric ({spec.dtype}). {received}")
    if spec.is_integer and values.dtype.kind not in "iu":
        raise ValueError(f"{label} must hold integer ids: the input is {spec.dtype}. {received}")
    mismatch = any(e is not None and e != v for e, v in zip(spec.shape, values.shape[1:]))
    if values.ndim != len(spec.shape) + 1 or mismatch:
        raise ValueError(f"{label} must be a batch of shape (N, {', '.join(map(str, spec.shape))}). {received}")
    if len(values) == 0:
        raise ValueError(f"{label} is empty.")
    return values.astype(spec.dtype)


def _verification_inputs(model, inputs, verification_data, representative):
    if verification_data is not None:
        return _as_input_arrays(verification_data, inputs, "verification_data"), "verification_data"
    if representative is not None:
        count = min(VERIFY_SAMPLES, len(next(iter(representative.values()))))
        first = {name: value[:count] for name, value in representative.items()}
        return first, f"the first {count} of representative_data"
    rng = np.random.default_rng(0)
    samples, notes = {}, []
    for spec in inputs:
        if None in spec.shape:
            raise ValueError(
                f"Input '{spec.name}' has sizes Keras does not know ({', '.join(map(str, spec.shape))}), so "
                "to_tflite cannot make random verification inputs: pass `verification_data`. "
                "Received: verification_data=None, representative_data=None")
        shape = (VERIFY_SAMPLES, *spec.shape)
        if spec.is_integer:
            bound, why = _id_bound(model, spec)
            samples[spec.name] = rng.integers(0, bound, shape).astype(spec.dtype)
            notes.append(f"{spec.name}: ids in [0, {bound}) ({why})")
        else:
            samples[spec.name] = rng.random(shape).astype(spec.dtype)
            notes.append(f"{spec.name}: uniform in [0, 1)")
    return samples, "random: " + "; ".join(notes)


def _id_bound(model, spec):
    """Exclusive upper bound of valid random ids for an integer input.

    In a functional model, the smallest input_dim of the Embeddings reading
    the input; without a graph (subclassed), the smallest of the model's
    Embeddings, valid for each of them; else SMALL_IDS.
    """
    embeddings = [layer for layer in model._flatten_layers(include_self=False)
                  if isinstance(layer, keras.layers.Embedding)]
    if spec.tensor is not None:
        readers = [layer.input_dim for layer in embeddings
                   if any(t is spec.tensor for node in layer._inbound_nodes for t in node.input_tensors)]
        if readers:
            return min(readers), "the input_dim of the Embedding reading it"
    elif embeddings:
        return min(layer.input_dim for layer in embeddings), "the smallest Embedding input_dim of the model"
    return SMALL_IDS, "small ids: no Embedding reads this input"


def _describe(data):
    if isinstance(data, (list, tuple)):
        return f"a {type(data).__name__} of {len(data)} items"
    shape = getattr(data, "shape", None)
    return f"{type(data).__name__}" + ("" if shape is None else f" of shape {tuple(shape)}")


def _first_line(error):
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
