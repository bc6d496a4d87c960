"""ASNI: Amenable Sparse Network Investigator (Damadi, Nouri, Pirsiavash, arXiv:2202.09284).

ASNI-I (`ASNI`) prunes during one training run: after epoch t the cumulative
target sparsity is S(t) = M * sigmoid((t - T/2) / k), reached by global
magnitude pruning of a fraction of the surviving weights. ASNI-II
(`amenable_initialization` + `amenable_model`) turns the trained sparse
network into an initialization of two numbers per layer plus the mask and
the signs, and retrains from it.

Details follow the authors' code as described in the method notes:
- the fraction pruned after epoch t is p_t = (S(t) - S(t-1)) / (1 - S(t-1)) of
  the weights still alive, S(-1) = 0;
- increments S(t) - S(t-1) of at most `min_increment` (0.1 percentage point)
  are skipped, and, as in the original, not made up later;
- the reported network is the one after the prune of epoch T-2: the last
  epoch trains at S(T-2) and ends without a prune. With `target_sparsity`,
  M is derived so that S(T-2) equals the target.
"""

import io
from dataclasses import dataclass

import keras
import numpy as np

from tfsparse import allocation, schedules
from tfsparse._utils import finish_figure, new_figure, write_atomically
from tfsparse.methods.base import PruningMethod, check_integer, register
from tfsparse.surgery import masked_weights


@register(
    "asni",
    "ASNI-I: sigmoid-scheduled global magnitude pruning in one training run (per epoch).",
    "Damadi, Nouri & Pirsiavash, 'ASNI', arXiv:2202.09284 (2022)",
)
class ASNI(PruningMethod):
    """ASNI-I as a Keras callback: prunes at the end of each epoch.

    Args:
        target_sparsity: the sparsity of the reported network (after the
            prune of epoch T-2); M is derived from it. Give this or
            `magnitude`.
        magnitude: M of the schedule, as a fraction (0.98 for the paper's 98).
        scale: k of the schedule, in epochs (the paper uses 2-5).
        total_epochs: T; defaults to the `epochs` given to `fit`.
        min_increment: increments of the cumulative sparsity at or below
            this are skipped (0.001 = the original's 0.1 %).
        retrain_amenable: for `tfsparse run`: after training, run ASNI-II
            (build the initialization, retrain from it, report both).

    Example:

    ```python
    model = tfsparse.prune(tfsparse.models.lenet_300_100())
    model.compile(keras.optimizers.Adam(1.2e-4), loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=60, epochs=50,
              callbacks=[tfsparse.methods.ASNI(magnitude=0.98, scale=5)])
    ```

    `history` holds, per epoch: the scheduled sparsity S(t), the sparsity
    reached after the epoch and whether it pruned; `plot_schedule` draws
    them.
    """

    cli_options = {
        "scale": dict(type=float, default=5.0, help="ASNI k: sigmoid scale in epochs"),
        "magnitude": dict(type=float, default=None,
                          help="ASNI M as a fraction; overrides --sparsity (the schedule's asymptote)"),
        "asni2": dict(action="store_true", default=False,
                      help="then ASNI-II: retrain from the 2-numbers-per-layer initialization"),
    }

    @classmethod
    def from_cli(cls, target_sparsity, epochs, train_data, **options):
        common = dict(scale=options.get("scale", 5.0), retrain_amenable=options.get("asni2", False))
        if options.get("magnitude") is not None:
            return cls(magnitude=options["magnitude"], **common)
        return cls(target_sparsity, **common)

    def __init__(self, target_sparsity=None, magnitude=None, scale=5.0, total_epochs=None,
                 min_increment=0.001, retrain_amenable=False):
        super().__init__()
        if (target_sparsity is None) == (magnitude is None):
            raise ValueError(
                "Give exactly one of `target_sparsity` and `magnitude`. Received: "
                f"target_sparsity={target_sparsity}, magnitude={magnitude}"
            )
        if target_sparsity is not None:
            target_sparsity = schedules.check_sparsity(target_sparsity, "target_sparsity")
        if magnitude is not None:
            magnitude = schedules.check_sparsity(magnitude, "magnitude")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0:
            raise ValueError(f"`scale` must be a number > 0. Received: scale={scale!r}")
        if total_epochs is not None:
            check_integer(total_epochs, "total_epochs")
        self.target_sparsity = target_sparsity
        self.magnitude = magnitude
        self.scale = scale
        self.total_epochs = total_epochs
        self.min_increment = min_increment
        self.retrain_amenable = retrain_amenable
        self.schedule = None
        self.history = []

    def on_train_begin(self, logs=None):
        total = self.total_epochs or self.params.get("epochs")
        if self.target_sparsity is not None:
            if total < 3:
                raise ValueError(f"ASNI with a target needs at least 3 epochs. Received: epochs={total}")
            self.schedule = schedules.Sigmoid.from_target(self.target_sparsity, total, self.scale)
        else:
            self.schedule = schedules.Sigmoid(self.magnitude, total, self.scale)

    def prune_fraction(self, epoch):
        """p_t for the prune after `epoch`, or 0 when the increment is skipped."""
        previous = self.schedule(epoch - 1) if epoch > 0 else 0.0
        increment = self.schedule(epoch) - previous
        if increment <= self.min_increment:
            return 0.0
        return increment / (1.0 - previous)

    def on_epoch_end(self, epoch, logs=None):
        last = epoch >= self.schedule.total_epochs - 1
        fraction = 0.0 if last else self.prune_fraction(epoch)
        if fraction > 0:
            scores = self.magnitude_scores()
            total = sum(v.size for v in scores.values())
            alive = sum(int(m.sum()) for m in self.masks().values())
            keep = alive - int(round(fraction * alive))
            self.assign_masks(allocation.Global().masks(scores, 1.0 - keep / total))
        masks = self.masks()
        sparsity = 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        self.history.append({"epoch": epoch, "scheduled_sparsity": self.schedule(epoch), "sparsity": sparsity,
                             "pruned": fraction > 0})

    def finish(self, model, directory, retrain, evaluate):
        """Schedule plot; with `retrain_amenable`, the whole ASNI-II phase."""
        plot_schedule(self, directory / "asni_schedule.png")
        if not self.retrain_amenable:
            return {}
        init = amenable_initialization(model)
        init.save(directory / "asni2_init.npz")
        plot_centroid_histograms(model, init, directory / "asni2_centroids.png")
        metrics = retrain(amenable_model(model, init))
        return {
            "asni2_test_accuracy": metrics["test_accuracy"],
            "asni2_init_bytes": init.size_bytes(),
            "dense_init_bytes": init.dense_size_bytes(),
        }


@dataclass
class AmenableInit:
    """ASNI-II's initialization: masks, signs of survivors and 2 numbers per layer.

    Attributes:
        names: masked weight names, in model order.
        masks: name -> bool array (kernel shape).
        positive: name -> bool array over the survivors (in C order): True
            where the trained weight was > 0.
        c_plus, c_minus: name -> float, the means of the surviving positive
            and negative trained weights (0.0 when a layer has none).
        biases: optional name -> (b_plus, b_minus, sign array in {-1, 0, 1})
            for quantized biases.
    """

    names: list
    masks: dict
    positive: dict
    c_plus: dict
    c_minus: dict
    biases: dict = None

    def size_bytes(self):
        """Bytes to store it: mask bits, sign bits of survivors, 2 float32 per layer."""
        size = 0
        for name in self.names:
            size += len(np.packbits(self.masks[name])) + len(np.packbits(self.positive[name])) + 8
        for b_plus, b_minus, signs in (self.biases or {}).values():
            size += 8 + len(np.packbits(signs != 0)) + len(np.packbits(signs > 0))
        return size

    def dense_size_bytes(self):
        """Bytes of the same kernels (and biases, if included) as dense float32."""
        kernels = sum(m.size for m in self.masks.values())
        biases = sum(len(signs) for _, _, signs in (self.biases or {}).values())
        return 4 * (kernels + biases)

    def save(self, path):
        """Writes a compressed-bits .npz (atomically: temporary file, then rename)."""
        arrays = {"names": np.array(self.names)}
        for i, name in enumerate(self.names):
            arrays[f"shape_{i}"] = np.array(self.masks[name].shape, dtype=np.int64)
            arrays[f"mask_{i}"] = np.packbits(self.masks[name].reshape(-1))
            arrays[f"positive_{i}"] = np.packbits(self.positive[name])
            arrays[f"c_{i}"] = np.array([self.c_plus[name], self.c_minus[name]], dtype=np.float32)
        for i, name in enumerate(self.names):
            if self.biases and name in self.biases:
                b_plus, b_minus, signs = self.biases[name]
                arrays[f"bias_c_{i}"] = np.array([b_plus, b_minus], dtype=np.float32)
                arrays[f"bias_signs_{i}"] = signs.astype(np.int8)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_atomically(path, buffer.getvalue())

    @classmethod
    def load(cls, path):
        try:
            with np.load(path, allow_pickle=False) as archive:
                names = [str(n) for n in archive["names"]]
                masks, positive, c_plus, c_minus, biases = {}, {}, {}, {}, {}
                for i, name in enumerate(names):
                    shape = tuple(int(d) for d in archive[f"shape_{i}"])
                    size = int(np.prod(shape))
                    mask = np.unpackbits(archive[f"mask_{i}"], count=size).astype(bool)
                    masks[name] = mask.reshape(shape)
                    positive[name] = np.unpackbits(archive[f"positive_{i}"], count=int(mask.sum())).astype(bool)
                    c_plus[name], c_minus[name] = (float(v) for v in archive[f"c_{i}"])
                    if f"bias_c_{i}" in archive:
                        b_plus, b_minus = (float(v) for v in archive[f"bias_c_{i}"])
                        biases[name] = (b_plus, b_minus, archive[f"bias_signs_{i}"].astype(np.int8))
        except Exception as error:  # zip, npz and key errors alike
            raise ValueError(f"{path} is not a valid ASNI-II initialization file ({type(error).__name__}: {error})") from error
        return cls(names, masks, positive, c_plus, c_minus, biases or None)


def amenable_initialization(model, quantize_biases=False):
    """ASNI-II: the 2-numbers-per-layer initialization of a trained ASNI-I model.

    c_plus / c_minus of a layer are the means of its surviving trained
    weights that are > 0 / < 0. With `quantize_biases`, each layer's bias is
    summarized the same way (mean of positive and of negative biases).
    """
    handles = masked_weights(model)
    if not handles:
        raise ValueError(f"`model` ({model.name}) has no masked layers: pass the trained ASNI-I model.")
    masks, positive, c_plus, c_minus, biases = {}, {}, {}, {}, {}
    for weight in handles:
        mask = keras.ops.convert_to_numpy(weight.mask) > 0.5
        survivors = keras.ops.convert_to_numpy(weight.kernel)[mask]
        masks[weight.name] = mask
        positive[weight.name] = survivors > 0
        c_plus[weight.name] = _mean_or_zero(survivors[survivors > 0])
        c_minus[weight.name] = _mean_or_zero(survivors[survivors < 0])
        bias = getattr(weight.layer, "bias", None)
        if quantize_biases and bias is not None:
            values = keras.ops.convert_to_numpy(bias)
            biases[weight.name] = (_mean_or_zero(values[values > 0]), _mean_or_zero(values[values < 0]),
                                   np.sign(values).astype(np.int8))
    return AmenableInit([w.name for w in handles], masks, positive, c_plus, c_minus, biases or None)


def _mean_or_zero(values):
    return float(values.mean()) if values.size else 0.0


def amenable_model(model, init):
    """A fresh copy of `model`'s architecture initialized from `init`.

    Surviving weights become c_plus or c_minus by their trained sign, pruned
    ones 0 with the mask kept; biases 0 (or quantized, if `init` has them);
    every other layer gets its fresh initializers (BatchNorm: gamma 1,
    beta 0). Compile it with a new optimizer and train it without a pruning
    method: the masks stay fixed.
    """
    fresh = keras.models.clone_model(model)
    handles = {w.name: w for w in masked_weights(fresh)}
    if sorted(handles) != sorted(init.names):
        raise ValueError(
            f"`init` is for the weights {sorted(init.names)} but the model has {sorted(handles)}."
        )
    for name in init.names:
        weight, mask = handles[name], init.masks[name]
        if mask.shape != weight.shape:
            raise ValueError(f"`init` mask for '{name}' has shape {mask.shape}, the model's kernel {weight.shape}.")
        values = np.zeros(mask.shape, dtype=np.float32)
        values[mask] = np.where(init.positive[name], init.c_plus[name], init.c_minus[name])
        weight.kernel.assign(values)
        weight.mask.assign(mask.astype(np.float32))
        bias = getattr(weight.layer, "bias", None)
        if bias is not None:
            if init.biases and name in init.biases:
                b_plus, b_minus, signs = init.biases[name]
                bias.assign(np.where(signs > 0, b_plus, np.where(signs < 0, b_minus, 0.0)).astype(np.float32))
            else:
                bias.assign(np.zeros(bias.shape, dtype=np.float32))
    return fresh


def plot_schedule(method, path=None):
    """The scheduled S(t) and the sparsity actually reached, per epoch, of a
    trained `ASNI`; returns the figure, saved to `path` when given."""
    epochs = np.arange(method.schedule.total_epochs)
    fig, axis = new_figure(5.5, 3.2)
    axis.plot(epochs, [method.schedule(e) for e in epochs], label="S(t) scheduled")
    if method.history:
        axis.plot([h["epoch"] for h in method.history], [h["sparsity"] for h in method.history], "o",
                  markersize=3, label="reached")
    axis.set_xlabel("epoch")
    axis.set_ylabel("sparsity")
    axis.set_ylim(0, 1)
    axis.legend()
    return finish_figure(fig, path)


def plot_centroid_histograms(model, init, path=None):
    """Per layer: histogram of the surviving ASNI-I weights, c_plus and
    c_minus marked; returns the figure, saved to `path` when given."""
    handles = {w.name: w for w in masked_weights(model)}
    fig, axes = new_figure(3.2 * len(init.names), 2.8, 1, len(init.names), squeeze=False)
    for axis, name in zip(axes[0], init.names):
        survivors = keras.ops.convert_to_numpy(handles[name].kernel)[init.masks[name]]
        axis.hist(survivors, bins=60, color="gray")
        for value, color in ((init.c_plus[name], "tab:red"), (init.c_minus[name], "tab:blue")):
            axis.axvline(value, color=color, linewidth=1.5)
        axis.set_title(f"{name}\nc+={init.c_plus[name]:.3f} c-={init.c_minus[name]:.3f}", fontsize=8)
    return finish_figure(fig, path)
