"""The protocol every tfsparse method follows.

A method is a `keras.callbacks.Callback` (plus, where it needs gradients, a
train step or the `tfsparse.gradients` helper). It owns its schedule, its
per-layer allocation and its state. It reaches the model's prunable kernels
through `self.masked_weights` (a list of `tfsparse.layers.MaskedWeight`) and changes
masks only through `assign_masks`, which also keeps the raw kernels and the
optimizer's slots consistent with the new masks.
"""

import keras

from tfsparse import masking
from tfsparse.mask_functions import use_loss_scale_of
from tfsparse.surgery import masked_weights


class BudgetWarning(UserWarning):
    """A fit too short for a method to do what its paper describes."""


_BATCH_TIME = ("before_batch", "after_batch")
_UPDATE_AT = (None, *_BATCH_TIME, "epoch_begin", "epoch_end")


class PruningMethod(keras.callbacks.Callback):
    """Base class of the tfsparse methods: the fit-loop contract.

    A method says when it updates and implements the update; the hooks here
    do all the counting. `update_at` is one of:

    - `"before_batch"` or `"after_batch"`: `update(step)` for every step
      where `is_due(step)`;
    - `"epoch_begin"`: `update(epoch)` before the epoch's first step;
    - `"epoch_end"`: `update(epoch)` after the epoch's training and
      validation (its logged validation metrics are those of the model
      before the update);
    - `None`: no update.

    At every epoch's end, after the update, `summarize_epoch(epoch)` returns
    entries for the epoch's logs. A method keeps its records (of updates or
    of epochs) in `history`, a list of dicts.

    Steps: step n is the model after n training steps (the optimizer's
    `iterations`), before step n + 1, and an update due at step n acts on
    that model. The step is read from the optimizer once per epoch and
    derived from the batch index in between (reading a variable every batch
    waits for the device). The steps before an epoch count as served when it
    begins: by this fit's hooks, or by the run that a resumed fit continues
    (`BackupAndRestore` restores the optimizer's counter after the methods'
    `on_train_begin`).

    A callback sees the model only in its hooks. With `compile(...,
    steps_per_execution=K)` Keras runs up to K steps per call and calls the
    batch hooks once per call: `on_train_batch_begin(b)` before it, with b
    the epoch's index of its first step, and `on_train_batch_end(b + K - 1)`
    after it (the index of a full call, also when the epoch's last call is
    shorter). An update due inside a call is applied at the first hook at or
    after its step: up to K - 1 steps late, never skipped, never applied
    twice. `update` still gets the step it was due at, so each update keeps
    its schedule (sparsity, drop fraction, seed); when several fall due at
    one hook they come oldest first, or, with `latest_update_only`, only the
    latest (for an update that makes the earlier ones moot: masks that only
    shrink, a top-k of the current scores). With K = 1 every due step has a
    hook of its own; epoch-time updates do not depend on K.

    Which hook serves step n:

    - `"after_batch"`: `on_train_batch_end` of the call that ends at n, so
      an update due at an epoch's last step runs before its validation.
    - `"before_batch"`: `on_train_batch_begin` of the call that starts at n,
      as tfmot prunes before a batch. Steps due inside a call are served by
      the next call's begin hook, which sees the same model, or, after the
      epoch's last call, by its end hook (before validation); the step at
      the end of an epoch is left to the next epoch's first call, and the
      one at the end of training to none, as with one step per execution.

    An epoch of unknown length may end after any call, so every call's end
    hook serves as an epoch's last would.
    """

    #: When `update` runs: one of `None`, "before_batch", "after_batch",
    #: "epoch_begin", "epoch_end".
    update_at = None
    #: Whether, of the steps due at one hook, only the latest is updated.
    latest_update_only = False

    def __init__(self):
        super().__init__()
        if self.update_at not in _UPDATE_AT:
            raise ValueError(f"`update_at` must be one of {list(_UPDATE_AT)}. Received: update_at={self.update_at!r}")
        self.masked_weights = []
        self._epoch_start = 0  # the optimizer's step when the epoch began
        self._served = 0  # the due steps up to here are served

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
        masking.check_optimizer(getattr(model, "optimizer", None))
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

    def is_due(self, step):
        """Whether a batch-time update is due at `step` (default: every step)."""
        return True

    def update(self, at):
        """The method's update: the one due at step `at`, or for epoch `at`."""
        raise NotImplementedError(f"{type(self).__name__} has update_at={self.update_at!r} and no `update`.")

    def summarize_epoch(self, epoch):
        """Entries for the logs of `epoch`, at its end (after the update)."""
        return {}

    def on_epoch_begin(self, epoch, logs=None):
        if self.update_at == "epoch_begin":
            self.update(epoch)
        elif self.update_at in _BATCH_TIME:
            self._epoch_start = self._served = self.optimizer_step()
            if self.update_at == "before_batch":
                self._served -= 1  # the epoch's first step is its first call's to serve

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_at == "before_batch":
            self._update_until(self._epoch_start + batch)

    def on_train_batch_end(self, batch, logs=None):
        if self.update_at not in _BATCH_TIME:
            return
        step, epoch_may_end = self._step_after(batch)
        if self.update_at == "after_batch":
            self._update_until(step)
        elif epoch_may_end:  # the steps inside the call, before validation
            self._update_until(step - 1)

    def on_epoch_end(self, epoch, logs=None):
        if self.update_at == "epoch_end":
            self.update(epoch)
        summary = self.summarize_epoch(epoch)
        if logs is not None:
            logs.update(summary)

    def _step_after(self, batch):
        """The step after the call that `on_train_batch_end(batch)` closes,
        and whether it may be the epoch's last call."""
        steps = self.params.get("steps")
        if steps:
            return self._epoch_start + min(batch + 1, steps), batch + 1 >= steps
        # An epoch of unknown length may end after any call, and its last
        # call may be shorter than the index says: read the counter.
        if self.model.steps_per_execution > 1:
            return self.optimizer_step(), True
        return self._epoch_start + batch + 1, True

    def _update_until(self, step):
        """Updates at the due steps up to `step` that are not served yet."""
        due = [s for s in range(self._served + 1, step + 1) if self.is_due(s)]
        self._served = max(self._served, step)
        for s in due[-1:] if self.latest_update_only else due:
            self.update(s)

    def kernels(self):
        """name -> current raw kernel (numpy)."""
        return {w.name: keras.ops.convert_to_numpy(w.kernel) for w in self.masked_weights}

    def masks(self):
        """name -> current mask (numpy bool)."""
        return masking.masks(self.masked_weights)

    def magnitude_scores(self):
        """name -> |kernel| for surviving weights, -1 for pruned ones
        (`tfsparse.masking.magnitude_scores`)."""
        return masking.magnitude_scores(self.masked_weights)

    def assign_masks(self, new_masks, zero_pruned=True, reset=None):
        """Sets the masks and keeps kernels and optimizer slots consistent
        (`tfsparse.masking.assign_masks` on the method's weights and the
        model's optimizer)."""
        masking.assign_masks(self.masked_weights, new_masks, getattr(self.model, "optimizer", None),
                             zero_pruned=zero_pruned, reset=reset)


def check_integer(value, name, minimum=1):
    """Raises unless `value` is an int (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}. Received: {name}={value!r}")

