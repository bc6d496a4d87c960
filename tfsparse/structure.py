"""Which sparsity structure a kernel has: dense, whole blocks, N:M or random.

The structure decides what a runtime can do with the zeros. LiteRT computes
FULLY_CONNECTED sparse only with whole blocks of consecutive inputs (Keras
(4, 1) for float, (16, 1) for int8; `tfsparse.allocation.Block`), sparse
tensor cores need 2:4 (`tfsparse.allocation.NM`), and anything else is
"random": smaller files, dense compute. `tfsparse inspect model.keras`
shows `describe` of every weight matrix as its "structure" column.
"""

import numpy as np

from tfsparse import allocation

#: The blocks `describe` looks for, largest first ((16, 1) blocks are also (4, 1) blocks).
BLOCKS = ((16, 1), (4, 1))


def whole_blocks(kernel, block_size=(4, 1)):
    """True if every block of `block_size` along the kernel's last two axes
    (see `tfsparse.allocation.Block`; a partial last block counts as a
    block) is all zero or all nonzero, i.e. the zeros come in whole blocks."""
    nonzero = (np.asarray(kernel) != 0).astype(np.float32)
    # The average of a 0/1 block is exactly 0 or 1 only when the block is uniform.
    fraction = allocation.Block(block_size, "avg").pool(nonzero)
    return bool(np.all((fraction == 0) | (fraction == 1)))


def describe(kernel, blocks=BLOCKS, n=2, m=4):
    """The structure of one kernel, a short label.

    "dense" (no zeros), "zero" (all zeros), "block 16x1" / "block 4x1"
    (some zeros, all in whole blocks of that Keras shape; the first of
    `blocks` that fits), "2:4" (at most `n` nonzeros in every `m`
    consecutive inputs, `tfsparse.allocation.check_m_by_n`), else "random".
    Rows are the kernel's second-to-last (input) axis, as in
    `tfsparse.allocation.Block` and `NM`.
    """
    kernel = np.asarray(kernel)
    zeros = kernel.size - int(np.count_nonzero(kernel))
    if zeros == 0:
        return "dense"
    if zeros == kernel.size:
        return "zero"
    for block_size in blocks:
        if whole_blocks(kernel, block_size):
            return f"block {block_size[0]}x{block_size[1]}"
    if allocation.check_m_by_n(kernel, n, m):
        return f"{n}:{m}"
    return "random"


def model_structures(model, paths):
    """`describe` of the model's variables at `paths` (the "path" of the
    rows of `tfsparse.stats.layer_rows`), as a list; masked kernels are
    described by their effective (inference) value."""
    from tfsparse.surgery import masked_weights

    variables = {variable.path: variable for variable in model.weights}
    effective = {weight.kernel.path: weight for weight in masked_weights(model)}
    return [describe(effective[path].effective_value() if path in effective else np.asarray(variables[path]))
            for path in paths]


def add_column(table, header, values):
    """`table` (a `tfsparse.stats.format_table` text: header, rule, one line
    per row, rule, total; lines without trailing spaces) with one more column
    on the right; `values` has one entry per row, the total line gets none."""
    lines = table.split("\n")
    if len(lines) != len(values) + 4:
        raise ValueError(f"The table has {len(lines) - 4} rows, not {len(values)}. Received: {len(values)} values")
    width = max(len(header), *(len(value) for value in values))
    head, rule, *rows = lines
    body, rule_end, total = rows[:-2], rows[-2], rows[-1]
    return "\n".join([
        f"{head.ljust(len(rule))}  {header}",
        rule + "-" * (width + 2),
        *(f"{line.ljust(len(rule))}  {value}".rstrip() for line, value in zip(body, values)),
        rule_end + "-" * (width + 2),
        total,
    ])
