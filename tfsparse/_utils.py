"""Small helpers that several tfsparse modules share.

It imports nothing from tfsparse and only the standard library and numpy at
import, so any module can use it without an import cycle. What is here:
atomic file writes, aligned text tables, the batch-shape check of user
arrays and optional dependencies (`require`, `MissingDependencyError`).
"""

import importlib
import os
from pathlib import Path


class MissingDependencyError(ImportError):
    """A feature needs an optional dependency that is not installed."""


def require(module, extra, feature):
    """Imports and returns `module`, an optional dependency of `feature`.

    Args:
        module: the module to import, e.g. `"matplotlib.figure"`.
        extra: the tfsparse extra that installs it (`pip install 'tfsparse[extra]'`).
        feature: what needs it, for the message (e.g. "Plotting").

    Raises:
        MissingDependencyError: (an ImportError) naming the extra to install.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"{feature} needs {module.split('.')[0]}, which is not installed: "
            f"pip install 'tfsparse[{extra}]' ({type(error).__name__}: {error})"
        ) from error


def write_atomically(path, content):
    """Writes `content` (bytes) to `path` through a temporary file in the same
    directory, renamed into place: readers see the old file or the new one,
    never half of it, and an interrupted write leaves `path` as it was."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        temporary.write_bytes(content)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def text_table(header, rows, total=None, left=()):
    """An aligned text table: header, rule, one line per row, and, with
    `total`, a rule and the total line.

    `header` and `total` are tuples of strings, `rows` a list of them, all of
    the same length; the columns whose indices are in `left` are aligned
    left, the others right. Lines carry no trailing spaces.
    """
    ends = [] if total is None else [tuple(total)]
    lines = [tuple(header), *map(tuple, rows), *ends]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.ljust(width) if i in left else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    footer = [] if total is None else [rule, line(total)]
    return "\n".join([line(header), rule, *map(line, rows), *footer])


def check_batch_shape(values, shape, label, received=None):
    """Raises a ValueError unless `values` (a numpy array) is a batch of
    examples of `shape` (a `None` entry takes any size).

    `label` names the argument in the message (e.g. "`calibration_data`");
    `received` replaces its default "Received: an array of shape ...".
    """
    shape = tuple(shape)
    if values.ndim != len(shape) + 1 or any(e is not None and e != v for e, v in zip(shape, values.shape[1:])):
        received = received or f"Received: an array of shape {values.shape}"
        raise ValueError(f"{label} must be a batch of shape (N, {', '.join(map(str, shape))}). {received}")
