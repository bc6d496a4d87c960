"""Per-tensor facts of a .tflite flatbuffer: shape, type, quantization, sparse encoding.

Reads the file with the flatbuffer schema that ships with ai-edge-litert, so
it sees what the interpreter API hides: whether a constant tensor is stored
with TFLite's sparse encoding, and how many values are actually stored.
"""

from pathlib import Path

import numpy as np

_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT8": np.int8,
    "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16,
}


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as error:
        raise ImportError(
            "Reading .tflite files needs ai-edge-litert: pip install 'tfsparse[litert]'"
        ) from error
    return schema_py_generated


def tensor_rows(path):
    """One dict per constant tensor of the file's subgraphs.

    Keys: name, shape, dtype, quantized, sparse, stored (number of values
    stored in the buffer), zero_fraction (zeros among the logical elements;
    for sparse tensors the elements not stored count as zeros).
    """
    schema = _schema()
    raw = Path(path).read_bytes()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    except Exception as error:  # flatbuffers raises assorted errors on garbage
        raise ValueError(f"{path} is not a valid .tflite file ({type(error).__name__}: {error})") from error
    if not model.subgraphs:
        raise ValueError(f"{path} is not a valid .tflite file (no subgraphs)")
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    rows = []
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
            data = None if buffer is None else buffer.data
            if data is None or len(data) == 0:
                continue  # activations and inputs: no constant data
            dtype_name = type_names.get(tensor.type, str(tensor.type))
            numpy_type = _NUMPY_TYPES.get(dtype_name)
            if numpy_type is None:
                continue
            values = np.frombuffer(bytes(bytearray(data)), dtype=numpy_type)
            shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
            elements = int(np.prod(shape)) if shape else 1
            sparse = tensor.sparsity is not None
            quantization = tensor.quantization
            quantized = quantization is not None and quantization.scale is not None and len(quantization.scale) > 0
            zeros = int(np.count_nonzero(values == 0)) + (elements - values.size if sparse else 0)
            rows.append({
                "name": tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
                "shape": shape, "dtype": dtype_name.lower(), "quantized": bool(quantized),
                "sparse": sparse, "stored": int(values.size),
                "zero_fraction": zeros / elements if elements else 0.0,
            })
    return rows


def format_rows(rows, file_size=None):
    header = ("tensor", "shape", "dtype", "quantized", "sparse", "stored", "zeros")
    lines = [(r["name"][-48:], "x".join(map(str, r["shape"])), r["dtype"], "yes" if r["quantized"] else "no",
              "yes" if r["sparse"] else "no", str(r["stored"]), f"{r['zero_fraction']:.2%}") for r in rows]
    elements = sum(int(np.prod(r["shape"])) if r["shape"] else 1 for r in rows)
    zeros = sum(r["zero_fraction"] * (int(np.prod(r["shape"])) if r["shape"] else 1) for r in rows)
    total = ("total", "", "", f"{sum(r['quantized'] for r in rows)} tensors", f"{sum(r['sparse'] for r in rows)} tensors",
             str(sum(r["stored"] for r in rows)), f"{zeros / max(elements, 1):.2%}")
    widths = [max(len(h), *(len(line[i]) for line in lines + [total])) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(fmt(header))
    text = "\n".join([fmt(header), rule, *map(fmt, lines), rule, fmt(total)])
    if file_size is not None:
        text += f"\nfile size: {file_size:,} bytes"
    return text
