"""Gradual magnitude pruning, the baseline every other method is measured against."""

from tfsparse import allocation as allocation_lib
from tfsparse import schedules as schedules_lib
from tfsparse.methods.base import PruningMethod, UpdateSteps, register


@register(
    "magnitude",
    "Gradual magnitude pruning on a polynomial schedule (tfmot's prune_low_magnitude).",
    "Zhu & Gupta, 'To prune, or not to prune', arXiv:1710.01878 (2017)",
)
class MagnitudePruning(PruningMethod):
    """Gradual magnitude pruning, step for step like tfmot.

    The step counter is tfmot's: before training batch `i` (0-based over the
    whole fit) the step is `optimizer.iterations + 1`; when
    `schedule.should_prune(step)`, the masks are recomputed from the
    magnitudes of the current effective kernels (pruned weights count as 0,
    so masks only shrink while the sparsity rises) and the new masks are used
    in that batch already. Newly pruned kernel entries and their optimizer
    slots are set to zero.

    With `steps_per_execution=K` the callback sees the model only between
    calls of K steps: an update due before a batch inside a call is applied
    at the call's end (`tfsparse.methods.base.UpdateSteps`), up to K - 1
    steps late, at its scheduled sparsity; when several fall due in one
    call, one update at the latest one's sparsity does them all (the masks
    only shrink). The final masks are the same as with one step per
    execution.

    Args:
        target_sparsity: final sparsity in [0, 1). With no `schedule`, the
            default is tfmot's `PolynomialDecay(0, target_sparsity,
            begin_step=0, end_step, frequency)` with `end_step` the
            `end_fraction` of the training steps (known once `fit` starts),
            rounded down to a multiple of `frequency` so that the last
            update applies exactly the target (our choice; tfmot leaves the
            rounding to the user).
        schedule: a `tfsparse.schedules.Schedule` or a callable
            `step -> sparsity`; overrides the default schedule.
        allocation: `"layer"` (every layer at the schedule's sparsity, as
            tfmot), `"global"` (one magnitude threshold across layers, each
            layer keeping at least 1 %), `"lamp"` (one threshold over LAMP
            scores), `"erk"`, or a `tfsparse.allocation.Allocation`.
        end_fraction: fraction of the training steps over which the default
            schedule ramps up.
        granularity: what the masks keep or drop as one unit (tfmot's
            `block_size` / `sparsity_m_by_n`): `None` or `"weight"`; a
            `tfsparse.allocation.Block` or `"block4x1"` / `"block16x1"`
            (whole blocks of 4 / 16 consecutive inputs of one output unit,
            pooled by average, `"-max"` for the maximum: LiteRT's sparse
            FULLY_CONNECTED blocks for float / int8); a
            `tfsparse.allocation.NM` or `"2:4"` (every group of 4
            consecutive inputs keeps `max(2, round(4 * (1 - s)))` at
            sparsity s, so the target must be at most 0.5 and the schedule
            ends at exactly 2:4). Given to the allocation (see
            `tfsparse.allocation.get`).
        frequency: steps between mask updates (default schedule, callables).

    Example:

    ```python
    model = tfsparse.prune(model)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10,
              callbacks=[tfsparse.methods.MagnitudePruning(0.9)])
    ```
    """

    cli_options = {
        "allocation": dict(choices=list(allocation_lib.NAMES), default="layer",
                           help="per-layer budget: every layer at the target, one global threshold "
                                "(1 %% floor per layer), one threshold over LAMP scores, or ERK"),
        "frequency": dict(type=int, default=100, help="steps between mask updates"),
        "end_fraction": dict(type=float, default=0.7, help="fraction of training over which sparsity ramps up"),
        "granularity": dict(type=allocation_lib.granularity_name, default="weight",
                            help="unit of pruning: weight, blockRxC (e.g. block4x1, block16x1, block4x1-max: "
                                 "LiteRT's sparse FULLY_CONNECTED blocks) or N:M (e.g. 2:4, target <= 1 - N/M)"),
    }

    def __init__(
        self,
        target_sparsity=None,
        schedule=None,
        allocation="layer",
        end_fraction=0.7,
        frequency=100,
        granularity=None,
    ):
        super().__init__()
        if schedule is None:
            if target_sparsity is None:
                raise ValueError("Give `target_sparsity` or `schedule`. Received neither.")
            schedules_lib.check_sparsity(target_sparsity, "target_sparsity")
        if not 0.0 < end_fraction <= 1.0:
            raise ValueError(f"`end_fraction` must be in (0, 1]. Received: end_fraction={end_fraction}")
        self.target_sparsity = target_sparsity
        self.schedule = None if schedule is None else schedules_lib.get(schedule, frequency)
        self.allocation = allocation_lib.get(allocation, granularity=granularity)
        if target_sparsity is not None:
            self.allocation.granularity.check_sparsity(target_sparsity, "target_sparsity")
        self.end_fraction = end_fraction
        self.frequency = frequency
        self.update_steps = UpdateSteps(self, self._due, after_batch=False)

    def on_train_begin(self, logs=None):
        if self.schedule is None:
            self.schedule = schedules_lib.PolynomialDecay(
                0.0,
                self.target_sparsity,
                begin_step=0,
                end_step=_default_end_step(
                    self.training_steps("to place its default schedule (or give an explicit `schedule`)"),
                    self.end_fraction, self.frequency),
                frequency=self.frequency,
            )
        self.allocation.check_names([w.name for w in self.masked_weights])

    def on_epoch_begin(self, epoch, logs=None):
        self.update_steps.epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        self._prune(self.update_steps.at_batch_begin(batch))

    def on_train_batch_end(self, batch, logs=None):
        self._prune(self.update_steps.at_batch_end(batch))

    def _due(self, step):
        # tfmot numbers the batch about to run from 1: after `step` steps, step + 1.
        return self.schedule.should_prune(step + 1)

    def _prune(self, due):
        if due:
            self.update_masks(self.schedule(due[-1] + 1))

    def update_masks(self, sparsity):
        """Recomputes all masks by magnitude at `sparsity` (one update)."""
        self.assign_masks(self.allocation.masks(self.magnitude_scores(), sparsity))


def _default_end_step(total, end_fraction, frequency):
    """`end_fraction * total` rounded down to a pruning step.

    tfmot's schedule ends wherever `end_step` falls, and when that is between
    two pruning steps the target is never reached; aligning the default end
    with the frequency makes the last update apply exactly the target.
    """
    if total < frequency:
        raise ValueError(
            f"Training has {total} steps, fewer than frequency={frequency}: the "
            "masks would never be updated. Lower `frequency` or train longer."
        )
    return max(int(end_fraction * total) // frequency, 1) * frequency

