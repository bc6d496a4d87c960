"""Export to TFLite / LiteRT with sparse weights and quantization, verified.

`to_tflite` strips a masked model, converts it (TFLite builtin ops only,
unless told otherwise) with TFLite's sparse weight encoding and the requested
quantization, then LOADS what it produced in the LiteRT interpreter, runs
sample inputs and compares with Keras before the file appears at `path`.

Interpreter configurations are tried in order: the default (LiteRT applies
its XNNPACK delegate), then the builtin kernels without default delegates.
On this project's reference machine (TF 2.21, ai-edge-litert 2.x) sparse +
int8 files fail under XNNPACK ("failed to delegate FULLY_CONNECTED") and run
with the builtin kernels; the report says which configuration ran and why
the others did not, so the app can create its interpreter the same way.
"""

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from tfsparse import layers as masked_layers
from tfsparse import tflite_tensors
from tfsparse.surgery import _all_layers, strip

QUANTIZATIONS = (None, "dynamic", "float16", "int8")
VERIFY_SAMPLES = 256

#: (name, keyword arguments of ai_edge_litert.interpreter.Interpreter), in the order tried.
RUNTIMES = (
    ("default (XNNPACK delegate)", {}),
    ("builtin kernels, no default delegates", {"experimental_op_resolver_type": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}),
)


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
        max_abs_error: largest |TFLite output - Keras output| over the
            verification inputs (dequantized for int8 outputs).
        top1_agreement: fraction of verification inputs whose arg-max
            agrees (None for outputs with one value).
        samples: number of verification inputs.
        tensors: per-constant-tensor rows from the flatbuffer
            (`tfsparse.tflite_tensors.tensor_rows`).
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
    tensors: list = field(repr=False)

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
        }

    def __str__(self):
        lines = [
            f"wrote {self.path}: {self.size_bytes:,} bytes = {self.size_ratio:.3f} x the dense float32 file "
            f"({self.dense_float_size_bytes:,} bytes); quantization {self.quantization}, "
            f"{self.sparse_tensors} sparse-encoded tensors",
            f"verified in LiteRT on {self.samples} inputs: max |tflite - keras| = {self.max_abs_error:.3g}"
            + ("" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.2%}"),
            f"runs with: {self.runtime}",
        ]
        for name, error in self.attempts:
            if error is not None:
                lines.append(f"does not run with: {name} ({error})")
        return "\n".join(lines)


def to_tflite(
    model,
    path,
    quantization=None,
    representative_data=None,
    sparse=True,
    int8_io=False,
    allow_flex_ops=False,
    verification_data=None,
):
    """Converts `model` to a verified .tflite file at `path`.

    Args:
        model: a Keras model, masked (it is stripped first) or plain; one
            input and one output.
        path: the file to write. Its directory must exist. The file is
            written only after the verification passed.
        quantization: `None` (float32), `"dynamic"` (int8 weights, float
            activations), `"float16"` (float16 weights) or `"int8"` (full
            integer; needs `representative_data`).
        representative_data: input examples (an array with the model's input
            shape after the batch axis) for int8 calibration; also the
            default verification inputs.
        sparse: store kernels with TFLite's sparse encoding
            (`tf.lite.Optimize.EXPERIMENTAL_SPARSITY`; applies to tensors
            with at least about 30 % zeros).
        int8_io: with `"int8"`: int8 inputs and outputs instead of float.
        allow_flex_ops: allow TensorFlow (Flex) ops; the app then needs the
            Flex delegate. Off by default: builtin ops only.
        verification_data: inputs to compare TFLite with Keras on; default:
            up to 256 of `representative_data`, else random inputs in [0, 1).

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
    _check_arguments(model, path, quantization, representative_data, int8_io)
    plain = strip(model) if _is_masked(model) else model
    input_shape = tuple(plain.inputs[0].shape[1:])
    representative = None if representative_data is None else _as_inputs(
        representative_data, input_shape, "representative_data")
    if verification_data is not None:
        samples = _as_inputs(verification_data, input_shape, "verification_data")
    elif representative is not None:
        samples = representative[:VERIFY_SAMPLES]
    else:
        samples = np.random.default_rng(0).random((VERIFY_SAMPLES, *input_shape), dtype=np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        saved = os.path.join(tmp, "saved_model")
        plain.export(saved, verbose=False)
        content = _convert(tf, saved, quantization, representative, sparse, int8_io, allow_flex_ops)
        dense_size = len(_convert(tf, saved, None, None, False, False, allow_flex_ops))
    expected = keras.ops.convert_to_numpy(plain(samples, training=False))
    runtime, options, attempts, outputs = _run_first_working(content, samples)
    differences = np.abs(outputs.astype(np.float64) - expected)
    top1 = None if expected.shape[-1] == 1 else float(np.mean(outputs.argmax(-1) == expected.argmax(-1)))
    _write_atomically(path, content)
    return ExportReport(
        path=path, size_bytes=len(content), dense_float_size_bytes=dense_size,
        quantization=quantization or "none (float32)", sparse=sparse, runtime=runtime,
        interpreter_options=options, attempts=attempts, max_abs_error=float(differences.max()),
        top1_agreement=top1, samples=len(samples), tensors=tflite_tensors.tensor_rows(path),
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


def interpreter(path_or_content, options=None, num_threads=None):
    """A LiteRT interpreter with `options` from an `ExportReport`."""
    from ai_edge_litert import interpreter as litert

    kwargs = dict(options or {})
    if "experimental_op_resolver_type" in kwargs:
        kwargs["experimental_op_resolver_type"] = getattr(litert.OpResolverType, kwargs["experimental_op_resolver_type"])
    source = {"model_content": path_or_content} if isinstance(path_or_content, bytes) else {
        "model_path": str(path_or_content)}
    return litert.Interpreter(**source, num_threads=num_threads, **kwargs)


def run(interp, inputs):
    """Runs a batch through a one-input, one-output interpreter (float in and out).

    Quantized (int8) inputs and outputs are converted with the tensors'
    scale and zero point.
    """
    input_detail = interp.get_input_details()[0]
    interp.resize_tensor_input(input_detail["index"], [len(inputs), *input_detail["shape"][1:]])
    interp.allocate_tensors()
    input_detail = interp.get_input_details()[0]
    values = np.asarray(inputs, dtype=np.float32)
    if input_detail["dtype"] != np.float32:
        scale, zero = input_detail["quantization"]
        info = np.iinfo(input_detail["dtype"])
        values = np.clip(np.round(values / scale + zero), info.min, info.max)
    interp.set_tensor(input_detail["index"], values.astype(input_detail["dtype"]))
    interp.invoke()
    output_detail = interp.get_output_details()[0]
    output = interp.get_tensor(output_detail["index"])
    if output_detail["dtype"] != np.float32:
        scale, zero = output_detail["quantization"]
        output = (output.astype(np.float32) - zero) * scale
    return output


def _run_first_working(content, samples):
    attempts = []
    for name, options in RUNTIMES:
        try:
            outputs = run(interpreter(content, options), samples)
        except (RuntimeError, ValueError) as error:
            attempts.append((name, _first_line(error)))
            continue
        attempts.append((name, None))
        return name, options, attempts, outputs
    raise RuntimeError(
        "The converted model runs in no LiteRT configuration tried; nothing was written. "
        + "; ".join(f"{name}: {error}" for name, error in attempts)
    )


def _convert(tf, saved, quantization, representative, sparse, int8_io, allow_flex_ops):
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    optimizations = []
    if sparse:
        optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantization is not None:
        optimizations.append(tf.lite.Optimize.DEFAULT)
    converter.optimizations = optimizations
    builtins = tf.lite.OpsSet.TFLITE_BUILTINS_INT8 if quantization == "int8" else tf.lite.OpsSet.TFLITE_BUILTINS
    ops = [builtins] + ([tf.lite.OpsSet.SELECT_TF_OPS] if allow_flex_ops else [])
    converter.target_spec.supported_ops = ops
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantization == "int8":
        converter.representative_dataset = lambda: ([example[None]] for example in representative[:500])
        if int8_io:
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
    try:
        return converter.convert()
    except Exception as error:  # the converter raises ConverterError and others
        hint = "" if allow_flex_ops else (
            " If the model needs TensorFlow ops that TFLite lacks, pass allow_flex_ops=True "
            "(the app then needs the Flex delegate)."
        )
        raise ValueError(f"TFLite conversion failed: {_first_line(error)}.{hint}") from error


def _check_arguments(model, path, quantization, representative_data, int8_io):
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a Keras model. Received: model={model!r}")
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(
            "to_tflite converts and verifies models with one input and one output. Received a model "
            f"with {len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"`quantization` must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}")
    if quantization == "int8" and representative_data is None:
        raise ValueError(
            "quantization='int8' needs `representative_data` (a few hundred typical inputs) "
            "to calibrate the activation ranges. Received: representative_data=None"
        )
    if int8_io and quantization != "int8":
        raise ValueError(f"int8_io=True needs quantization='int8'. Received: quantization={quantization!r}")
    if path.is_dir():
        raise IsADirectoryError(f"`path` is a directory: {path}. Give a file name such as {path / 'model.tflite'}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"The directory of `path` does not exist: {path.parent}. Received: path={path}")


def _as_inputs(data, input_shape, name):
    values = np.asarray(data, dtype=np.float32)
    expected = tuple(None if d is None else int(d) for d in input_shape)
    if values.ndim != len(expected) + 1 or any(e is not None and e != v for e, v in zip(expected, values.shape[1:])):
        raise ValueError(
            f"`{name}` must be a batch of model inputs of shape (N, {', '.join(map(str, expected))}). "
            f"Received: an array of shape {values.shape}"
        )
    if len(values) == 0:
        raise ValueError(f"`{name}` is empty.")
    return values


def _is_masked(model):
    return any(masked_layers.is_masked(layer) for layer in _all_layers(model))


def _write_atomically(path, content):
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def _first_line(error):
    text = str(error).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else type(error).__name__)[:300]
