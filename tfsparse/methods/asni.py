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

from tfsparse import masking, schedules
from tfsparse.methods.base import PruningMethod, check_integer
from tfsparse.surgery import masked_weights


class ASNI(PruningMethod):
    """ASNI-I as a Keras callback: prunes at the end of each epoch.

    Args:
        target_sparsity: the sparsity of the reported network (after the
            prune of epoch T-2); M is derived from it. Give this or
            `magnitude`.
        magnitude: M of the schedule, as a fraction (0.98 for the paper's 98).
        scale: k of the schedule, in epochs (the paper uses 2-5). By
            default chosen from the epochs: T / 10, at most 5 (the paper's
            choice at its budgets), and small enough that the target is
            reached at epoch T - 2 (`schedules.Sigmoid.default_scale`); the
            value used is `schedule.scale`.
        total_epochs: T; defaults to the `epochs` given to `fit`.
        min_increment: increments of the cumulative sparsity at or below
            this are skipped (0.001 = the original's 0.1 %).

    Example:

    ```python
    model = tfsparse.prune(model)
    model.compile(keras.optimizers.Adam(1.2e-4), loss, metrics=["accuracy"])
    model.fit(x, y, batch_size=60, epochs=50,
              callbacks=[tfsparse.methods.ASNI(magnitude=0.98, scale=5)])
    ```

    `history` holds, per epoch: the scheduled sparsity S(t), the sparsity
    reached after the epoch and whether it pruned.
    """

    update_at = "epoch_end"

    def __init__(self, target_sparsity=None, magnitude=None, scale=None, total_epochs=None,
                 min_increment=0.001):
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
        if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale > 0):
            raise ValueError(f"`scale` must be a number > 0 or None. Received: scale={scale!r}")
        if total_epochs is not None:
            check_integer(total_epochs, "total_epochs")
        self.target_sparsity = target_sparsity
        self.magnitude = magnitude
        self.scale = scale
        self.total_epochs = total_epochs
        self.min_increment = min_increment
        self.schedule = None
        self.history = []

    def on_train_begin(self, logs=None):
        total = self.total_epochs or self.params.get("epochs")
        if self.target_sparsity is not None:
            if total < 3:
                raise ValueError(f"ASNI with a target needs at least 3 epochs. Received: epochs={total}")
            self.schedule = schedules.Sigmoid.from_target(self.target_sparsity, total, self.scale)
        else:
            scale = schedules.Sigmoid.default_scale(total) if self.scale is None else self.scale
            self.schedule = schedules.Sigmoid(self.magnitude, total, scale)

    def prune_fraction(self, epoch):
        """p_t for the prune after `epoch`, or 0 when the increment is skipped."""
        previous = self.schedule(epoch - 1) if epoch > 0 else 0.0
        increment = self.schedule(epoch) - previous
        if increment <= self.min_increment:
            return 0.0
        return increment / (1.0 - previous)

    def update(self, epoch):
        """The prune after `epoch` (after its validation) and its record."""
        last = epoch >= self.schedule.total_epochs - 1
        fraction = 0.0 if last else self.prune_fraction(epoch)
        if fraction > 0:
            alive = sum(int(m.sum()) for m in self.masks().values())
            keep = alive - int(round(fraction * alive))
            masking.prune_once(self.model, 1.0 - keep / sum(w.size for w in self.masked_weights),
                               allocation="global")
        masks = self.masks()
        sparsity = 1.0 - sum(int(m.sum()) for m in masks.values()) / sum(m.size for m in masks.values())
        self.history.append({"epoch": epoch, "scheduled_sparsity": self.schedule(epoch), "sparsity": sparsity,
                             "pruned": fraction > 0})


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

    def to_bytes(self):
        """The initialization as a compressed .npz archive (bits packed), e.g.
        to write to a file; `from_bytes` reads it back."""
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
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data):
        """Reads what `to_bytes` returned; a ValueError when `data` is not such an archive."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
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
            raise ValueError(f"`data` is not an ASNI-II initialization ({type(error).__name__}: {error})") from error
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
    masking.assign_masks(list(handles.values()), init.masks)  # checks every mask's shape first
    for name in init.names:
        weight, mask = handles[name], init.masks[name]
        values = np.zeros(mask.shape, dtype=np.float32)
        values[mask] = np.where(init.positive[name], init.c_plus[name], init.c_minus[name])
        weight.kernel.assign(values)
        bias = getattr(weight.layer, "bias", None)
        if bias is not None:
            if init.biases and name in init.biases:
                b_plus, b_minus, signs = init.biases[name]
                bias.assign(np.where(signs > 0, b_plus, np.where(signs < 0, b_minus, 0.0)).astype(np.float32))
            else:
                bias.assign(np.zeros(bias.shape, dtype=np.float32))
    return fresh
