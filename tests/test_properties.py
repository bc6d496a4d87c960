"""Property-based tests (hypothesis): schedules, allocations, exact mask
counts, and the compressed format's round trip and corruption detection."""

import functools

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tfsparse import allocation, compression, schedules

sparsities = st.floats(0.0, 0.999, allow_nan=False)
FAST = settings(max_examples=200, deadline=None)


@FAST
@given(st.floats(0.0, 0.99), st.floats(0.0, 0.99), st.integers(0, 1000), st.integers(0, 5000),
       st.integers(1, 5), st.integers(1, 500))
def test_polynomial_decay_moves_monotonically_to_its_final_value(initial, final, begin, length, power, frequency):
    schedule = schedules.PolynomialDecay(initial, final, begin, begin + length, power, frequency)
    steps = np.linspace(0, begin + length + 100, 60).astype(int)
    values = np.array([schedule(int(step)) for step in steps])
    low, high = min(initial, final), max(initial, final)
    assert np.all((values >= low - 1e-12) & (values <= high + 1e-12))
    direction = np.sign(final - initial)
    assert np.all(direction * np.diff(values) >= -1e-12)
    assert schedule(begin + length) == pytest.approx(final)
    assert schedule.should_prune(begin) and not schedule.should_prune(begin + length + 1)


@FAST
@given(st.floats(0.01, 0.99), st.integers(3, 200), st.floats(0.1, 20.0))
def test_asni_sigmoid_increases_below_its_magnitude(magnitude, total, scale):
    schedule = schedules.Sigmoid(magnitude, total, scale)
    values = np.array([schedule(epoch) for epoch in range(total)])
    assert np.all(np.diff(values) >= 0) and np.all((values >= 0) & (values <= magnitude))
    assert schedule(total / 2) == pytest.approx(magnitude / 2)


@FAST
@given(st.floats(0.01, 0.99), st.integers(2, 200), st.floats(0.05, 5.0))
def test_optg_sigmoid_ending_at_target_never_overshoots(target, total, beta):
    schedule = schedules.SigmoidStep(target, total, beta, end_at_target=True)
    values = np.array([schedule(epoch) for epoch in range(total)])
    assert np.all(np.diff(values) >= -1e-12) and np.all(values <= target + 1e-12)
    assert values[-1] == pytest.approx(target)


scores_arrays = hnp.arrays(
    np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12),
    # few distinct values: many ties at the threshold
    elements=st.sampled_from([0.0, -1.0, 0.5, 2.0, 3.0, 1e-7]) | st.floats(-1e3, 1e3, width=32),
)


@FAST
@given(scores_arrays, st.data())
def test_keep_top_k_keeps_exactly_k_of_the_largest(scores, data):
    k = data.draw(st.integers(0, scores.size))
    keep = allocation.keep_top_k(scores, k)
    assert keep.shape == scores.shape and int(keep.sum()) == k
    if 0 < k < scores.size:
        assert scores[keep].min() >= scores[~keep].max()


@FAST
@given(scores_arrays, st.data())
def test_best_position_is_the_entry_keep_top_k_keeps_first(scores, data):
    tiebreak = data.draw(st.none() | hnp.arrays(np.float32, scores.shape, elements=st.sampled_from([0.0, 1.0, 2.0])))
    expected = np.flatnonzero(allocation.keep_top_k(scores, 1, tiebreak=tiebreak))
    assert [allocation.best_position(scores, tiebreak)] == list(expected)


layer_shapes = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=4),
    st.tuples(st.integers(1, 40), st.integers(1, 40)) | st.tuples(st.integers(1, 3), st.integers(1, 3),
                                                                  st.integers(1, 8), st.integers(1, 16)),
    min_size=1, max_size=5,
)


def random_scores(shapes, seed):
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in shapes.items()}


@FAST
@given(layer_shapes, sparsities, st.integers(0, 2**16))
def test_uniform_gives_every_layer_its_exact_count(shapes, sparsity, seed):
    scores = random_scores(shapes, seed)
    masks = allocation.Uniform().masks(scores, sparsity)
    for name, mask in masks.items():
        assert mask.shape == scores[name].shape
        assert int(mask.sum()) == allocation.keep_count(mask.size, sparsity)


@FAST
@given(layer_shapes, sparsities, st.integers(0, 2**16))
def test_global_hits_the_total_and_leaves_no_layer_empty(shapes, sparsity, seed):
    scores = random_scores(shapes, seed)
    total = sum(s.size for s in scores.values())
    budget = round(total * (1 - sparsity))
    if budget < len(scores):
        with pytest.raises(ValueError, match="leaves no weights"):
            allocation.Global().masks(scores, sparsity)
        return
    masks = allocation.Global().masks(scores, sparsity)
    assert sum(int(m.sum()) for m in masks.values()) == budget
    assert all(m.any() for m in masks.values())


@FAST
@given(layer_shapes, sparsities, st.none() | st.floats(0.0, 0.3), st.sampled_from([allocation.Global, allocation.LAMP]),
       st.floats(1e-4, 1e4), st.integers(0, 2**16))
def test_global_and_lamp_hit_the_total_and_keep_the_floor(shapes, sparsity, min_density, cls, scale, seed):
    scores = random_scores(shapes, seed)
    first = sorted(scores)[0]
    scores[first] = scores[first] * np.float32(scale)  # a layer of another scale
    sizes = {n: s.size for n, s in scores.items()}
    total = sum(sizes.values())
    budget = round(total * (1 - sparsity))
    method = cls(min_density=min_density)
    if budget < len(scores):
        with pytest.raises(ValueError, match="leaves no weights"):
            method.masks(scores, sparsity)
        return
    if min_density is None:  # 1%, or half the density when lower; else the 1-weight guard
        floors = {n: allocation.keep_count(size, 1 - min(0.01, 0.5 * budget / total)) for n, size in sizes.items()}
        if sum(floors.values()) > budget:
            floors = dict.fromkeys(sizes, 1)
    else:
        floors = {n: allocation.keep_count(size, 1 - min_density) for n, size in sizes.items()}
        if sum(floors.values()) > budget:
            with pytest.raises(ValueError, match=f"Received: min_density={min_density}, sparsity={sparsity}"):
                method.masks(scores, sparsity)
            return
    masks = method.masks(scores, sparsity)
    assert sum(int(m.sum()) for m in masks.values()) == budget
    for n, mask in masks.items():
        assert mask.shape == scores[n].shape and int(mask.sum()) >= floors[n]
        if 0 < mask.sum() < mask.size:  # each layer keeps its best (LAMP too: negatives rank last)
            assert scores[n][mask].min() >= scores[n][~mask].max()


@FAST
@given(layer_shapes, st.floats(0.5, 0.999), st.floats(0.0, 0.2), st.booleans(), st.integers(0, 2**16))
def test_global_floor_equals_forcing_every_layer_floor(shapes, sparsity, min_density, with_tiebreak, seed):
    # Few distinct values and layers of very different scales: ties and short layers.
    rng = np.random.default_rng(seed)
    scores = {name: rng.integers(0, 4, size=shape).astype(np.float32) * np.float32(10.0 ** rng.integers(-3, 3))
              for name, shape in shapes.items()}
    tiebreak = {name: rng.integers(0, 3, size=shape).astype(np.float32) for name, shape in shapes.items()} \
        if with_tiebreak else None
    names, sizes = list(scores), [s.size for s in scores.values()]
    budget = round(sum(sizes) * (1 - sparsity))
    floors = [allocation.keep_count(size, 1 - min_density) for size in sizes]
    if budget < len(names) or sum(floors) > budget:
        return
    masks = allocation.Global(min_density=min_density).masks(scores, sparsity, tiebreak=tiebreak)
    # The reference: every layer's top `floor` forced, then one top-k over all.
    merged = np.concatenate([scores[n].ravel() for n in names])
    order = None if tiebreak is None else np.concatenate([tiebreak[n].ravel() for n in names])
    start = 0
    for name, size, floor in zip(names, sizes, floors):
        top = allocation.keep_top_k(scores[name], floor, None if tiebreak is None else tiebreak[name]).ravel()
        merged[start:start + size][top] = np.inf
        start += size
    expected = np.split(allocation.keep_top_k(merged, budget, tiebreak=order), np.cumsum(sizes)[:-1])
    for name, part in zip(names, expected):
        np.testing.assert_array_equal(masks[name].ravel(), part)


@FAST
@given(layer_shapes, sparsities, st.integers(0, 2**16))
def test_erk_densities_sum_to_the_target(shapes, sparsity, seed):
    erk = allocation.ERK()
    densities = erk.densities(shapes, sparsity)
    sizes = {name: int(np.prod(shape)) for name, shape in shapes.items()}
    total = sum(sizes.values())
    assert all(0 < d <= 1 + 1e-9 for d in densities.values())
    kept = sum(sizes[n] * densities[n] for n in shapes)
    if all(d < 1 for d in densities.values()) or kept < total:
        assert kept == pytest.approx(total * (1 - sparsity), rel=1e-6, abs=1e-6)
    masks = erk.masks(random_scores(shapes, seed), sparsity)
    counts = sum(int(m.sum()) for m in masks.values())
    # Exact per layer up to rounding (and the one weight every layer keeps).
    assert abs(counts - total * (1 - sparsity)) <= len(shapes) + 1e-6


@functools.lru_cache(maxsize=1)
def small_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((6,)), keras.layers.Dense(16), keras.layers.Dense(3)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.floats(0.0, 0.99), st.integers(1, 8), st.sampled_from(["kmeans", "uniform"]), st.integers(0, 2**16))
def test_compressed_files_round_trip(tmp_path, sparsity, bits, method, seed):
    model = small_model()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        kernel = rng.normal(size=layer.kernel.shape).astype(np.float32)
        kernel[rng.random(kernel.shape) < sparsity] = 0.0
        layer.kernel.assign(kernel)
        layer.bias.assign(rng.normal(size=layer.bias.shape).astype(np.float32))
    path = tmp_path / "model.tfsz"
    compression.compress(model, path, bits=bits, method=method)
    expected = compression.quantized_model(model, bits, method)
    restored = compression.decompress(path)
    for a, b in zip(expected.weights, restored.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


@pytest.fixture(scope="module")
def compressed_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("tfsz") / "model.tfsz"
    compression.compress(small_model(), path, bits=4)
    return path.read_bytes()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_corruption_of_a_compressed_file_is_detected(compressed_bytes, tmp_path, data):
    content = bytearray(compressed_bytes)
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "overwrite"]))
    if kind == "flip":
        position = data.draw(st.integers(0, len(content) - 1))
        content[position] ^= data.draw(st.integers(1, 255))
    elif kind == "truncate":
        content = content[: data.draw(st.integers(0, len(content) - 1))]
    elif kind == "append":
        content += data.draw(st.binary(min_size=1, max_size=64))
    else:
        start = data.draw(st.integers(0, len(content) - 1))
        patch = data.draw(st.binary(min_size=1, max_size=32))
        if bytes(content[start:start + len(patch)]) == patch[: len(content) - start]:
            return  # the "corruption" changed nothing
        content[start:start + len(patch)] = patch
    path = tmp_path / "damaged.tfsz"
    path.write_bytes(bytes(content))
    with pytest.raises(ValueError, match="damaged.tfsz"):
        compression.decompress(path)
