"""The protocol every tfsparse method follows.

A method is a `keras.callbacks.Callback` (plus, where it needs gradients, a
train step or the `tfsparse.gradients` helper). It owns its schedule, its
per-layer allocation and its state. It reaches the model's prunable kernels
through `self.masked_weights` (a list of `tfsparse.layers.MaskedWeight`) and changes
masks only through `assign_masks`, which also keeps the raw kernels and the
optimizer's slots consistent with the new masks.
"""

import keras
import numpy as np

from tfsparse.mask_functions import use_loss_scale_of
from tfsparse.surgery import masked_weights

_REGISTRY = {}


def register(name, summary, paper):
    """Class decorator: makes a method reachable by name (CLI, benchmarks)."""

    def decorate(cls):
        cls.summary = summary
        cls.paper = paper
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered():
    """Registered methods: name -> class."""
    return dict(_REGISTRY)


def get(name):
    if name not in _REGISTRY:
        raise ValueError(f"Unknown method {name!r}. Available methods: {sorted(_REGISTRY)}")
    return _REGISTRY[name]


class PruningMethod(keras.callbacks.Callback):
    """Base class of the tfsparse methods.

    Command line: `cli_options` maps option names to `argparse` keyword
    arguments; `tfsparse run --method NAME --OPTION ...` passes them to
    `from_cli`, so a new method plugs into the CLI by declaring them.
    """

    cli_options = {}

    @classmethod
    def from_cli(cls, target_sparsity, epochs, train_data, **options):
        """Builds the method from the CLI's sparsity, epochs, training data
        `(x, y)` (for methods that need batches of their own) and options."""
        return cls(target_sparsity, **options)

    def finish(self, model, directory, retrain, evaluate):
        """Called by `tfsparse run` after training: writes the method's own
        artifacts into `directory` and runs any later phase.

        `retrain(new_model)` compiles `new_model` with a fresh optimizer,
        trains it with the run's recipe and no method (masks stay fixed) and
        returns its test metrics; `evaluate(model)` returns the test metrics
        of a model as it is. Returns extra metrics for the report.
        """
        return {}

    def __init__(self):
        super().__init__()
        self.masked_weights = []

    @property
    def layer_options(self):
        """Keyword arguments that `tfsparse.prune` must give the masked layers
        for this method (scores, scales, state variables, a mask function):
        `tfsparse.prune(model, **method.layer_options)`. A method that needs
        any overrides this property."""
        return {}

    def set_model(self, model):
        super().set_model(model)
        self.masked_weights = masked_weights(model)
        if not self.masked_weights:
            raise ValueError(
                f"{type(self).__name__} needs a model with masked layers, and "
                f"'{model.name}' has none. Prepare it with "
                "`model = tfsparse.prune(model)` before calling fit."
            )
        self._check_layer_options()
        use_loss_scale_of(getattr(model, "optimizer", None), {id(w.layer): w.layer for w in self.masked_weights}.values())

    def _check_layer_options(self):
        """Raises when the masked layers lack what `layer_options` asks for."""
        wanted_state = tuple(self.layer_options.get("state_names", ()))
        for weight in self.masked_weights:
            layer = weight.layer
            missing = [name for name in wanted_state if name not in layer.state_names]
            if self.layer_options.get("with_score") and not layer.with_score:
                missing.append("score")
            if self.layer_options.get("with_scale") and not layer.with_scale:
                missing.append("scale")
            if missing:
                options = ", ".join(f"{k}={v!r}" for k, v in self.layer_options.items())
                raise ValueError(
                    f"{type(self).__name__} keeps {missing} in the masked layers, and "
                    f"layer '{layer.name}' has none. Prune for this method: "
                    f"`tfsparse.prune(model, **method.layer_options)` with this {type(self).__name__} "
                    f"as `method` (that is `tfsparse.prune(model, {options})`)."
                )

    def optimizer_step(self):
        """The optimizer's step counter (training steps taken so far)."""
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def training_steps(self, purpose):
        """Total steps of the current `fit` (steps per epoch x epochs)."""
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                f"{type(self).__name__} needs the number of training steps {purpose}, "
                "and fit() does not know it (a dataset of unknown length?). Pass "
                "`steps_per_epoch` to fit."
            )
        return steps * epochs

    def kernels(self):
        """name -> current raw kernel (numpy)."""
        return {w.name: keras.ops.convert_to_numpy(w.kernel) for w in self.masked_weights}

    def masks(self):
        """name -> current mask (numpy bool)."""
        return {w.name: keras.ops.convert_to_numpy(w.mask) > 0.5 for w in self.masked_weights}

    def magnitude_scores(self):
        """name -> |kernel| for surviving weights, -1 for pruned ones.

        Pruned weights rank below every survivor (even a survivor that is
        exactly 0), so a magnitude update never brings one back while the
        sparsity does not decrease.
        """
        return {
            name: np.where(alive, np.abs(kernel), np.float32(-1.0))
            for (name, kernel), alive in zip(self.kernels().items(), self.masks().values())
        }

    def assign_masks(self, new_masks, zero_pruned=True, reset=None):
        """Sets the masks and keeps kernels and optimizer slots consistent.

        Args:
            new_masks: name -> bool array of the weight's shape.
            zero_pruned: set newly pruned kernel entries and their optimizer
                slots (momentum, Adam moments) to zero, so that a pruned
                weight stays exactly zero through later updates (gradient,
                slots and decoupled weight decay all leave a zero at zero).
                Methods whose pruned weights may come back with their value
                (OptG) pass False.
            reset: optional name -> bool array of positions whose kernel
                entries and optimizer slots are set to zero as well (weights
                that regrow from zero with fresh slots, as in RigL).
        """
        checked = {}
        for weight in self.masked_weights:  # all checked before any is assigned
            if weight.name not in new_masks:
                raise ValueError(f"No mask for '{weight.name}'. Received masks for: {sorted(new_masks)}")
            checked[weight.name] = np.asarray(new_masks[weight.name], dtype=bool)
            if checked[weight.name].shape != weight.shape:
                raise ValueError(
                    f"Mask for '{weight.name}' has shape {checked[weight.name].shape}, expected {weight.shape}."
                )
        slots = optimizer_slots(getattr(self.model, "optimizer", None))
        for weight in self.masked_weights:
            new = checked[weight.name]
            weight.mask.assign(new.astype("float32"))
            keep = new if zero_pruned else np.ones_like(new)
            if reset is not None and weight.name in reset:
                keep = keep & ~np.asarray(reset[weight.name], dtype=bool)
            if not keep.all():
                # Multiplying by the kept positions zeroes the others in place,
                # on the backend; already-zero entries stay zero.
                factor = keras.ops.convert_to_tensor(keep.astype("float32"))
                for variable in (weight.kernel, *slots.get(id(weight.kernel), ())):
                    variable.assign(variable * keras.ops.cast(factor, variable.dtype))


class UpdateSteps:
    """Which of a method's update steps fell due since its last batch hook.

    Every method counts steps the same way: step n is the model after n
    training steps (the optimizer's `iterations`), before step n + 1, and an
    update "due at step n" acts on that model. The step is read from the
    optimizer once per epoch and derived from the batch index in between
    (reading a variable every batch waits for the device).

    A callback sees the model only in its hooks. With `compile(...,
    steps_per_execution=K)` Keras runs up to K steps per call and calls the
    batch hooks once per call: `on_train_batch_begin(b)` before it, with b the
    epoch's index of its first step, and `on_train_batch_end(b + K - 1)` after
    it (the index of a full call, also when the epoch's last call is
    shorter). An update due inside a call is applied at its end, the first
    hook at or after its step: up to K - 1 steps late, never skipped, never
    applied twice. The methods still get the step it was due at, so each
    round keeps its schedule (sparsity, drop fraction, seed); when several
    fall due in one call they come together, oldest first. With K = 1 every
    due step has a hook of its own.

    Which hook serves step n, with `after_batch`:

    - True (DST): `on_train_batch_end` of the call that ends at n, so an
      update due at an epoch's last step runs before its validation.
    - False (magnitude pruning, edge-popup): `on_train_batch_begin` of the
      call that starts at n, as tfmot prunes before a batch. Steps due inside
      a call are served by the next call's begin hook, which sees the same
      model, or, after the epoch's last call, by its end hook (before
      validation); the step at the end of an epoch is left to the next
      epoch's first call, and the one at the end of training to none, as
      with one step per execution.

    The method calls `epoch_begin` in `on_epoch_begin` and applies what
    `at_batch_begin` / `at_batch_end` return in its batch hooks. The steps
    before an epoch count as served when it begins: by this fit's hooks, or
    by the run that a resumed fit continues (`BackupAndRestore` restores the
    optimizer's counter after the methods' `on_train_begin`).
    """

    def __init__(self, method, is_due, after_batch):
        self.method = method
        self.is_due = is_due
        self.after_batch = after_batch
        self._epoch_start = 0
        self._done = 0  # steps up to here are served

    def epoch_begin(self):
        self._epoch_start = self.method.optimizer_step()
        # The epoch's first step is still to serve when updates come before a batch.
        self._done = self._epoch_start if self.after_batch else self._epoch_start - 1

    def at_batch_begin(self, batch):
        """The due steps to apply in `on_train_batch_begin(batch)`, oldest first."""
        return [] if self.after_batch else self._until(self._epoch_start + batch)

    def at_batch_end(self, batch):
        """The due steps to apply in `on_train_batch_end(batch)`, oldest first."""
        step, epoch_may_end = self._step_after(batch)
        if self.after_batch:
            return self._until(step)
        return self._until(step - 1) if epoch_may_end else []

    def _step_after(self, batch):
        """The step after the call that `on_train_batch_end(batch)` closes,
        and whether it may be the epoch's last call."""
        steps = self.method.params.get("steps")
        if steps:
            return self._epoch_start + min(batch + 1, steps), batch + 1 >= steps
        # An epoch of unknown length may end after any call, and its last
        # call may be shorter than the index says: read the counter.
        if self.method.model.steps_per_execution > 1:
            return self.method.optimizer_step(), True
        return self._epoch_start + batch + 1, True

    def _until(self, step):
        due = [s for s in range(self._done + 1, step + 1) if self.is_due(s)]
        self._done = max(self._done, step)
        return due


def check_integer(value, name, minimum=1):
    """Raises unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")


def optimizer_slots(optimizer):
    """id(model variable) -> list of the optimizer's per-weight slot variables.

    Keras 3 names a slot `<variable path with _>_<slot>` (see
    `BaseOptimizer.add_variable_from_reference`); slots are matched by that
    prefix and by shape, the longest prefix winning, so `dense_kernel_...`
    never claims `dense_kernel_score_...`.
    """
    if optimizer is None:
        return {}
    inner = getattr(optimizer, "inner_optimizer", None)  # LossScaleOptimizer
    if inner is not None:
        return optimizer_slots(inner)
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
