"""Per-layer sparsity budgets: uniform, global, ERK.

An allocation turns importance scores (one array per masked weight, larger
means keep) and an overall target sparsity into boolean keep-masks. It works
on numpy on the host: a global threshold over 25 M values with
`np.partition` takes a fraction of a second where `tf.math.top_k` takes
seconds (see benchmarks/mask_update.py).

Counts are exact: a layer of n weights at sparsity s keeps
`max(round(n * (1 - s)), 1)` weights, as tfmot does, and ties at the
threshold are broken by position instead of keeping them all.

Overrides: `overrides={"dense_2": 0.5}` fixes a layer's sparsity (key: a
layer name, or a weight name such as `"sep/pointwise_kernel"`), and
`keep_dense=["dense_3"]` is the same as an override of 0.
"""

import numpy as np


def keep_count(size, sparsity):
    """Number of weights kept in a tensor of `size` at `sparsity` (>= 1)."""
    return int(max(round(size * (1.0 - sparsity)), 1))


def keep_top_k(scores, k, tiebreak=None):
    """Boolean array, True at exactly the `k` largest entries of `scores`.

    Ties at the threshold go to the largest `tiebreak` values (an array of
    the same shape) when given, else to the first positions.
    """
    flat = np.asarray(scores).reshape(-1)
    n = flat.size
    if k >= n:
        return np.ones(np.shape(scores), dtype=bool)
    if k <= 0:
        return np.zeros(np.shape(scores), dtype=bool)
    # Already-pruned weights all score the same minimum (0 for magnitudes); a
    # mass of equal values sends np.partition down a slow path (1.4 s instead
    # of 0.04 s on 25 M values here), so select among the values above it.
    lowest = flat.min()
    above = flat > lowest
    n_above = int(np.count_nonzero(above))
    if n_above >= k:
        candidates = flat[above]
        threshold = np.partition(candidates, n_above - k)[n_above - k]
    else:
        threshold = lowest
    keep = flat > threshold
    missing = k - int(np.count_nonzero(keep))
    if missing > 0:
        ties = np.flatnonzero(flat == threshold)
        if tiebreak is not None:
            ties = ties[np.argsort(-np.asarray(tiebreak).reshape(-1)[ties], kind="stable")]
        keep[ties[:missing]] = True
    return keep.reshape(np.shape(scores))


def best_position(scores, tiebreak=None):
    """Flat index of the entry `keep_top_k(scores, 1, tiebreak)` keeps, in
    one pass instead of a partition."""
    flat = np.ravel(scores)
    best = int(np.argmax(flat))
    if tiebreak is not None:
        ties = np.flatnonzero(flat == flat[best])
        best = int(ties[np.argmax(np.ravel(tiebreak)[ties])])
    return best


def _keep(scores, tiebreak, name, k):
    return keep_top_k(scores[name], k, tiebreak=None if tiebreak is None else tiebreak[name])


def check_finite(scores, what="pruning scores"):
    """Raises FloatingPointError if any array of `scores` (dict name ->
    array) holds NaN or inf; methods call it before they change anything."""
    for name, values in scores.items():
        if not np.all(np.isfinite(values)):
            raise FloatingPointError(
                f"The {what} of '{name}' contain NaN or inf (the weights "
                "diverged?). Refusing to compute a mask from them: it would "
                "silently keep or drop arbitrary weights. Lower the learning rate "
                "or check the data."
            )


class Allocation:
    """Base class. Subclasses implement `masks(scores, sparsity)`."""

    def __init__(self, overrides=None, keep_dense=()):
        overrides = dict(overrides or {})
        for name, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(
                    f"`overrides` sparsities must be in [0, 1). Received: overrides={{{name!r}: {value!r}}}"
                )
        for name in keep_dense:
            overrides[name] = 0.0
        self.overrides = overrides

    def fixed_sparsity(self, weight_name):
        """The override for a weight (by weight or layer name), or None."""
        if weight_name in self.overrides:
            return self.overrides[weight_name]
        return self.overrides.get(weight_name.rsplit("/", 1)[0])

    def check_names(self, weight_names):
        """Raises if an override names no masked weight (a typo)."""
        layer_names = {name.rsplit("/", 1)[0] for name in weight_names}
        unknown = [key for key in self.overrides if key not in weight_names and key not in layer_names]
        if unknown:
            raise ValueError(
                f"`overrides` / `keep_dense` name unknown layers {unknown}. "
                f"Masked weights: {sorted(weight_names)}"
            )

    def masks(self, scores, sparsity, tiebreak=None):
        """Keep-masks (bool arrays) for `scores` (dict name -> array).

        `tiebreak` (dict name -> array, optional) ranks equal scores at the
        threshold, larger first; without it ties go to the first positions.
        """
        raise NotImplementedError

    def _split(self, scores, tiebreak):
        check_finite(scores)
        self.check_names(list(scores))
        fixed = {n: self.fixed_sparsity(n) for n in scores if self.fixed_sparsity(n) is not None}
        free = [n for n in scores if n not in fixed]
        masks = {n: _keep(scores, tiebreak, n, keep_count(np.size(scores[n]), s)) for n, s in fixed.items()}
        return fixed, free, masks

    def get_config(self):
        return {"overrides": dict(self.overrides)}


class Uniform(Allocation):
    """Every layer at the target sparsity (tfmot's behaviour).

    Layers kept dense by an override lower the overall sparsity.
    """

    def masks(self, scores, sparsity, tiebreak=None):
        _, free, masks = self._split(scores, tiebreak)
        for name in free:
            masks[name] = _keep(scores, tiebreak, name, keep_count(np.size(scores[name]), sparsity))
        return masks


class Global(Allocation):
    """One threshold across all free layers; the total hits the target.

    Overridden layers get their own sparsity; the rest share what remains of
    the overall budget of `round(N * (1 - sparsity))` kept weights. Every
    free layer keeps at least its best-scoring weight (our guard: at extreme
    sparsities one threshold can otherwise empty a whole layer and
    disconnect the network).
    """

    def masks(self, scores, sparsity, tiebreak=None):
        fixed, free, masks = self._split(scores, tiebreak)
        total = sum(np.size(v) for v in scores.values())
        budget = round(total * (1.0 - sparsity)) - sum(int(m.sum()) for m in masks.values())
        if free:
            sizes = [np.size(scores[n]) for n in free]
            if budget < len(free):
                raise ValueError(
                    f"sparsity={sparsity} leaves no weights for the free layers after "
                    f"the overrides {self.overrides}. Lower the overrides' density or the sparsity."
                )
            order = None if tiebreak is None else np.concatenate([np.ravel(tiebreak[n]) for n in free])
            merged = np.concatenate([np.ravel(scores[n]) for n in free])
            merged = merged.astype(np.result_type(merged.dtype, np.float32), copy=False)
            starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
            best = [
                start + best_position(scores[n], None if tiebreak is None else tiebreak[n])
                for start, n in zip(starts, free)
            ]
            merged[best] = np.inf  # ranked first; the scores are finite (checked above)
            keep = keep_top_k(merged, budget, tiebreak=order)
            for name, part in zip(free, np.split(keep, np.cumsum(sizes)[:-1])):
                masks[name] = part.reshape(np.shape(scores[name]))
        return masks


class ERK(Allocation):
    """Erdos-Renyi-Kernel densities (Evci et al., RigL, arXiv:1911.11134).

    A layer's density is proportional to `(sum(shape) / prod(shape)) **
    power_scale`, scaled by one factor so that the total number of kept
    weights hits the target; layers that would exceed density 1 are made
    dense and the factor is solved again.
    """

    def __init__(self, overrides=None, keep_dense=(), power_scale=1.0):
        super().__init__(overrides, keep_dense)
        self.power_scale = float(power_scale)

    def densities(self, shapes, sparsity):
        """Per-weight density for `shapes` (dict name -> shape)."""
        sizes = {n: int(np.prod(s)) for n, s in shapes.items()}
        fixed = {n: self.fixed_sparsity(n) for n in shapes if self.fixed_sparsity(n) is not None}
        densities = {n: 1.0 - s for n, s in fixed.items()}
        total = sum(sizes.values())
        budget = total * (1.0 - sparsity) - sum(sizes[n] * d for n, d in densities.items())
        raw = {
            n: (sum(shape) / np.prod(shape)) ** self.power_scale
            for n, shape in shapes.items()
            if n not in fixed
        }
        dense = set()
        while True:
            rest = budget - sum(sizes[n] for n in dense)
            weighted = sum(raw[n] * sizes[n] for n in raw if n not in dense)
            if weighted <= 0:
                break
            factor = rest / weighted
            newly_dense = {n for n in raw if n not in dense and factor * raw[n] > 1.0}
            if not newly_dense:
                break
            dense |= newly_dense
        if budget < 0 or (weighted > 0 and factor <= 0):
            raise ValueError(
                f"sparsity={sparsity} cannot be met with the overrides {self.overrides}."
            )
        for n in raw:
            densities[n] = 1.0 if n in dense else factor * raw[n]
        return densities

    def masks(self, scores, sparsity, tiebreak=None):
        _, free, masks = self._split(scores, tiebreak)
        densities = self.densities({n: np.shape(v) for n, v in scores.items()}, sparsity)
        for name in free:
            masks[name] = _keep(scores, tiebreak, name, keep_count(np.size(scores[name]), 1.0 - densities[name]))
        return masks

    def get_config(self):
        return {**super().get_config(), "power_scale": self.power_scale}


_BY_NAME = {"layer": Uniform, "uniform": Uniform, "global": Global, "erk": ERK}


def get(allocation):
    """An Allocation from an instance or a name: "layer", "global", "erk"."""
    if isinstance(allocation, Allocation):
        return allocation
    if isinstance(allocation, str) and allocation.lower() in _BY_NAME:
        return _BY_NAME[allocation.lower()]()
    raise ValueError(
        f"`allocation` must be one of {sorted(_BY_NAME)} or a "
        f"tfsparse.allocation.Allocation. Received: allocation={allocation!r}"
    )
