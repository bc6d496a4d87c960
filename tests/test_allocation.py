import numpy as np
import pytest

from tfsparse import allocation


def scores(seed=0):
    rng = np.random.default_rng(seed)
    return {"a/kernel": rng.normal(size=(100, 50)), "b/kernel": rng.normal(size=(3, 3, 8, 16)) * 3,
            "c/kernel": rng.normal(size=(50, 10))}


def test_keep_top_k_is_exact_with_ties():
    values = np.array([0, 0, 0, 1, 1, 1, 2, 2], dtype=float)
    for k in range(0, 9):
        keep = allocation.keep_top_k(values, k)
        assert keep.sum() == k
        if k:
            assert values[keep].min() >= values[~keep].max() if k < 8 else True


def test_uniform_gives_every_layer_the_target_and_keeps_the_largest():
    s = scores()
    masks = allocation.Uniform().masks({k: np.abs(v) for k, v in s.items()}, 0.9)
    for name, mask in masks.items():
        assert mask.sum() == allocation.keep_count(s[name].size, 0.9)
        assert np.abs(s[name])[mask].min() >= np.abs(s[name])[~mask].max()


def test_global_uses_one_threshold_and_hits_the_total():
    s = {k: np.abs(v) for k, v in scores().items()}
    masks = allocation.Global().masks(s, 0.8)
    total = sum(v.size for v in s.values())
    assert sum(m.sum() for m in masks.values()) == round(total * 0.2)
    kept_min = min(s[n][m].min() for n, m in masks.items())
    pruned_max = max(s[n][~m].max() for n, m in masks.items())
    assert kept_min >= pruned_max
    # The layer with 3x larger scores keeps a larger share.
    assert masks["b/kernel"].mean() > masks["a/kernel"].mean()


def test_erk_densities_sum_to_target_and_stay_in_range():
    shapes = {k: v.shape for k, v in scores().items()}
    erk = allocation.ERK()
    densities = erk.densities(shapes, 0.9)
    sizes = {k: np.prod(v) for k, v in shapes.items()}
    kept = sum(densities[k] * sizes[k] for k in shapes)
    assert kept == pytest.approx(0.1 * sum(sizes.values()))
    assert all(0 < d <= 1 for d in densities.values())
    # Smaller fan-in/out means higher density (the ERK formula).
    assert densities["c/kernel"] > densities["a/kernel"]
    # At low sparsity the small layer saturates at density 1 and the rest compensate.
    low = erk.densities(shapes, 0.3)
    assert max(low.values()) == 1.0
    assert sum(low[k] * sizes[k] for k in shapes) == pytest.approx(0.7 * sum(sizes.values()))


def test_overrides_and_keep_dense():
    s = {k: np.abs(v) for k, v in scores().items()}
    masks = allocation.Global(overrides={"a": 0.9}, keep_dense=["c/kernel"]).masks(s, 0.8)
    assert masks["c/kernel"].all()
    assert masks["a/kernel"].sum() == 500
    total = sum(v.size for v in s.values())
    assert sum(m.sum() for m in masks.values()) == round(total * 0.2)
    with pytest.raises(ValueError, match="leaves no weights"):
        allocation.Global(overrides={"a": 0.5}).masks(s, 0.8)
    with pytest.raises(ValueError, match="unknown layers.*'nope'"):
        allocation.Uniform(overrides={"nope": 0.5}).masks(s, 0.5)
    with pytest.raises(ValueError, match=r"overrides.*1\.5"):
        allocation.Uniform(overrides={"a": 1.5})


def test_nan_scores_raise_instead_of_a_silent_mask():
    s = scores()
    s["b/kernel"][0, 0, 0, 0] = np.nan
    with pytest.raises(FloatingPointError, match="b/kernel"):
        allocation.Global().masks(s, 0.5)


def test_get_by_name_and_bad_name():
    assert isinstance(allocation.get("global"), allocation.Global)
    with pytest.raises(ValueError, match="allocation='magic'"):
        allocation.get("magic")


def test_keep_top_k_breaks_ties_by_the_tiebreak_values():
    scores = np.array([5.0, 1.0, 1.0, 1.0, 0.0])
    tiebreak = np.array([0.0, 0.1, 0.9, 0.5, 9.0])
    np.testing.assert_array_equal(allocation.keep_top_k(scores, 3, tiebreak=tiebreak), [1, 0, 1, 1, 0])
    np.testing.assert_array_equal(allocation.keep_top_k(scores, 3), [1, 1, 1, 0, 0])  # first positions
