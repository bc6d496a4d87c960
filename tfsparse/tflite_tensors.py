"""Per-tensor facts of a .tflite flatbuffer: shape, type, quantization, sparse encoding.

Reads the file with the flatbuffer schema that ships with ai-edge-litert, so
it sees what the interpreter API hides: whether a constant tensor is stored
with TFLite's sparse encoding, and how many values are actually stored.

Sparse tensors come in two kinds (the tensor's SparsityParameters). Block
encoded: a `block_map` names the blocked dimensions, and the last entries of
`dim_metadata` are the dense block sizes; the converter (TF 2.21) chooses
this only for FULLY_CONNECTED weights whose zeros come in 1x4 (float) or
1x16 (int8) blocks of TFLite's (out, in) layout, Keras (4, 1) / (16, 1),
and FULLY_CONNECTED reads them directly with its sparse kernels. Random
(no block map): the converter puts a DENSIFY op between the tensor and its
op, which then computes dense; the file is smaller, inference is not faster.
"""

from pathlib import Path

import numpy as np

from tfsparse._utils import require, text_table

_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "INT32": np.int32, "INT8": np.int8,
    "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16,
}


def _schema():
    return require("ai_edge_litert.schema_py_generated", "litert", "Reading .tflite files")


def tensor_rows(path):
    """One dict per constant tensor of the file's subgraphs (`path`: a
    .tflite path or its bytes).

    Keys: name, shape, dtype, quantized, scales (how many quantization
    scales: 1 per tensor, one per channel, 0 when not quantized), sparse, stored (number of values
    stored in the buffer), zero_fraction (zeros among the logical elements;
    for sparse tensors the elements not stored count as zeros), encoding
    ("dense", "block" or "random"), block (the block shape in the tensor's
    own dimensions, e.g. (1, 4) for a FULLY_CONNECTED weight (out, in), or
    None), consumers (sorted names of the ops that read the tensor:
    "FULLY_CONNECTED" for a block-encoded weight the op computes sparse,
    "DENSIFY" for a random-sparse one densified before its op).
    """
    schema = _schema()
    raw = bytes(path) if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytearray(raw), 0)
    except Exception as error:  # flatbuffers raises assorted errors on garbage
        raise ValueError(f"{path} is not a valid .tflite file ({type(error).__name__}: {error})") from error
    if not model.subgraphs:
        raise ValueError(f"{path} is not a valid .tflite file (no subgraphs)")
    type_names = {value: name for name, value in vars(schema.TensorType).items() if not name.startswith("_")}
    op_names = _op_names(schema, model)
    rows = []
    for subgraph in model.subgraphs:
        consumers = {}
        for operator in subgraph.operators or ():
            for index in operator.inputs if operator.inputs is not None else ():
                name = op_names[operator.opcodeIndex] if operator.opcodeIndex < len(op_names) else "unknown op"
                consumers.setdefault(int(index), set()).add(name)
        for index, tensor in enumerate(subgraph.tensors):
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
            scales = 0 if quantization is None or quantization.scale is None else len(quantization.scale)
            zeros = int(np.count_nonzero(values == 0)) + (elements - values.size if sparse else 0)
            block = _block_shape(tensor.sparsity, len(shape)) if sparse else None
            rows.append({
                "name": tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name),
                "shape": shape, "dtype": dtype_name.lower(), "quantized": scales > 0,
                "scales": scales,
                "sparse": sparse, "stored": int(values.size),
                "zero_fraction": zeros / elements if elements else 0.0,
                "encoding": "dense" if not sparse else "block" if block else "random", "block": block,
                "consumers": sorted(consumers.get(index, ())),
            })
    return rows


def _op_names(schema, model):
    """Opcode index -> builtin op name (or the custom op's code)."""
    builtin = {value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    names = []
    for code in model.operatorCodes or ():
        if code.customCode:
            names.append(code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode))
        else:  # small codes live in the deprecated int8 field (schema v3a)
            number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
            names.append(builtin.get(number, str(number)))
    return names


def _block_shape(sparsity, rank):
    """The block of a block-encoded tensor in its own dimensions, or None.

    The dims of `block_map` are blocked; their block sizes are the dense
    sizes of the `dim_metadata` entries after the first `rank` (one per
    original dimension, in traversal order).
    """
    block_map = [] if sparsity.blockMap is None else [int(d) for d in sparsity.blockMap]
    if not block_map or sparsity.dimMetadata is None or len(sparsity.dimMetadata) < rank + len(block_map):
        return None
    block = [1] * rank
    for i, dimension in enumerate(block_map):
        block[dimension] = int(sparsity.dimMetadata[rank + i].denseSize)
    return tuple(block)


def encoding_label(row):
    """"dense", or the sparse encoding and what reads it, e.g.
    "block 1x4 -> FULLY_CONNECTED" or "random -> DENSIFY"."""
    if row["encoding"] == "dense":
        return "dense"
    kind = "block " + "x".join(map(str, row["block"])) if row["encoding"] == "block" else "random"
    label = f"{kind} -> {', '.join(row['consumers']) or 'no op'}"
    lost = lost_positions(row)
    return label + "".join(f" (LOST: last {n} of {row['shape'][d]} on dim {d})" for d, n in lost.items())


def lost_positions(row):
    """{dimension: trailing positions no block covers} of a block-encoded
    tensor (empty when the blocks tile it). TF 2.21's converter encodes
    only whole blocks: a FULLY_CONNECTED weight (out, in) with `in` not a
    multiple of the block loses its last `in % block` inputs (their weights
    read as 0 in LiteRT), and the file no longer matches the Keras model."""
    if row["encoding"] != "block":
        return {}
    return {d: size % block for d, (size, block) in enumerate(zip(row["shape"], row["block"])) if size % block}


def _scales_label(scales):
    return "no" if not scales else "1 scale" if scales == 1 else f"{scales} scales"


def format_rows(rows, file_size=None):
    header = ("tensor", "shape", "dtype", "quantized", "sparse", "stored", "zeros", "encoding")
    lines = [(r["name"][-48:], "x".join(map(str, r["shape"])), r["dtype"], _scales_label(r["scales"]),
              "yes" if r["sparse"] else "no", str(r["stored"]), f"{r['zero_fraction']:.2%}", encoding_label(r))
             for r in rows]
    elements = sum(int(np.prod(r["shape"])) if r["shape"] else 1 for r in rows)
    zeros = sum(r["zero_fraction"] * (int(np.prod(r["shape"])) if r["shape"] else 1) for r in rows)
    total = ("total", "", "", f"{sum(r['quantized'] for r in rows)} tensors", f"{sum(r['sparse'] for r in rows)} tensors",
             str(sum(r["stored"] for r in rows)), f"{zeros / max(elements, 1):.2%}",
             f"{sum(r['encoding'] == 'block' for r in rows)} block, {sum(r['encoding'] == 'random' for r in rows)} random")
    text = text_table(header, lines, total, left=(0, 1, 2, 7))
    if file_size is not None:
        text += f"\nfile size: {file_size:,} bytes"
    return text
