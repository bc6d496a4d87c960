"""Per-layer sparsity tables for masked, stripped and plain models."""

import collections

import keras
import numpy as np

from tfsparse import layers as masked_layers
from tfsparse._utils import text_table
from tfsparse.surgery import _weight_matrices, all_layers, coverage


def _values(layer):
    """id(variable) -> value as numpy for a layer's weight matrices, with
    masked kernels replaced by their effective (inference) value."""
    values = {id(v): v for v in _weight_matrices(layer)}
    if masked_layers.is_masked(layer):
        for weight in layer.masked_weights:
            values[id(weight.kernel)] = weight.effective_value()
    return {key: keras.ops.convert_to_numpy(value) for key, value in values.items()}


def layer_rows(model):
    """One dict per weight matrix (rank >= 2, biases aside) of the model:
    name, type, shape, params, nonzeros, sparsity, masked, reason (why it
    is left dense, or None)."""
    reasons = {row["weight"]: row for row in coverage(model)}
    rows = []
    for layer in all_layers(model):
        values = _values(layer)
        for variable in _weight_matrices(layer):
            value = values[id(variable)]
            params = int(value.size)
            nonzeros = int(np.count_nonzero(value))
            info = reasons.get(variable.path, {})
            rows.append(
                {
                    "name": f"{layer.name}/{_attribute_name(layer, variable)}",
                    "path": variable.path,
                    "type": _class_name(layer),
                    "shape": tuple(int(d) for d in value.shape),
                    "params": params,
                    "nonzeros": nonzeros,
                    "sparsity": 1.0 - nonzeros / params if params else 0.0,
                    "masked": masked_layers.is_masked(layer) and info.get("masked", True),
                    "reason": info.get("reason"),
                }
            )
    counts = collections.Counter(row["name"] for row in rows)
    for row in rows:
        if counts[row["name"]] > 1:  # the `query` of two attention blocks
            row["name"] = row["path"]
    return rows


def _class_name(layer):
    return (masked_layers.base_class(layer) if masked_layers.is_masked(layer) else type(layer)).__name__


def _attribute_name(layer, variable):
    for attr in masked_layers.prunable_attributes(layer):
        slot = "_" + attr if ("_" + attr) in layer.__dict__ else attr
        if layer.__dict__.get(slot) is variable:
            return attr
    return variable.name


def _totals(rows):
    params = sum(r["params"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    return {"params": params, "nonzeros": nonzeros, "sparsity": 1.0 - nonzeros / params if params else 0.0}


def sparsity(model):
    """Overall sparsity: the zero fraction of ALL the model's weight
    matrices (every variable of rank >= 2 but biases: kernels, embeddings,
    recurrent kernels, position embeddings...), pruned or not, so a layer
    left dense lowers it. `summary` shows which are masked."""
    return _totals(layer_rows(model))["sparsity"]


def format_table(rows):
    """The rows of `layer_rows` as an aligned text table with totals; for a
    masked model, a last column says why a weight is left dense."""
    notes = any(r["masked"] for r in rows) and not all(r["masked"] for r in rows)
    header = ("layer", "type", "kernel shape", "params", "nonzeros", "sparsity") + (("left dense because",) if notes else ())
    lines = [
        (r["name"], r["type"], "x".join(map(str, r["shape"])), str(r["params"]),
         str(r["nonzeros"]), f"{r['sparsity']:.2%}")
        + (("" if r["masked"] else r["reason"] or "not masked",) if notes else ())
        for r in rows
    ]
    totals = _totals(rows)
    total = ("total", "", "", str(totals["params"]), str(totals["nonzeros"]), f"{totals['sparsity']:.2%}") + (("",) if notes else ())
    return text_table(header, lines, total, left=(0, 1, 2, 6))


def summary(model, print_fn=print):
    """Prints and returns the per-layer sparsity table of a model.

    Lists every weight matrix: for masked models the effective kernels and,
    for those left dense, why (frozen, excluded, unsupported); for stripped
    and plain models the zeros in their weights.

    Returns:
        dict with "layers" (the rows of `layer_rows`) and "total"
        (params, nonzeros, sparsity).
    """
    rows = layer_rows(model)
    if print_fn is not None:
        print_fn(format_table(rows))
    return {"layers": rows, "total": _totals(rows)}
