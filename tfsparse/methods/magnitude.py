"""Gradual magnitude pruning, the baseline every other method is measured against.

Zhu & Gupta, "To prune, or not to prune", arXiv:1710.01878 (2017); tfmot's
`prune_low_magnitude`.
"""

from tfsparse import allocation as allocation_lib
from tfsparse import schedules as schedules_lib
from tfsparse.masking import prune_once
from tfsparse.methods.base import PruningMethod


class MagnitudePruning(PruningMethod):
    """Gradual magnitude pruning, step for step like tfmot.

    The schedule counts steps as tfmot does, from 1: before the batch that
    follows step n (`tfsparse.methods.base.PruningMethod`) its step is
    n + 1. When `schedule.should_prune(n + 1)`, the masks are recomputed
    from the magnitudes of the current effective kernels (pruned weights
    count as 0, so masks only shrink while the sparsity rises) at
    `schedule(n + 1)`, and the new masks are used in that batch already.
    Newly pruned kernel entries and their optimizer slots are set to zero.
    As the masks only shrink, when several updates fall due at one hook
    (`steps_per_execution` > 1) the latest alone does them all.

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

    update_at = "before_batch"
    latest_update_only = True

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

    def is_due(self, step):
        return self.schedule.should_prune(step + 1)

    def update(self, step):
        self.update_masks(self.schedule(step + 1))

    def update_masks(self, sparsity):
        """Recomputes all masks by magnitude at `sparsity` (one update)."""
        prune_once(self.model, sparsity, self.allocation)


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

