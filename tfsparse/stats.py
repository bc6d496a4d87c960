"""Per-layer sparsity tables for masked, stripped and plain models."""

import keras
import numpy as np

from tfsparse import layers as masked_layers
from tfsparse.surgery import _all_layers



def _kernel_values(layer):
    """(attr, effective kernel as numpy) for each prunable kernel of a layer."""
    if masked_layers.is_masked(layer):
        return [(w.attr, w.effective_value()) for w in layer.masked_weights]
    masked_class = masked_layers.MASKED_CLASSES.get(type(layer))
    if masked_class is None or not layer.built:
        return []
    return [
        (attr, keras.ops.convert_to_numpy(getattr(layer, attr)))
        for attr in masked_class.masked_attrs
    ]


def layer_rows(model):
    """One dict per prunable kernel: name, type, shape, params, nonzeros, sparsity."""
    rows = []
    for layer in _all_layers(model):
        for attr, value in _kernel_values(layer):
            params = int(value.size)
            nonzeros = int(np.count_nonzero(value))
            rows.append(
                {
                    "name": f"{layer.name}/{attr}",
                    "type": type(layer).__name__,
                    "shape": tuple(int(d) for d in value.shape),
                    "params": params,
                    "nonzeros": nonzeros,
                    "sparsity": 1.0 - nonzeros / params if params else 0.0,
                }
            )
    return rows


def _totals(rows):
    params = sum(r["params"] for r in rows)
    nonzeros = sum(r["nonzeros"] for r in rows)
    return {"params": params, "nonzeros": nonzeros, "sparsity": 1.0 - nonzeros / params if params else 0.0}


def sparsity(model):
    """Overall sparsity (zero fraction) of the model's prunable kernels."""
    return _totals(layer_rows(model))["sparsity"]


def format_table(rows):
    """The rows of `layer_rows` as an aligned text table with totals."""
    header = ("layer", "type", "kernel shape", "params", "nonzeros", "sparsity")
    lines = [
        (r["name"], r["type"], "x".join(map(str, r["shape"])), str(r["params"]),
         str(r["nonzeros"]), f"{r['sparsity']:.2%}")
        for r in rows
    ]
    totals = _totals(rows)
    lines.append(("total", "", "", str(totals["params"]), str(totals["nonzeros"]), f"{totals['sparsity']:.2%}"))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    def fmt(cells):
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
        )
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def summary(model, print_fn=print):
    """Prints and returns the per-layer sparsity table of a model.

    Works for masked models (effective kernels), stripped and plain models
    (zeros in the kernels of prunable layer types).

    Returns:
        dict with "layers" (the rows of `layer_rows`) and "total"
        (params, nonzeros, sparsity).
    """
    rows = layer_rows(model)
    if print_fn is not None:
        print_fn(format_table(rows))
    return {"layers": rows, "total": _totals(rows)}
