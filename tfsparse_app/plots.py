"""Plots of runs and of the methods' histories.

Each function takes data (a `fit` history, a method's `history`, arrays)
and returns a `matplotlib.figure.Figure`, saved to `path` when one is given.
The figures are built from `matplotlib.figure.Figure`, not pyplot: no
backend is chosen or switched (a notebook keeps its inline plots, a server
without a display needs nothing), and pyplot does not keep them open. A
returned figure shows in a notebook.
"""

import keras
import numpy as np

import tfsparse
from tfsparse._utils import require

#: Where a plot is saved: pixels per inch of the figures' sizes.
DPI = 100


def new_figure(width, height, rows=1, columns=1, **subplots):
    """A figure of `width` x `height` inches and its axes
    (`Figure.subplots(rows, columns, **subplots)`)."""
    figure = require("matplotlib.figure", "plot", "Plotting").Figure(figsize=(width, height))
    return figure, figure.subplots(rows, columns, **subplots)


def finish_figure(figure, path=None):
    """Lays out `figure`, saves it to `path` (a PNG, unless the suffix says
    otherwise) when one is given, and returns it."""
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=DPI)
    return figure


def plot_training(history, path=None):
    """Training and validation accuracy and the sparsity per epoch (a `fit`
    history with the "sparsity" of `tfsparse.callbacks.SparsityLogger`)."""
    epochs = range(1, len(history["loss"]) + 1)
    fig, accuracy_axis = new_figure(6, 3.5)
    for key, style in (("accuracy", "-"), ("val_accuracy", "--")):
        if key in history:
            accuracy_axis.plot(epochs, history[key], style, color="tab:blue", label=key)
    accuracy_axis.set_xlabel("epoch")
    accuracy_axis.set_ylabel("accuracy", color="tab:blue")
    sparsity_axis = accuracy_axis.twinx()
    sparsity_axis.plot(epochs, history.get("sparsity", [0] * len(epochs)), color="tab:red", label="sparsity")
    sparsity_axis.set_ylabel("sparsity", color="tab:red")
    sparsity_axis.set_ylim(0, 1)
    accuracy_axis.legend(loc="lower left")
    return finish_figure(fig, path)


def plot_layers(rows, path=None):
    """Sparsity per weight matrix (the rows of `tfsparse.stats.layer_rows`)."""
    fig, axis = new_figure(6, 0.4 * len(rows) + 1.2)
    names = [r["name"] for r in rows]
    axis.barh(names, [r["sparsity"] for r in rows], color="tab:red")
    axis.set_xlim(0, 1)
    axis.set_xlabel("sparsity")
    axis.invert_yaxis()
    for y, row in enumerate(rows):
        axis.text(min(row["sparsity"], 0.85) + 0.01, y, f"{row['nonzeros']}/{row['params']}", va="center", fontsize=8)
    return finish_figure(fig, path)


def plot_asni_schedule(schedule, history, path=None):
    """The scheduled S(t) and the sparsity reached, per epoch: a trained
    `tfsparse.methods.ASNI`'s `schedule` and `history`."""
    epochs = np.arange(schedule.total_epochs)
    fig, axis = new_figure(5.5, 3.2)
    axis.plot(epochs, [schedule(e) for e in epochs], label="S(t) scheduled")
    if history:
        axis.plot([h["epoch"] for h in history], [h["sparsity"] for h in history], "o",
                  markersize=3, label="reached")
    axis.set_xlabel("epoch")
    axis.set_ylabel("sparsity")
    axis.set_ylim(0, 1)
    axis.legend()
    return finish_figure(fig, path)


def plot_asni2_centroids(model, init, path=None):
    """Per layer: histogram of the surviving weights of the trained ASNI-I
    `model`, with c_plus and c_minus of its ASNI-II `init`
    (`tfsparse.methods.amenable_initialization(model)`) marked."""
    handles = {w.name: w for w in tfsparse.masked_weights(model)}
    fig, axes = new_figure(3.2 * len(init.names), 2.8, 1, len(init.names), squeeze=False)
    for axis, name in zip(axes[0], init.names):
        survivors = keras.ops.convert_to_numpy(handles[name].kernel)[init.masks[name]]
        axis.hist(survivors, bins=60, color="gray")
        for value, color in ((init.c_plus[name], "tab:red"), (init.c_minus[name], "tab:blue")):
            axis.axvline(value, color=color, linewidth=1.5)
        axis.set_title(f"{name}\nc+={init.c_plus[name]:.3f} c-={init.c_minus[name]:.3f}", fontsize=8)
    return finish_figure(fig, path)


def plot_dst_coverage(history, path=None, title=""):
    """Coverage (fraction of weights ever active) and the two grow-score
    terms over steps (a `tfsparse.methods.DynamicSparseTraining`'s `history`)."""
    steps = [h["step"] for h in history]
    figure, (left, right) = new_figure(10, 3.5, 1, 2)
    left.plot(steps, [h["coverage"] for h in history])
    left.set(xlabel="step", ylabel="coverage (ever active)", title=f"{title} coverage")
    right.plot(steps, [h["exploitation"] for h in history], label="|grad| (exploitation)")
    if any(h["exploration"] for h in history):
        right.plot(steps, [h["exploration"] for h in history], label="c*sqrt(ln t/(N+eps)) (exploration)")
    right.set(xlabel="step", ylabel="mean over grown weights", yscale="log", title="grow-score terms")
    right.legend()
    return finish_figure(figure, path)


def plot_frozen_history(history, path=None, title=""):
    """Per-layer sparsity of the deterministic mask and learned scales, per
    epoch (the `history` of ASLP, Supermask or EdgePopup)."""
    epochs = [h["epoch"] + 1 for h in history]
    names = list(history[0]["layers"])
    has_scales = history[0]["layers"][names[0]]["scale"] is not None
    figure, axes = new_figure(10 if has_scales else 5.5, 3.5, 1, 2 if has_scales else 1, squeeze=False)
    for name in names:
        axes[0, 0].plot(epochs, [h["layers"][name]["sparsity"] for h in history], marker=".", label=name)
    axes[0, 0].plot(epochs, [h["sparsity"] for h in history], color="black", linewidth=2, label="all")
    axes[0, 0].set(xlabel="epoch", ylabel="sparsity of the final mask", title=f"{title}: sparsity per layer")
    axes[0, 0].legend(fontsize=7)
    if has_scales:
        for name in names:
            axes[0, 1].plot(epochs, [h["layers"][name]["scale"] for h in history], marker=".", label=name)
        axes[0, 1].set(xlabel="epoch", ylabel="learned scale", title="Smart Rescale per layer")
        axes[0, 1].legend(fontsize=7)
    return finish_figure(figure, path)


def plot_optg_history(history, path=None):
    """Sparsity and mask learning rate per epoch; fraction of mask flips per
    epoch (a `tfsparse.methods.OptG`'s `history`)."""
    epochs = [h["epoch"] for h in history]
    figure, (left, right) = new_figure(10, 3.5, 1, 2)
    left.plot(epochs, [h["sparsity"] for h in history], marker="o", label="sparsity s(e)")
    left.set(xlabel="epoch", ylabel="sparsity", title="OptG schedules")
    rate_axis = left.twinx()
    rate_axis.plot(epochs, [h["mask_learning_rate"] for h in history], color="tab:orange", label="mask lr")
    rate_axis.set_ylabel("mask learning rate")
    left.legend(loc="upper left")
    rate_axis.legend(loc="lower right")
    right.bar(epochs, [h["flip_fraction"] for h in history])
    right.set(xlabel="epoch", ylabel="fraction of mask entries flipped", title="mask flips at each epoch start")
    return finish_figure(figure, path)


def plot_evolution_history(history, path=None):
    """Layer sparsity and best divergence per cycle (a
    `tfsparse.methods.DirectedEvolution`'s `history`)."""
    figure, (left, right) = new_figure(10, 3.5, 1, 2)
    for name in dict.fromkeys(h["layer"] for h in history):
        cycles = [h for h in history if h["layer"] == name]
        left.plot([h["cycle"] for h in cycles], [h["sparsity"] for h in cycles], label=name)
        right.plot([h["cycle"] for h in cycles], [h["divergence"] for h in cycles], label=name)
    left.set(xlabel="cycle", ylabel="layer sparsity", title="directed evolution")
    right.set(xlabel="cycle", ylabel="best KL(teacher || student)", yscale="log", title="divergence")
    left.legend()
    return finish_figure(figure, path)
