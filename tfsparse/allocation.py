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

Granularity (`granularity=`): what a mask keeps or drops as one unit.
Single weights (the default), `Block((4, 1))` (whole blocks along the
kernel's input axis, LiteRT's sparse FULLY_CONNECTED layout) or `NM(2, 4)`
(N kept out of every M consecutive inputs, the 2:4 of sparse tensor cores).
See `Block` and `NM`; `get_granularity` parses the names the CLI takes.
"""

import copy
import re

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
    """Base class. Subclasses implement `allocate(scores, sparsity, tiebreak, shapes)`.

    Args:
        overrides, keep_dense: see the module docstring.
        granularity: `None` or `"weight"` (single weights), a `Block`, an
            `NM`, or a name `get_granularity` parses (`"block4x1"`,
            `"block16x1-max"`, `"2:4"`). `masks` applies it around
            `allocate`: blocks are pooled, allocated and expanded back; N:M
            replaces the allocation by its per-group rule.
    """

    def __init__(self, overrides=None, keep_dense=(), granularity=None):
        overrides = dict(overrides or {})
        for name, value in overrides.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ValueError(
                    f"`overrides` sparsities must be in [0, 1). Received: overrides={{{name!r}: {value!r}}}"
                )
        for name in keep_dense:
            overrides[name] = 0.0
        self.overrides = overrides
        self.set_granularity(granularity)

    def set_granularity(self, granularity):
        """Sets the granularity (see `get_granularity`); raises if an
        override is out of its reach."""
        granularity = get_granularity(granularity)
        for name, value in self.overrides.items():
            granularity.check_sparsity(value, "overrides", f"overrides={{{name!r}: {value!r}}}")
        self.granularity = granularity

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
        The masks follow `self.granularity`.
        """
        return self.granularity.masks(self, scores, sparsity, tiebreak)

    def allocate(self, scores, sparsity, tiebreak=None, shapes=None):
        """Keep-masks for `scores`, one entry per unit (a weight, or a block
        when `masks` hands in pooled block scores). `shapes` (dict name ->
        shape of the weight) is given when the scores are not the weights'
        own shape; only shape-based allocations (ERK) use it."""
        raise NotImplementedError

    def _split(self, scores, tiebreak):
        check_finite(scores)
        self.check_names(list(scores))
        fixed = {n: self.fixed_sparsity(n) for n in scores if self.fixed_sparsity(n) is not None}
        free = [n for n in scores if n not in fixed]
        masks = {n: _keep(scores, tiebreak, n, keep_count(np.size(scores[n]), s)) for n, s in fixed.items()}
        return fixed, free, masks

    def get_config(self):
        return {"overrides": dict(self.overrides), "granularity": self.granularity.name}


class Uniform(Allocation):
    """Every layer at the target sparsity (tfmot's behaviour).

    Layers kept dense by an override lower the overall sparsity.
    """

    def allocate(self, scores, sparsity, tiebreak=None, shapes=None):
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

    def __init__(self, overrides=None, keep_dense=(), min_density=None, granularity=None):
        super().__init__(overrides, keep_dense, granularity)
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

    def allocate(self, scores, sparsity, tiebreak=None, shapes=None):
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
    paper squares the weights; negative scores, pruned weights, rank last). Same `min_density` floor, overrides and
    exact total as `Global`.

    Within a layer LAMP ranks as the |scores| do, so `Global` only has to
    count how many weights each layer keeps, and it counts them on the
    sorted LAMP scores (one `np.sort` per layer, where mapping the scores
    back to their weights would cost an argsort: 3 to 5 s instead of 8 s on
    25 M values, 2 cores). Each layer then keeps its largest |scores|, ties
    going to `tiebreak` as in `keep_top_k`; ties of LAMP scores across
    layers at the threshold go to the first layers.
    """

    def allocate(self, scores, sparsity, tiebreak=None, shapes=None):
        check_finite(scores)
        ranked = {}
        for name, values in scores.items():
            # Scores are importances: a negative one marks a pruned weight
            # (magnitude_scores gives them -1) and must rank below every
            # live weight, not square into a large one.
            squares = np.sort(np.maximum(values, 0), axis=None).astype(np.float64)
            ranked[name] = _lamp_of_sorted(np.square(squares, out=squares))
        counts = {name: int(mask.sum()) for name, mask in super().allocate(ranked, sparsity).items()}
        return {name: _keep(scores, tiebreak, name, counts[name]) for name in scores}


class ERK(Allocation):
    """Erdos-Renyi-Kernel densities (Evci et al., RigL, arXiv:1911.11134).

    A layer's density is proportional to `(sum(shape) / prod(shape)) **
    power_scale`, scaled by one factor so that the total number of kept
    weights hits the target; layers that would exceed density 1 are made
    dense and the factor is solved again.
    """

    def __init__(self, overrides=None, keep_dense=(), power_scale=1.0, granularity=None):
        super().__init__(overrides, keep_dense, granularity)
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

    def allocate(self, scores, sparsity, tiebreak=None, shapes=None):
        _, free, masks = self._split(scores, tiebreak)
        # The densities come from the weights' shapes, also when the scores
        # are per block: the ERK formula is about the layer, not the blocks.
        densities = self.densities(shapes or {n: np.shape(v) for n, v in scores.items()}, sparsity)
        for name in free:
            masks[name] = _keep(scores, tiebreak, name, keep_count(np.size(scores[name]), 1.0 - densities[name]))
        return masks

    def get_config(self):
        return {**super().get_config(), "power_scale": self.power_scale}


_BY_NAME = {"layer": Uniform, "uniform": Uniform, "global": Global, "lamp": LAMP, "erk": ERK}

#: The names `get` takes, without the alias "uniform" (for `choices=` lists).
NAMES = ("layer", "global", "lamp", "erk")


def get(allocation, granularity=None):
    """An Allocation from an instance or a name: "layer", "global", "lamp", "erk".

    `granularity` (see `get_granularity`) is given to an allocation made
    from a name; an instance given with a granularity is copied with it
    (the instance itself is left as it is), unless it already has another
    one, which is an error.
    """
    if isinstance(allocation, Allocation):
        if granularity is None:
            return allocation
        wanted = get_granularity(granularity)
        if allocation.granularity.name not in ("weight", wanted.name):
            raise ValueError(
                f"The allocation already has granularity {allocation.granularity.name!r}; "
                f"give `granularity` in one place. Received: granularity={granularity!r}"
            )
        copied = copy.copy(allocation)
        copied.set_granularity(wanted)
        return copied
    if isinstance(allocation, str) and allocation.lower() in _BY_NAME:
        return _BY_NAME[allocation.lower()](granularity=granularity)
    raise ValueError(
        f"`allocation` must be one of {sorted(_BY_NAME)} or a "
        f"tfsparse.allocation.Allocation. Received: allocation={allocation!r}"
    )


# ---------------------------------------------------------------------------
# Granularity: single weights, blocks, N:M.
#
# Both structured granularities work on the kernel's second-to-last axis,
# the INPUT axis of Dense (in, out) and Conv (..., in, out) kernels: the axis
# a matrix-vector product reduces over, and the one LiteRT's sparse
# FULLY_CONNECTED blocks (TFLite stores the weights (out, in), blocks 1x4 /
# 1x16) and tfmot's `sparsity_m_by_n` group. A kernel of rank 1 is taken as
# one column (n, 1). For other layouts the axis is still the second-to-last,
# whatever it means there: an Embedding table (vocab, dim) is grouped along
# the vocabulary (4 consecutive tokens of one feature; a tied output
# projection reads it transposed, so no sparse kernel uses that), an
# EinsumDense kernel along its second-to-last axis (the input of the common
# "...c,cd->...d"; the heads of MultiHeadAttention's (dim, heads, head_dim)
# query), a Conv*Transpose kernel (..., out, in) along its outputs. The
# masks are exact in every case; only the LiteRT speed needs the input axis.


def _as_stack(shape):
    """(leading, rows, columns) view of a weight shape: the last two axes,
    rows = the input axis; rank 1 is one column."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        return 1, int(np.prod(shape)), 1
    return int(np.prod(shape[:-2])), shape[-2], shape[-1]


class Granularity:
    """What a mask keeps or drops as one unit. Base class; see `Weight`,
    `Block`, `NM`."""

    name = None

    def masks(self, allocation, scores, sparsity, tiebreak=None):
        raise NotImplementedError

    def check_sparsity(self, sparsity, argument, received=None):
        """Raises ValueError (naming `argument`) if `sparsity` cannot be
        reached at this granularity."""

    def get_config(self):
        return {"granularity": self.name}

    def __eq__(self, other):
        return isinstance(other, Granularity) and other.name == self.name

    def __hash__(self):
        return hash(self.name)

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r})"


class Weight(Granularity):
    """Single weights: the allocation ranks every weight on its own."""

    name = "weight"

    def masks(self, allocation, scores, sparsity, tiebreak=None):
        return allocation.allocate(scores, sparsity, tiebreak)


class Block(Granularity):
    """Blocks of `block_size` weights along the kernel's last two axes.

    `block_size=(4, 1)`: 4 consecutive inputs of one output unit, LiteRT's
    float sparse FULLY_CONNECTED block (TFLite 1x4 on its (out, in)
    weights); `(16, 1)` is its int8 block (1x16). Leading axes (a conv's
    kernel window) are blocks of 1.

    tfmot's semantics: each block's score is the average (`pooling="avg"`)
    or the maximum (`"max"`) of its weights' scores; the allocation runs on
    the block scores exactly as on weights (Uniform keeps
    `keep_count(blocks, sparsity)` blocks per layer, Global / LAMP one
    threshold over the block scores of all free layers, with the total
    and the `min_density` floors counted in blocks, ERK its densities from
    the weights' shapes applied to the block counts), and a kept block
    keeps all its weights.

    Exactness: the counts are exact in blocks. When the kernel's last two
    dimensions are multiples of the block, kept weights = kept blocks x
    block size, so the weight sparsity is exactly the block sparsity.
    Otherwise the last row / column of blocks is partial: a partial block
    counts as one block (pooled over the weights it has, never padded with
    made-up scores) but keeps fewer weights, so the kept weights fall short
    of the target by at most the weights missing from the kept partial
    blocks. Global does not weigh blocks by their size: one threshold over
    block scores, each block one unit.

    LiteRT (TF 2.21 converter): FULLY_CONNECTED weights whose zeros are
    whole 1x4 (float) / 1x16 (int8) blocks are stored block-encoded and
    computed sparse, without a DENSIFY op, when at least 30 % of the
    weights are zero and the block-encoded zero fraction is above 0.9
    (float) / 0.8 (int8) of the plain zero fraction. Keep the input
    dimension a multiple of the block: the converter encodes whole blocks
    only and silently drops the weights of a partial last block
    (`tfsparse inspect model.tflite` flags such tensors as LOST).
    """

    def __init__(self, block_size=(4, 1), pooling="avg"):
        try:
            rows, columns = block_size
        except (TypeError, ValueError):
            rows = columns = None
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in (rows, columns)):
            raise ValueError(
                f"`block_size` must be a pair of positive integers (rows along the input axis, "
                f"columns along the output axis), e.g. (4, 1). Received: block_size={block_size!r}"
            )
        if not isinstance(pooling, str) or pooling.lower() not in ("avg", "max"):
            raise ValueError(f'`pooling` must be "avg" or "max". Received: pooling={pooling!r}')
        self.block_size = (int(rows), int(columns))
        self.pooling = pooling.lower()

    @property
    def name(self):
        rows, columns = self.block_size
        return f"block{rows}x{columns}" + ("-max" if self.pooling == "max" else "")

    def _grid(self, shape):
        lead, rows, columns = _as_stack(shape)
        return lead, rows, columns, -(-rows // self.block_size[0]), -(-columns // self.block_size[1])

    def pool(self, values):
        """Block scores of one weight's `values`: (leading, row blocks,
        column blocks), average or maximum over the weights of each block."""
        values = np.asarray(values)
        lead, rows, columns, grid_rows, grid_columns = self._grid(values.shape)
        block_rows, block_columns = self.block_size
        x = values.reshape(lead, rows, columns)
        x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
        pad = ((0, 0), (0, grid_rows * block_rows - rows), (0, grid_columns * block_columns - columns))
        fill = -np.inf if self.pooling == "max" else 0.0
        if any(p[1] for p in pad):
            x = np.pad(x, pad, constant_values=fill)
        x = x.reshape(lead, grid_rows, block_rows, grid_columns, block_columns)
        if self.pooling == "max":
            return x.max(axis=(2, 4))
        # The average over the weights a partial block has, not over its padding.
        row_counts = np.full(grid_rows, block_rows)
        row_counts[-1] = rows - (grid_rows - 1) * block_rows
        column_counts = np.full(grid_columns, block_columns)
        column_counts[-1] = columns - (grid_columns - 1) * block_columns
        return x.sum(axis=(2, 4)) / np.outer(row_counts, column_counts)

    def expand(self, keep, shape):
        """A block keep-mask from `pool`'s grid back to the weight `shape`."""
        lead, rows, columns, grid_rows, grid_columns = self._grid(shape)
        keep = np.asarray(keep).reshape(lead, grid_rows, grid_columns)
        full = np.repeat(np.repeat(keep, self.block_size[0], axis=1), self.block_size[1], axis=2)
        return full[:, :rows, :columns].reshape(tuple(shape))

    def masks(self, allocation, scores, sparsity, tiebreak=None):
        check_finite(scores)
        shapes = {name: np.shape(values) for name, values in scores.items()}
        pooled = {name: self.pool(values) for name, values in scores.items()}
        pooled_tiebreak = None if tiebreak is None else {name: self.pool(tiebreak[name]) for name in scores}
        keep = allocation.allocate(pooled, sparsity, pooled_tiebreak, shapes=shapes)
        return {name: self.expand(keep[name], shapes[name]) for name in scores}

    def get_config(self):
        return {"block_size": self.block_size, "pooling": self.pooling}


class NM(Granularity):
    """N kept out of every M consecutive weights along the input axis.

    `NM(2, 4)` is the 2:4 pattern of sparse tensor cores (tfmot's
    `sparsity_m_by_n=(2, 4)`). Groups are M consecutive entries of the
    kernel's second-to-last axis (the input axis; see the module notes)
    for one output unit and one position of the leading axes.

    Gradual: at sparsity `s` every group keeps `max(N, round(M * (1 - s)))`
    of its M weights (the largest scores; ties to the `tiebreak`, then the
    first positions), so a schedule ramping up to `1 - N/M` ends exactly at
    N:M (2:4 keeps 4, then 3 from s = 0.25 on, then 2 from s = 0.5). A
    sparsity above `1 - N/M` cannot be N:M and is a ValueError. When the
    input dimension is not a multiple of M, the last group has L < M
    weights and keeps `min(L, k)` with k the full groups' count: it is
    dense while the full groups keep at least L, and ends with at most N,
    so the kernel satisfies `check_m_by_n`.

    The rule is per group, so the allocation's kind (layer, global, LAMP,
    ERK, its `min_density`) does not change the masks; its overrides and
    `keep_dense` do (an override is the sparsity of that layer's groups and
    may not exceed `1 - N/M` either).
    """

    def __init__(self, n=2, m=4):
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (n, m)) or not 0 < n < m:
            raise ValueError(f"N:M needs integers 0 < n < m, e.g. n=2, m=4. Received: n={n!r}, m={m!r}")
        self.n, self.m = int(n), int(m)

    @property
    def name(self):
        return f"{self.n}:{self.m}"

    @property
    def max_sparsity(self):
        return 1.0 - self.n / self.m

    def check_sparsity(self, sparsity, argument, received=None):
        if sparsity > self.max_sparsity + 1e-9:
            raise ValueError(
                f"`{argument}` asks for sparsity {sparsity}, above the {self.max_sparsity:g} that "
                f"{self.name} sparsity ({self.n} kept of every {self.m}) reaches. "
                f"Received: {received or f'{argument}={sparsity!r}'}"
            )

    def group_keep(self, sparsity):
        """Weights a full group of M keeps at `sparsity`."""
        return min(self.m, max(self.n, int(round(self.m * (1.0 - sparsity)))))

    def keep(self, scores, k, tiebreak=None):
        """Keep-mask of one weight: the `k` best of every group of M."""
        scores = np.asarray(scores)
        shape = scores.shape
        lead, rows, columns = _as_stack(shape)
        groups = -(-rows // self.m)

        def grouped(values):
            x = np.asarray(values).reshape(lead, rows, columns)
            x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
            # Padding ranks last; a partial group keeps min(L, k) of its own.
            x = np.pad(x, ((0, 0), (0, groups * self.m - rows), (0, 0)), constant_values=-np.inf)
            return -x.reshape(lead, groups, self.m, columns).transpose(0, 1, 3, 2)

        keys = (grouped(scores),) if tiebreak is None else (grouped(tiebreak), grouped(scores))
        order = np.lexsort(keys, axis=-1)  # stable: equal keys keep the first positions first
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(self.m), axis=-1)
        keep = (ranks < k).transpose(0, 1, 3, 2).reshape(lead, groups * self.m, columns)
        return keep[:, :rows].reshape(shape)

    def masks(self, allocation, scores, sparsity, tiebreak=None):
        check_finite(scores)
        allocation.check_names(list(scores))
        self.check_sparsity(sparsity, "sparsity")
        masks = {}
        for name, values in scores.items():
            fixed = allocation.fixed_sparsity(name)
            k = self.group_keep(sparsity if fixed is None else fixed)
            masks[name] = self.keep(values, k, None if tiebreak is None else tiebreak[name])
        return masks

    def get_config(self):
        return {"n": self.n, "m": self.m}


#: Examples of the names `get_granularity` parses (for help texts).
GRANULARITY_NAMES = ("weight", "block4x1", "block16x1", "2:4")


def get_granularity(granularity):
    """A `Granularity` from an instance, None, or a name.

    Names: `"weight"` (or None); `"block<R>x<C>"`, optionally ending in
    `"-avg"` / `"-max"` (the pooling, default avg): `Block((R, C))`, so
    `"block4x1"` for LiteRT's float blocks and `"block16x1"` for its int8
    ones; `"<N>:<M>"`: `NM(N, M)`, e.g. `"2:4"`.
    """
    if granularity is None:
        return Weight()
    if isinstance(granularity, Granularity):
        return granularity
    if isinstance(granularity, str):
        text = granularity.strip().lower()
        if text == "weight":
            return Weight()
        block = re.fullmatch(r"block(\d+)x(\d+)(?:-(avg|max))?", text)
        if block:
            return Block((int(block[1]), int(block[2])), block[3] or "avg")
        group = re.fullmatch(r"(\d+):(\d+)", text)
        if group and 0 < int(group[1]) < int(group[2]):
            return NM(int(group[1]), int(group[2]))
    raise ValueError(
        '`granularity` must be None, "weight", "block<R>x<C>" (e.g. "block4x1", "block16x1-max"), '
        '"<N>:<M>" with 0 < N < M (e.g. "2:4"), or a tfsparse.allocation.Granularity '
        f"(Block, NM). Received: granularity={granularity!r}"
    )


def granularity_name(text):
    """`get_granularity(text).name`: the CLI's `type=` for `--granularity`
    (a bad name becomes argparse's usage error, with this module's message)."""
    import argparse

    try:
        return get_granularity(text).name
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def check_m_by_n(kernel, n=2, m=4):
    """True if every group of `m` consecutive entries along the kernel's
    input axis (second-to-last; see `NM`) holds at most `n` nonzeros, as
    tfmot's `check_sparsity_m_by_n`. A last partial group must hold at
    most `n` as well."""
    group = NM(n, m)
    nonzero = np.asarray(kernel) != 0
    lead, rows, columns = _as_stack(nonzero.shape)
    groups = -(-rows // group.m)
    x = np.pad(nonzero.reshape(lead, rows, columns), ((0, 0), (0, groups * group.m - rows), (0, 0)))
    return bool((x.reshape(lead, groups, group.m, columns).sum(axis=2) <= group.n).all())
