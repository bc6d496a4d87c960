"""Per-layer sparsity budgets: uniform, global, LAMP, ERK.

An allocation turns importance scores (one array per masked weight, larger
means keep) and an overall target sparsity into boolean keep-masks. It works
on numpy on the host: a global threshold over 25 M values with
`np.partition` takes a fraction of a second where `tf.math.top_k` takes
seconds (see benchmarks/mask_update.py).

Counts are exact: a layer of n weights at sparsity s keeps
`max(round(n * (1 - s)), 1)` weights, as tfmot does, and ties at the
threshold are broken by position instead of keeping them all.

`Global` and `LAMP` (one threshold across layers, on the scores or on
their layer-normalized LAMP transform) keep a per-layer floor,
`min_density` (by default 1% of each layer), so that one threshold cannot
empty a whole layer and disconnect the network.

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
    the overall budget of `round(N * (1 - sparsity))` kept weights.

    Per-layer floor (`min_density`): every free layer first keeps its
    `keep_count(n, 1 - floor)` best weights (at least 1); these are taken
    out of the budget and the rest goes by the one threshold, so a layer
    keeps `max(floor count, its share above the threshold)` and the total
    is still exact. Without a floor one threshold disconnects deep nets: at
    a fresh initialization the scale of a kernel falls with its fan-in, so
    the largest layers (ResNet50's conv5, EfficientNet's `top_conv`, a new
    head) hold the smallest weights and lose all but one of them
    (issue #19, benchmarks/allocation_floor.py).

    Args:
        min_density: `None` (default): 1% of each layer, or half the average
            density left to the free layers when that is lower (above 98%
            sparsity). 1% is what uniform pruning keeps at 99% sparsity,
            beyond the sparsities most work targets, so a layer at the floor
            is no sparser than in a uniformly pruned model that still
            trains; and the floors take at most half of the budget (a fifth
            at 95% sparsity), so the threshold still places most of it.
            The default never makes a reachable target fail. A number in
            [0, 1): that floor, exactly (`0` keeps only each layer's best
            weight, the guard before issue #19); a ValueError if the floors
            of the free layers exceed their budget.
        overrides, keep_dense: see `Allocation`.
    """

    #: The default floor: 1% of each layer (capped at half the free density).
    DEFAULT_MIN_DENSITY = 0.01

    def __init__(self, overrides=None, keep_dense=(), min_density=None):
        super().__init__(overrides, keep_dense)
        if min_density is not None and (
            isinstance(min_density, bool)
            or not isinstance(min_density, (int, float, np.floating, np.integer))
            or not 0 <= min_density < 1
        ):
            raise ValueError(
                f"`min_density` must be None or a number in [0, 1). Received: min_density={min_density!r}"
            )
        self.min_density = None if min_density is None else float(min_density)

    def floor_counts(self, sizes, budget, sparsity):
        """Weights each free layer (of `sizes`) keeps whatever its scores,
        given the `budget` of kept weights left to the free layers."""
        if self.min_density is None:
            density = min(self.DEFAULT_MIN_DENSITY, 0.5 * budget / sum(sizes))
            counts = [keep_count(n, 1.0 - density) for n in sizes]
            if sum(counts) > budget:  # rounding on many tiny layers: the 1-weight guard
                counts = [1] * len(sizes)
            return counts
        counts = [keep_count(n, 1.0 - self.min_density) for n in sizes]
        if sum(counts) > budget:
            raise ValueError(
                f"`min_density` asks the {len(sizes)} free layers to keep at least "
                f"{sum(counts)} weights, more than the {budget} that sparsity={sparsity} "
                f"leaves them (after the overrides {self.overrides}). Lower `min_density` "
                f"or the sparsity. Received: min_density={self.min_density}, sparsity={sparsity}"
            )
        return counts

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
            floors = self.floor_counts(sizes, budget, sparsity)
            order = None if tiebreak is None else np.concatenate([np.ravel(tiebreak[n]) for n in free])
            merged = np.concatenate([np.ravel(scores[n]) for n in free])
            merged = merged.astype(np.result_type(merged.dtype, np.float32), copy=False)
            bounds = np.cumsum(sizes)[:-1]
            starts = np.concatenate([[0], bounds])
            # The floors rank first (np.inf; the scores are finite, checked
            # above) and the threshold fills the rest of the budget. Forcing
            # only the layers that fall short gives the same masks as forcing
            # all (a layer above its floor keeps its best ones anyway) without
            # a partition per layer: each round forces the layers short at the
            # current threshold. The threshold can only rise, so a new round
            # chooses among what the last one kept and the newly forced.
            for start, name in zip(starts, free):
                merged[start + best_position(scores[name], None if tiebreak is None else tiebreak[name])] = np.inf
            forced = {i for i, floor in enumerate(floors) if floor == 1}
            keep = keep_top_k(merged, budget, tiebreak=order)
            while True:
                parts = np.split(keep, bounds)
                short = [i for i in range(len(free)) if i not in forced and np.count_nonzero(parts[i]) < floors[i]]
                if not short:
                    break
                for i in short:
                    span = slice(starts[i], starts[i] + sizes[i])
                    top = keep_top_k(merged[span], floors[i], tiebreak=None if order is None else order[span])
                    merged[span][top] = np.inf
                    keep[span] |= top
                forced.update(short)
                candidates = np.flatnonzero(keep)
                chosen = keep_top_k(merged[candidates], budget, tiebreak=None if order is None else order[candidates])
                keep = np.zeros(merged.size, dtype=bool)
                keep[candidates[chosen]] = True
            for name, part in zip(free, parts):
                masks[name] = part.reshape(np.shape(scores[name]))
        return masks

    def get_config(self):
        return {**super().get_config(), "min_density": self.min_density}


def _lamp_of_sorted(squares):
    """LAMP scores of ascending squared scores (float64, modified in place)."""
    tail = np.cumsum(squares[::-1])[::-1]  # sum of the squares from position u on
    repeated = np.flatnonzero(squares[1:] == squares[:-1]) + 1
    if repeated.size:  # equal values share the tail of the first of their run
        tail[repeated] = tail[np.searchsorted(squares, squares[repeated])]
    return np.divide(squares, tail, out=squares, where=tail > 0)


def lamp_scores(scores):
    """LAMP scores of one layer's importance `scores` (any shape).

    Lee et al., "Layer-adaptive sparsity for the magnitude-based pruning"
    (ICLR 2021, arXiv:2010.07611): with the squared scores sorted ascending,
    `score(u) = s_u**2 / sum(s_v**2 for v >= u)`. A weight's score is its
    share of the mass of the weights at least as large, so it does not
    depend on the layer's scale and the largest weight of every layer scores
    1. Equal scores get the same LAMP score (the denominator counts all of
    them; the paper's sort would rank them by position); ties are left to
    the allocation's tiebreak. Zeros (pruned weights) score 0. Float64,
    same shape.
    """
    squares = np.square(np.asarray(scores, dtype=np.float64)).reshape(-1)
    order = np.argsort(squares)  # ties are handled by value, any order will do
    result = np.empty_like(squares)
    result[order] = _lamp_of_sorted(squares[order])
    return result.reshape(np.shape(scores))


class LAMP(Global):
    """Layer-adaptive magnitude pruning: one threshold over LAMP scores.

    `Global` on the `lamp_scores` of each layer (Lee et al., ICLR 2021,
    arXiv:2010.07611): the scores are normalized within each layer, so the
    threshold no longer favours the layers of large weights, and a layer
    keeps a share that depends on the shape of its distribution, not on its
    scale. Made for magnitude scores (the scores given are squared, as the
    paper squares the weights). Same `min_density` floor, overrides and
    exact total as `Global`.

    Within a layer LAMP ranks as the |scores| do, so `Global` only has to
    count how many weights each layer keeps, and it counts them on the
    sorted LAMP scores (one `np.sort` per layer, where mapping the scores
    back to their weights would cost an argsort: 3 to 5 s instead of 8 s on
    25 M values, 2 cores). Each layer then keeps its largest |scores|, ties
    going to `tiebreak` as in `keep_top_k`; ties of LAMP scores across
    layers at the threshold go to the first layers.
    """

    def masks(self, scores, sparsity, tiebreak=None):
        check_finite(scores)
        magnitudes = {name: np.abs(values) for name, values in scores.items()}
        ranked = {}
        for name, values in magnitudes.items():
            squares = np.sort(values, axis=None).astype(np.float64)
            ranked[name] = _lamp_of_sorted(np.square(squares, out=squares))
        counts = {name: int(mask.sum()) for name, mask in super().masks(ranked, sparsity).items()}
        return {name: _keep(magnitudes, tiebreak, name, counts[name]) for name in scores}


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


_BY_NAME = {"layer": Uniform, "uniform": Uniform, "global": Global, "lamp": LAMP, "erk": ERK}

#: The names `get` takes, without the alias "uniform" (for `choices=` lists).
NAMES = ("layer", "global", "lamp", "erk")


def get(allocation):
    """An Allocation from an instance or a name: "layer", "global", "lamp", "erk"."""
    if isinstance(allocation, Allocation):
        return allocation
    if isinstance(allocation, str) and allocation.lower() in _BY_NAME:
        return _BY_NAME[allocation.lower()]()
    raise ValueError(
        f"`allocation` must be one of {sorted(_BY_NAME)} or a "
        f"tfsparse.allocation.Allocation. Received: allocation={allocation!r}"
    )
