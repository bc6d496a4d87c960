"""Gradual channel pruning: whole channel groups, so that `tfsparse.shrink`
can remove them and the model gets smaller and faster."""

import warnings

import keras
import numpy as np

from tfsparse import channel_graph as groups_lib
from tfsparse.allocation import check_finite
from tfsparse.methods.magnitude import MagnitudePruning
from tfsparse.surgery import PruningCoverageWarning

CRITERIA = ("l1", "l2", "bn_gamma")
PENALTIES = (None, "group_lasso", "slimming")


class ChannelPruning(MagnitudePruning):
    """Prunes whole channels, following their dependency groups.

    The model's channels are split into groups that stand or fall together
    (`tfsparse.channel_groups`: a conv's filters with the BatchNorm after
    it, the depthwise filters that follow, every branch of a residual sum,
    the rows of the next layer that read them). On the schedule of
    `MagnitudePruning` (tfmot's polynomial ramp), every prunable group
    keeps its `round(size * (1 - s))` highest-scoring channels (at least
    one) and the masks of all the group's kernels drop the others: the
    producers' output filters, the depthwise filters and the readers' input
    rows. Dropped channels stay dropped. After training, `tfsparse.shrink`
    removes them and returns a smaller dense model with the same outputs.

    Scores (`criterion`) are computed per channel of a group:

    - `"l2"` / `"l1"`: the norm of the channel's output filters in all the
      group's producers (Li et al. 2017 use L1);
    - `"bn_gamma"`: the summed |gamma| of the BatchNormalization layers on
      the group's channels (Liu et al. 2017); a group without BatchNorm is
      scored by `"l2"` (listed in `criteria_used` and warned about).

    `penalty` adds a sparsity-inducing step after every training call
    (a proximal step, so it works with any optimizer and loss):
    `"group_lasso"` shrinks each channel's producer filters towards zero by
    `learning_rate * penalty_strength` in L2 norm (Wen et al. 2016),
    `"slimming"` shrinks the BatchNorm gammas by the same amount in L1
    (Liu et al. 2017).

    Args:
        target_sparsity: fraction of the channels of every prunable group to
            remove, in [0, 1).
        criterion: one of `"l2"`, `"l1"`, `"bn_gamma"`.
        penalty: None, `"group_lasso"` or `"slimming"`.
        penalty_strength: the penalty's coefficient (lambda).
        schedule, end_fraction, frequency: as for `MagnitudePruning`.

    Groups that cannot be removed (they reach a model output, a layer that
    mixes channels, a custom layer; see `tfsparse.channel_groups`) and groups
    whose readers are not masked are left whole and listed in `skipped`
    (and warned about).

    Example:

    ```python
    model = tfsparse.prune(model)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=10, callbacks=[tfsparse.methods.ChannelPruning(0.5)])
    small = tfsparse.shrink(model)  # fewer channels, same outputs
    ```
    """

    def __init__(
        self,
        target_sparsity=None,
        criterion="l2",
        penalty=None,
        penalty_strength=1e-4,
        schedule=None,
        end_fraction=0.7,
        frequency=100,
    ):
        super().__init__(target_sparsity, schedule=schedule, end_fraction=end_fraction, frequency=frequency)
        if criterion not in CRITERIA:
            raise ValueError(f"`criterion` must be one of {list(CRITERIA)}. Received: criterion={criterion!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"`penalty` must be one of {list(PENALTIES)}. Received: penalty={penalty!r}")
        if not (isinstance(penalty_strength, (int, float)) and penalty_strength >= 0):
            raise ValueError(f"`penalty_strength` must be a number >= 0. Received: penalty_strength={penalty_strength!r}")
        self.criterion = criterion
        self.penalty = penalty
        self.penalty_strength = float(penalty_strength)
        self.groups, self.skipped, self.criteria_used = [], [], {}

    def set_model(self, model):
        super().set_model(model)
        names = {(id(w.layer), w.attr): w.name for w in self.masked_weights}
        self.groups, self.skipped = [], []
        for group in groups_lib.channel_groups(model).groups:
            if not group.producers:
                continue
            unmasked = [s.layer.name for s in group.readers if (id(s.layer), s.attr) not in names]
            if not group.prunable:
                self.skipped.append((group.describe(), group.reason))
            elif unmasked:
                self.skipped.append((group.describe(), f"read by layers that are not masked: {unmasked}"))
            else:
                self.groups.append(group)
        self._names = names
        self.criteria_used = {
            group.describe(): self.criterion if self.criterion != "bn_gamma" or group.batch_norms else "l2"
            for group in self.groups
        }
        self._warn_skipped()

    def _warn_skipped(self):
        if not self.groups:
            raise ValueError(
                f"ChannelPruning found no channel group it can prune in '{self.model.name}':\n"
                + "\n".join(f"  {name}: {reason}" for name, reason in self.skipped)
            )
        notes = [f"  {name}: kept whole ({reason})" for name, reason in self.skipped
                 if "reaches a model output" not in reason]
        notes += [f"  {name}: no BatchNormalization, scored by l2" for name, used in self.criteria_used.items()
                  if used != self.criterion]
        if notes:
            warnings.warn("ChannelPruning:\n" + "\n".join(notes), PruningCoverageWarning, stacklevel=2)

    def update_masks(self, sparsity):
        """Keeps the best `round(size * (1 - sparsity))` channels of every group."""
        masks = {w.name: np.ones(w.shape, dtype=bool) for w in self.masked_weights}
        current = self.masks()
        all_scores = {group.describe(): self._scores(group) for group in self.groups}
        check_finite(all_scores, "channel scores")  # before any mask changes
        for group in self.groups:
            scores = all_scores[group.describe()]
            alive = np.zeros(group.size, dtype=bool)
            for kernel_slice in group.readers:
                alive |= kernel_slice.channel_norms(current[self._names[self._key(kernel_slice)]], group.size, 0)
            scores = np.where(alive, scores, -1.0)  # dropped channels stay dropped
            keep = max(1, int(round(group.size * (1.0 - sparsity))))
            dropped = np.argsort(-scores, kind="stable")[keep:]
            for kernel_slice in group.kernel_slices:
                name = self._names.get(self._key(kernel_slice))
                if name is not None:
                    masks[name] = kernel_slice.zero_channels(masks[name], dropped)
        self.assign_masks(masks)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, logs)
        if self.penalty and self.penalty_strength:
            self._proximal_step()

    def _key(self, kernel_slice):
        return id(kernel_slice.layer), kernel_slice.attr

    def _scores(self, group):
        criterion = self.criteria_used[group.describe()]
        if criterion == "bn_gamma":
            return sum(np.abs(keras.ops.convert_to_numpy(bn.gamma)) for bn in group.batch_norms)
        order = 1 if criterion == "l1" else 2
        total = sum(s.channel_norms(s.value(), group.size, order) for s in group.producers)
        return total if order == 1 else np.sqrt(total)

    def _proximal_step(self):
        """One proximal step of the penalty with the current learning rate."""
        threshold = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)) * self.penalty_strength
        for group in self.groups:
            if self.penalty == "slimming":
                for bn in group.batch_norms:
                    if bn.gamma is not None:
                        g = bn.gamma
                        g.assign(keras.ops.sign(g) * keras.ops.maximum(keras.ops.abs(g) - threshold, 0.0))
                continue
            variables = [self._raw_kernel(s) for s in group.producers]
            norms = np.sqrt(sum(s.channel_norms(keras.ops.convert_to_numpy(v), group.size, 2)
                                for s, v in zip(group.producers, variables)))
            factor = np.maximum(1.0 - threshold / np.maximum(norms, 1e-12), 0.0).astype("float32")
            for kernel_slice, variable in zip(group.producers, variables):
                shape = [1] * len(variable.shape)
                shape[kernel_slice.axis] = group.size
                variable.assign(variable * keras.ops.reshape(factor, shape))

    def _raw_kernel(self, kernel_slice):
        name = self._names.get(self._key(kernel_slice))
        if name is None:
            return getattr(kernel_slice.layer, kernel_slice.attr)
        return next(w.kernel for w in self.masked_weights if w.name == name)
