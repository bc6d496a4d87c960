"""Small helpers that several tfsparse modules share.

It imports nothing from tfsparse and only the standard library and numpy at
import, so any module can use it without an import cycle. What is here:
atomic file writes, aligned text tables, the batch-shape check of user
arrays, optional dependencies (`require`, `MissingDependencyError`) and
matplotlib figures that leave pyplot and its backend alone.
"""

import importlib
import os
from pathlib import Path

#: Where a plot is saved: pixels per inch of the figures' sizes.
DPI = 100


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


def text_table(header, rows, total, left):
    """An aligned text table: header, rule, one line per row, rule, total.

    `header` and `total` are tuples of strings, `rows` a list of them, all of
    the same length; the columns whose indices are in `left` are aligned
    left, the others right. Lines carry no trailing spaces.
    """
    lines = [tuple(header), *map(tuple, rows), tuple(total)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]

    def line(cells):
        return "  ".join(cell.ljust(width) if i in left else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(header), rule, *map(line, rows), rule, line(total)])


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


def new_figure(width, height, rows=1, columns=1, **subplots):
    """A matplotlib figure of `width` x `height` inches and its axes
    (`Figure.subplots(rows, columns, **subplots)`).

    The figure is built from `matplotlib.figure.Figure`, not pyplot: no
    backend is chosen or switched (a notebook keeps its inline plots, a
    server without a display needs nothing), and pyplot does not keep it
    open. It shows in a notebook when returned; `finish_figure` saves it.
    """
    figure = require("matplotlib.figure", "plot", "Plotting").Figure(figsize=(width, height))
    return figure, figure.subplots(rows, columns, **subplots)


def finish_figure(figure, path=None):
    """Lays out `figure`, saves it to `path` (a PNG, unless the suffix says
    otherwise) when one is given, and returns it."""
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=DPI)
    return figure
