"""Masks, and the kernels and optimizer slots that must agree with them.

A masked weight (`tfsparse.layers.MaskedWeight`) is a raw kernel and a 0/1
mask; the layer computes with their product, so a pruned weight's gradient
is zero. It stays exactly zero through training when its raw kernel entry
and its optimizer slots (momentum, Adam moments) are zero as well: no slot
moves it, and decoupled weight decay leaves a zero at zero. `assign_masks`
sets masks that way; `prune_once` chooses them by magnitude.

`optimizer_slots` is the one place that reads Keras optimizers' private
state.
"""

import numbers

import keras
import numpy as np

from tfsparse import allocation as allocation_lib
from tfsparse.surgery import masked_weights

#: The smallest `epsilon_1` with which Keras's Adafactor keeps pruned weights
#: at zero. Its second moment of a kernel entry is factored, row statistic x
#: column statistic / mean row statistic, and a statistic that sees only zero
#: gradients (a row or column pruned whole, a dead input or unit) is
#: `epsilon_1`. Where both are, the moment is about `epsilon_1 ** 2 / mean`:
#: with the default 1e-30 it flushes to 0 in float32, the update 0 / sqrt(0)
#: is NaN, and the NaN spreads through the update's RMS clipping to the
#: whole kernel. 1e-15 keeps the moment a normal float32 while the mean
#: squared gradient is below 1e7.
ADAFACTOR_MIN_EPSILON_1 = 1e-15


def masks(weights):
    """name -> current mask (numpy bool) of each of `weights`."""
    return {w.name: keras.ops.convert_to_numpy(w.mask) > 0.5 for w in weights}


def magnitude_scores(weights):
    """name -> |kernel| for surviving weights, -1 for pruned ones.

    Pruned weights rank below every survivor (even a survivor that is
    exactly 0), so a magnitude update never brings one back while the
    sparsity does not decrease.
    """
    return {
        w.name: np.where(alive, np.abs(keras.ops.convert_to_numpy(w.kernel)), np.float32(-1.0))
        for w, alive in zip(weights, masks(weights).values())
    }


def assign_masks(weights, new_masks, optimizer=None, zero_pruned=True, reset=None):
    """Sets the masks of `weights` and keeps kernels and optimizer slots consistent.

    Everything is checked before any variable changes.

    Args:
        weights: the `tfsparse.layers.MaskedWeight`s to set (e.g.
            `tfsparse.masked_weights(model)`).
        new_masks: name -> bool array of the weight's shape, for every one
            of `weights` (other names are ignored).
        optimizer: the model's optimizer, whose slots of the kernels are
            zeroed with them; None before `compile`.
        zero_pruned: set the pruned kernel entries and their optimizer slots
            (momentum, Adam moments) to zero, so that a pruned weight stays
            exactly zero through later updates. Methods whose pruned weights
            may come back with their value (OptG) pass False.
        reset: optional name -> bool array of positions whose kernel entries
            and optimizer slots are set to zero as well (weights that regrow
            from zero with fresh slots, as in RigL).

    Slots of another shape than the kernel (Adafactor's factored row and
    column moments) hold statistics shared by whole rows and columns and are
    left as they are.
    """
    checked = {w.name: _checked_mask(new_masks, w, "new_masks") for w in weights}
    resets = {w.name: _checked_mask(reset, w, "reset") for w in weights if reset is not None and w.name in reset}
    unknown = sorted(set(reset or ()) - set(checked))
    if unknown:
        raise ValueError(f"`reset` names {unknown}, which are not among the masked weights {sorted(checked)}.")
    check_optimizer(optimizer)
    slots = optimizer_slots(optimizer)
    for weight in weights:
        new = checked[weight.name]
        weight.mask.assign(new.astype("float32"))
        keep = new if zero_pruned else np.ones_like(new)
        if weight.name in resets:
            keep = keep & ~resets[weight.name]
        if not keep.all():
            # Multiplying by the kept positions zeroes the others in place,
            # on the backend; already-zero entries stay zero.
            factor = keras.ops.convert_to_tensor(keep.astype("float32"))
            for variable in (weight.kernel, *slots.get(id(weight.kernel), ())):
                variable.assign(variable * keras.ops.cast(factor, variable.dtype))


def _checked_mask(arrays, weight, argument):
    if weight.name not in arrays:
        raise ValueError(f"`{argument}` has no mask for '{weight.name}'. Received masks for: {sorted(arrays)}")
    array = np.asarray(arrays[weight.name], dtype=bool)
    if array.shape != weight.shape:
        raise ValueError(f"Mask for '{weight.name}' has shape {array.shape}, expected {weight.shape}.")
    return array


def prune_once(model, sparsity, allocation="layer"):
    """One-shot magnitude pruning of a masked model, in place.

    Masks are recomputed from the magnitudes of the current effective
    kernels: pruned weights rank below every survivor, so at a sparsity at
    least the current one they stay pruned. Newly pruned kernel entries and,
    once the model is compiled, their optimizer slots are set to zero.

    Args:
        model: a model with masked layers (`tfsparse.prune(model)`).
        sparsity: the target in [0, 1), shared out among the layers by
            `allocation`; or a dict layer (or weight) name -> sparsity that
            names every masked weight, each pruned to its own sparsity (then
            only the allocation's granularity matters).
        allocation: as `tfsparse.methods.MagnitudePruning`'s: `"layer"`
            (every layer at `sparsity`), `"global"` (one threshold, each
            layer keeping at least 1 %), `"lamp"`, `"erk"`, or a
            `tfsparse.allocation.Allocation` (which may carry overrides and
            a granularity).

    Returns:
        `model`, with its new masks.

    Example:

    ```python
    model = tfsparse.prune(trained_model)
    tfsparse.prune_once(model, 0.9, allocation="global")
    ```
    """
    weights = masked_weights(model)
    if not weights:
        raise ValueError(
            f"`model` must have masked layers to prune, and '{model.name}' has none. "
            "Prepare it with `model = tfsparse.prune(model)`."
        )
    allocation = allocation_lib.get(allocation)
    if isinstance(sparsity, dict):
        allocation = _per_layer(sparsity, weights, allocation.granularity)
        sparsity = 0.0  # every weight has its own
    else:
        _check_sparsity(sparsity, "sparsity")
        allocation.granularity.check_sparsity(sparsity, "sparsity")
    new_masks = allocation.masks(magnitude_scores(weights), sparsity)
    assign_masks(weights, new_masks, getattr(model, "optimizer", None))
    return model


def _check_sparsity(value, argument):
    # Any real number: a schedule may give numpy floats.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{argument}` must be a number in [0, 1). Received: {argument}={value!r}")


def _per_layer(sparsity, weights, granularity):
    """The allocation that prunes every weight to its entry of `sparsity`."""
    for name, value in sparsity.items():
        _check_sparsity(value, f"sparsity[{name!r}]")
    per_layer = allocation_lib.Uniform(overrides=sparsity, granularity=granularity)
    names = [w.name for w in weights]
    known = set(names) | {name.rsplit("/", 1)[0] for name in names}
    if any(per_layer.fixed_sparsity(name) is None for name in names) or not set(sparsity) <= known:
        raise ValueError(
            "`sparsity` as a dict must give every masked weight one sparsity, by layer or weight name, "
            f"and name nothing else. Masked weights: {names}. Received: sparsity={sparsity!r}"
        )
    return per_layer


def check_optimizer(optimizer):
    """Raises if `optimizer` cannot keep pruned weights at zero (see
    `ADAFACTOR_MIN_EPSILON_1`)."""
    optimizer = _unwrapped(optimizer)
    if isinstance(optimizer, keras.optimizers.Adafactor) and optimizer.epsilon_1 < ADAFACTOR_MIN_EPSILON_1:
        raise ValueError(
            "Adafactor with a tiny `epsilon_1` turns a pruned weight whose whole row and column see zero "
            "gradients into NaN (its factored second moment underflows to 0, and 0 / sqrt(0) spreads to "
            f"the whole kernel). Use keras.optimizers.Adafactor(epsilon_1={ADAFACTOR_MIN_EPSILON_1:g}) or "
            f"larger. Received: optimizer=Adafactor(epsilon_1={optimizer.epsilon_1!r})"
        )


def optimizer_slots(optimizer):
    """id(model variable) -> list of the optimizer's per-weight slot variables.

    Per-weight slots have the variable's shape, and Keras 3 names them
    `<variable path with _>_<slot>` (`BaseOptimizer.add_variable_from_reference`):
    SGD's momentum, Adam's and AdamW's moments, Lion's momentum, Adafactor's
    velocity. They are matched by that prefix and by shape, the longest
    prefix winning, so `dense_kernel_...` never claims
    `dense_kernel_score_...`. A `LossScaleOptimizer` gives its inner
    optimizer's slots.
    """
    optimizer = _unwrapped(optimizer)
    if optimizer is None:
        return {}
    references = getattr(optimizer, "_trainable_variables", None) or []
    prefixes = sorted(
        ((v.path.replace("/", "_") + "_", v) for v in references),
        key=lambda item: -len(item[0]),
    )
    slots = {}
    for slot in optimizer.variables:
        for prefix, reference in prefixes:
            if slot.name.startswith(prefix) and tuple(slot.shape) == tuple(reference.shape):
                slots.setdefault(id(reference), []).append(slot)
                break
    return slots


def _unwrapped(optimizer):
    """The optimizer that keeps the slots: a LossScaleOptimizer's inner one."""
    inner = getattr(optimizer, "inner_optimizer", None)
    return optimizer if inner is None else _unwrapped(inner)
