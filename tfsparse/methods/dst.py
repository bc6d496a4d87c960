"""Dynamic sparse training: DST-EE, with RigL and SET as its baselines.

The network is sparse from the first step at a fixed number of nonzeros per
layer (ERK densities by default). Every `update_every` steps until
`stop_at`, each layer drops its smallest-magnitude active weights and grows
as many inactive ones:

- DST-EE (Huang et al., arXiv:2211.16667) grows the weights with the highest
  acquisition score |dL/dw| + c * sqrt(ln t / (N + eps)), where t is the
  step and N counts the update rounds in which the weight was active;
- RigL (Evci et al., arXiv:1911.11134) is the same with c = 0;
- SET (Mocanu et al., Nature Communications 2018) grows at random.

The paper's body and code were not available; the score is the published
form, the rest (cosine-decayed drop fraction, zero-initialized grown weights
with reset optimizer slots, ERK, the drop/grow order) follows RigL. Our
choices, not the paper's: eps = 1 by default (a never-active weight gets the
finite bonus c * sqrt(ln t)), the default c (calibrated on a validation
split, see `DSTEE`), and where the gradient comes from (below).

Gradient source: a Keras callback never sees fit's batches, so the grow
score uses the dense gradient (with respect to the effective kernel, pruned
positions included; `tfsparse.dense_gradients`) on a batch of
`gradient_batch_size` examples drawn from `gradient_data` at each update.
RigL's TF2 code likewise uses a separate batch for its grow gradients.

A round is an update after a batch (`tfsparse.methods.base.PruningMethod`)
and gets the step it was due at: under `steps_per_execution=K` its drop
fraction, t and seed are those of its schedule, and the rounds, their number
and their sizes are those of one step per execution (with `update_every < K`
those due in one call run back to back at its end).

State: the masks and the counters N live in the layers' variables (mask and
`active_rounds`), and the step comes from the optimizer, so both `.keras`
save/load and `BackupAndRestore` resume training where it stopped. Random
choices (initial masks, SET growth, gradient batches) are seeded by
`(seed, step)`, so a resumed run repeats the uninterrupted one.

Granularity (`granularity=`, issue #20): the unit that is dropped and grown.

- Single weights (the default): as above.
- Blocks (`tfsparse.allocation.Block`, e.g. `"block4x1"`, LiteRT's sparse
  FULLY_CONNECTED layout): the block is the unit throughout. The initial
  masks are the allocation's block masks (ERK / uniform densities applied
  to each layer's block count, as in magnitude pruning); a round drops the
  active blocks of smallest pooled magnitude (`Block.pool` of |kernel|:
  average or maximum) and grows as many blocks by pooled |dL/dw| (plus,
  for DST-EE, the bonus c * sqrt(ln t / (N + eps)) with the block's N) or,
  for SET, at random, so each layer keeps exactly its number of active
  blocks. The counter N stays per weight: the masks are made of whole
  blocks, so the weights of a block share their history, and the block's
  N is the average of its weights' counters, the same number (our choice
  over a per-block counter: no new state, and save/load, coverage and
  resume are unchanged). A partial last block (input size not a multiple of the
  block) counts as one block.
- N:M (`tfsparse.allocation.NM`, e.g. `"2:4"`): supported. Every group of
  M consecutive inputs keeps `NM.group_keep(target_sparsity)` weights (N
  at the usual target 1 - N/M; a target above it is a ValueError). A round
  drops the layer's smallest-magnitude active weights as at weight
  granularity, and each group regrows as many as it lost, the best scored
  (or random) of its own inactive weights, so every group holds exactly
  its count after every round. The allocation's kind does not matter for
  N:M (as in `tfsparse.allocation.NM`), its overrides do.
"""

import math
import warnings

import keras
import numpy as np

from tfsparse import allocation as allocation_lib
from tfsparse import schedules as schedules_lib
from tfsparse.allocation import check_finite, keep_top_k
from tfsparse.gradients import dense_gradients
from tfsparse.methods.base import BudgetWarning, PruningMethod, check_integer

ACTIVE_ROUNDS = "active_rounds"
#: Fewer mask updates than this in a fit draw a `BudgetWarning`.
MIN_ROUNDS = 10
_NOT_ELIGIBLE = np.float32(-1.0)


class DynamicSparseTraining(PruningMethod):
    """Drop-and-grow sparse training; the common machinery of DSTEE, RigL and SET.

    Args:
        target_sparsity: fraction of zeros in [0, 1), fixed from step 0.
        c: weight of the exploration bonus (growth by score only).
        grow: `"score"` (gradient + exploration bonus) or `"random"` (SET).
        update_every: steps between drop-and-grow rounds (Delta T).
        drop_fraction: initial fraction f_0 of each layer's active weights
            that is dropped and regrown; it decays to 0 with a cosine at
            `stop_at`.
        stop_at: fraction of the training steps after which the masks stay
            fixed.
        allocation: per-layer densities: `"erk"`, `"layer"` (uniform), or a
            `tfsparse.allocation.Allocation`.
        gradient_data: `(x, y)` arrays, or a `tf.data.Dataset` of `(x, y)`
            batches, for the grow gradients (score growth only).
        gradient_batch_size: examples per grow-gradient batch drawn from
            `(x, y)` arrays.
        eps: added to N in the exploration bonus.
        seed: seed of the random choices.
        total_steps: training steps that `stop_at` refers to; defaults to
            the steps of the `fit` call (give it when training is split over
            several `fit` calls).
        granularity: the unit that is dropped and grown: `None` or
            `"weight"`; a `tfsparse.allocation.Block` or `"block4x1"` /
            `"block16x1"` (`"-max"` for max pooling): whole blocks of
            consecutive inputs of one output unit; a
            `tfsparse.allocation.NM` or `"2:4"`: N of every M consecutive
            inputs (`target_sparsity` at most 1 - N/M). See the module
            docstring. Given to the allocation
            (`tfsparse.allocation.get`).
    """

    update_at = "after_batch"

    @property
    def layer_options(self):
        return {"state_names": (ACTIVE_ROUNDS,)}

    grow_mode = "score"

    def __init__(
        self,
        target_sparsity,
        c=0.0,
        grow=None,
        update_every=100,
        drop_fraction=0.3,
        stop_at=0.75,
        allocation="erk",
        gradient_data=None,
        gradient_batch_size=256,
        eps=1.0,
        seed=0,
        total_steps=None,
        granularity=None,
    ):
        super().__init__()
        schedules_lib.check_sparsity(target_sparsity, "target_sparsity")
        allocation = allocation_lib.get(allocation, granularity=granularity)
        allocation.granularity.check_sparsity(target_sparsity, "target_sparsity")
        grow = grow or self.grow_mode
        if grow not in ("score", "random"):
            raise ValueError(f"`grow` must be 'score' or 'random'. Received: grow={grow!r}")
        if grow == "score" and gradient_data is None:
            raise ValueError(
                f"{type(self).__name__} grows by gradient and needs `gradient_data`: "
                "training examples as `(x, y)` arrays or a tf.data.Dataset of "
                "(x, y) batches. Received: gradient_data=None"
            )
        check_integer(update_every, "update_every")
        check_integer(gradient_batch_size, "gradient_batch_size")
        if not 0.0 < drop_fraction < 1.0:
            raise ValueError(f"`drop_fraction` must be in (0, 1). Received: drop_fraction={drop_fraction}")
        if not 0.0 < stop_at <= 1.0:
            raise ValueError(f"`stop_at` must be in (0, 1]. Received: stop_at={stop_at}")
        if c < 0 or eps <= 0:
            raise ValueError(f"`c` must be >= 0 and `eps` > 0. Received: c={c}, eps={eps}")
        self.target_sparsity = target_sparsity
        self.c = float(c)
        self.grow = grow
        self.update_every = update_every
        self.drop_fraction = drop_fraction
        self.stop_at = stop_at
        self.allocation = allocation
        self.granularity = allocation.granularity
        self.gradient_data = gradient_data
        self.gradient_batch_size = gradient_batch_size
        self.eps = float(eps)
        self.seed = seed
        self.total_steps = total_steps
        self.stop_step = None
        self.history = []
        self._dataset_iterator = None

    def on_train_begin(self, logs=None):
        total = self.total_steps or self.training_steps("to place `stop_at`")
        self.stop_step = int(self.stop_at * total)
        if self.stop_step < self.update_every:
            raise ValueError(
                f"Training has {total} steps; with stop_at={self.stop_at} the masks "
                f"would never change (update_every={self.update_every}). Lower "
                "`update_every` or train longer."
            )
        rounds = self.stop_step // self.update_every
        if rounds < MIN_ROUNDS:
            warnings.warn(
                f"{type(self).__name__} changes the masks {rounds} time(s) in this fit ({total} steps, "
                f"update_every={self.update_every}, stop_at={self.stop_at}): with fewer than {MIN_ROUNDS} "
                "updates, dynamic sparse training is little more than static sparse training. Use "
                f"update_every <= {max(1, self.stop_step // MIN_ROUNDS)} or at least "
                f"{MIN_ROUNDS * self.update_every / self.stop_at:.0f} training steps.",
                BudgetWarning, stacklevel=2,
            )
        self.allocation.check_names([w.name for w in self.masked_weights])
        if self.optimizer_step() == 0:
            self.initialize_masks()
        else:  # resumed: the masks must already have the structure the updates keep
            for name, alive in self.masks().items():
                self._check_structure(name, alive)

    def initialize_masks(self):
        """Random masks at the allocation's per-layer densities (step 0)."""
        rng = self._rng(0)
        scores = {w.name: rng.random(w.shape, dtype=np.float32) for w in self.masked_weights}
        self.assign_masks(self.allocation.masks(scores, self.target_sparsity))
        for weight in self.masked_weights:
            weight.state(ACTIVE_ROUNDS).assign(np.zeros(weight.shape, "float32"))

    def is_due(self, step):
        return step % self.update_every == 0 and step <= self.stop_step

    def summarize_epoch(self, epoch):
        return {"coverage": self.history[-1]["coverage"]} if self.history else {}

    def current_drop_fraction(self, step):
        """f_0 / 2 * (1 + cos(pi * step / stop_step)), RigL's cosine decay."""
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * min(step, self.stop_step) / self.stop_step))

    def update(self, step):
        """One drop-and-grow round in every layer, the one due at `step` (>= 1)."""
        fraction = self.current_drop_fraction(step)
        kernels, masks = self.kernels(), self.masks()
        gradients = self._gradients(step) if self.grow == "score" else None
        check_finite(kernels, "kernels")
        if gradients is not None:
            check_finite(gradients, "dense gradients")
        rng = self._rng(step)
        new_masks, grown, record = {}, {}, _RoundRecord(step, fraction)
        for weight in self.masked_weights:
            name, alive = weight.name, masks[weight.name]
            self._check_structure(name, alive)
            rounds = keras.ops.convert_to_numpy(weight.state(ACTIVE_ROUNDS)) + alive
            weight.state(ACTIVE_ROUNDS).assign(rounds)
            # Units: the weights themselves, or the blocks (pooled, then expanded back).
            unit_alive = self._pool_mask(alive)
            active = int(unit_alive.sum())
            n = min(math.ceil(fraction * active), unit_alive.size - active)
            magnitude = self._pool(np.abs(kernels[name]))
            survivors = keep_top_k(np.where(unit_alive, magnitude, _NOT_ELIGIBLE), active - n)
            if self.grow == "random":
                terms, score = None, rng.random(unit_alive.shape, dtype=np.float32)
            else:
                terms = self.grow_terms(gradients[name], rounds, step)
                score = terms[0] if terms[1] is None else terms[0] + terms[1]
            if isinstance(self.granularity, allocation_lib.NM):
                # Each group of M refills the places it lost: survivors first, then its best scores.
                keep = self.granularity.keep(np.where(survivors, np.inf, score), self._group_keep(name))
                grow = keep & ~survivors
            else:
                grow = keep_top_k(np.where(survivors, _NOT_ELIGIBLE, score), n) & ~survivors
            unit_grow = grow
            survivors, grow = self._expand(survivors, alive.shape), self._expand(grow, alive.shape)
            new_masks[name] = survivors | grow
            grown[name] = grow & ~alive
            record.add(alive, survivors, grow, rounds, terms, unit_grow)
        self.assign_masks(new_masks, reset=grown)
        self.history.append(record.summary())

    def grow_terms(self, gradient, rounds, step):
        """The two terms of the grow score: |g| and c * sqrt(ln t / (N + eps)),
        per unit (block-pooled |g| and the blocks' counters for blocks)."""
        exploitation = self._pool(np.abs(gradient))
        if self.c == 0.0:
            return exploitation, None
        exploration = self.c * np.sqrt(np.log(step) / (self._pool_counter(rounds) + self.eps)).astype(np.float32)
        return exploitation, exploration

    # --- granularity: weights, blocks (pooled units) or N:M (weights, refilled per group) ---------

    def _is_block(self):
        return isinstance(self.granularity, allocation_lib.Block)

    def _pool(self, values):
        """Per-unit scores: `Block.pool` (the block's average or maximum) for blocks, else as they are."""
        return self.granularity.pool(values) if self._is_block() else values

    def _pool_counter(self, rounds):
        """The blocks' counters N: the average of their weights' (equal within a whole block)."""
        if not self._is_block():
            return rounds
        return allocation_lib.Block(self.granularity.block_size, "avg").pool(rounds)

    def _pool_mask(self, alive):
        """Active units: the mask itself, or the blocks whose weights are all active."""
        if not self._is_block():
            return alive
        return allocation_lib.Block(self.granularity.block_size, "avg").pool(alive.astype(np.float32)) == 1.0

    def _expand(self, units, shape):
        return self.granularity.expand(units, shape) if self._is_block() else units

    def _group_keep(self, name):
        fixed = self.allocation.fixed_sparsity(name)
        return self.granularity.group_keep(self.target_sparsity if fixed is None else fixed)

    def _check_structure(self, name, alive):
        """Raises ValueError unless the mask has this method's granularity (whole
        blocks, or exactly the group count of N:M): a model whose masks came from
        another granularity (a resumed run, masks set by hand) is not silently
        re-cut."""
        if self._is_block():
            fraction = allocation_lib.Block(self.granularity.block_size, "avg").pool(alive.astype(np.float32))
            ok = bool(np.all((fraction == 0.0) | (fraction == 1.0)))
        elif isinstance(self.granularity, allocation_lib.NM):
            k = self._group_keep(name)
            ok = bool(np.array_equal(self.granularity.keep(alive.astype(np.float32), k), alive))
        else:
            return
        if not ok:
            raise ValueError(
                f"The mask of '{name}' does not have the structure of granularity "
                f"{self.granularity.name!r} (whole blocks / exactly the group count), so drop-and-grow "
                "cannot keep it. Start from a fresh `tfsparse.prune(...)` model (the initial masks are "
                "made at step 0) or use the granularity the masks were made with. "
                f"Received: granularity={self.granularity.name!r}"
            )

    def _gradients(self, step):
        x, y = self._gradient_batch(step)
        return {k: keras.ops.convert_to_numpy(v) for k, v in dense_gradients(self.model, x, y).items()}

    def _gradient_batch(self, step):
        data = self.gradient_data
        if isinstance(data, (tuple, list)):
            x, y = data
            rows = self._rng(step).choice(len(x), size=min(self.gradient_batch_size, len(x)), replace=False)
            rows.sort()
            return x[rows], y[rows]
        if self._dataset_iterator is None:
            self._dataset_iterator = iter(data.repeat())
        return next(self._dataset_iterator)

    def _rng(self, step):
        return np.random.default_rng([self.seed, step])

    def coverage(self):
        """Fraction of weights that have ever been active."""
        ever = sum(
            int(np.count_nonzero((keras.ops.convert_to_numpy(w.state(ACTIVE_ROUNDS)) > 0)
                                 | (keras.ops.convert_to_numpy(w.mask) > 0.5)))
            for w in self.masked_weights
        )
        return ever / sum(w.size for w in self.masked_weights)

class DSTEE(DynamicSparseTraining):
    """DST-EE: grow by |dL/dw| + c * sqrt(ln t / (N + eps)).

    `c` defaults to 1e-2 (our choice: the paper's value is not known). It
    was picked on a validation split of Fashion-MNIST (LeNet-300-100,
    sparsity 0.95, 15 epochs, Adam 1e-3) from {1e-4, 3e-4, 1e-3, 3e-3, 1e-2}:
    88.42 % at 1e-2 against 87.73 % at 1e-3 (benchmarks/results/dst_*.md).
    The terms have the units of a gradient, so another loss scale needs
    another c. The run's `history` logs both terms' means over the grown
    weights; with c = 1e-2 the bonus of never-active weights (~0.03)
    outweighs typical gradients (~0.006), so early rounds explore widely.
    All other arguments: `DynamicSparseTraining`.

    Example:

    ```python
    dst_ee = DSTEE(0.95, gradient_data=(x, y))
    model = tfsparse.prune(model, **dst_ee.layer_options)
    model.compile("adam", loss, metrics=["accuracy"])
    model.fit(x, y, epochs=20, callbacks=[dst_ee])
    ```
    """

    def __init__(self, target_sparsity, c=1e-2, **kwargs):
        super().__init__(target_sparsity, c=c, grow="score", **kwargs)


class RigL(DynamicSparseTraining):
    """RigL: DST-EE with c = 0 (growth by |dL/dw| alone).

    Arguments: `DynamicSparseTraining` (without `c` and `grow`).
    """

    def __init__(self, target_sparsity, **kwargs):
        super().__init__(target_sparsity, c=0.0, grow="score", **kwargs)


class SET(DynamicSparseTraining):
    """SET: drop the smallest magnitudes, grow at random; needs no gradients.

    Arguments: `DynamicSparseTraining` (without `c`, `grow` and the
    gradient data).
    """

    grow_mode = "random"

    def __init__(self, target_sparsity, **kwargs):
        super().__init__(target_sparsity, c=0.0, grow="random", **kwargs)


class _RoundRecord:
    """Aggregates one drop-and-grow round over the layers for the history."""

    def __init__(self, step, fraction):
        self.step, self.fraction = step, fraction
        self.dropped = self.grown = self.ever = self.size = 0
        self.exploitation, self.exploration = [], []

    def add(self, alive, survivors, grow, rounds, terms, unit_grow=None):
        """Masks per weight; `terms` per unit, indexed by `unit_grow` (default `grow`)."""
        self.dropped += int(np.count_nonzero(alive & ~survivors))
        self.grown += int(np.count_nonzero(grow & ~alive))
        self.ever += int(np.count_nonzero((rounds > 0) | grow))
        self.size += alive.size
        if terms is not None:
            chosen = grow if unit_grow is None else unit_grow
            self.exploitation.append(terms[0][chosen])
            if terms[1] is not None:
                self.exploration.append(terms[1][chosen])

    def summary(self):
        def mean(parts):
            values = np.concatenate(parts) if parts else np.zeros(0)
            return float(values.mean()) if values.size else 0.0

        return {
            "step": self.step,
            "drop_fraction": self.fraction,
            # As many are grown; "grown" counts those that were not active.
            "dropped": self.dropped,
            "grown": self.grown,
            "coverage": self.ever / self.size,
            "exploitation": mean(self.exploitation),
            "exploration": mean(self.exploration),
        }
