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


def test_get_config_records_the_floor():
    assert allocation.Global(min_density=0.02).get_config()["min_density"] == 0.02
    assert allocation.Global().get_config()["min_density"] is None
    assert isinstance(allocation.get("lamp"), allocation.LAMP)
    assert isinstance(allocation.get("LAMP"), allocation.Global)  # a Global on LAMP scores


def floor_case(seed=0):
    """A large layer of small-magnitude weights (scaled by 1e-3), as a fresh
    layer of large fan-in is, next to two layers of normal scale."""
    rng = np.random.default_rng(seed)
    return {"big/kernel": np.abs(rng.normal(size=(200, 200))) * 1e-3,
            "a/kernel": np.abs(rng.normal(size=(100, 50))), "c/kernel": np.abs(rng.normal(size=(50, 10)))}


def test_global_without_a_floor_empties_the_small_scale_layer():
    s = floor_case()
    masks = allocation.Global(min_density=0).masks(s, 0.9)  # the guard before issue #19
    assert masks["big/kernel"].sum() == 1
    assert sum(m.sum() for m in masks.values()) == round(sum(v.size for v in s.values()) * 0.1)


@pytest.mark.parametrize("min_density", [None, 0.01, 0.05])
def test_global_floor_keeps_every_layer_at_least_min_density(min_density):
    s = floor_case()
    masks = allocation.Global(min_density=min_density).masks(s, 0.9)
    total = sum(v.size for v in s.values())
    assert sum(m.sum() for m in masks.values()) == round(total * 0.1)  # still exact
    floor = 0.01 if min_density is None else min_density
    for name, mask in masks.items():
        assert mask.sum() >= allocation.keep_count(mask.size, 1 - floor), name
    # The floored layer keeps exactly its floor, its best weights.
    big, kept = s["big/kernel"], masks["big/kernel"]
    assert kept.sum() == allocation.keep_count(big.size, 1 - floor)
    assert big[kept].min() >= big[~kept].max()
    # The rest of the budget goes by one threshold over the other layers.
    kept_min = min(s[n][masks[n]].min() for n in ("a/kernel", "c/kernel"))
    pruned_max = max(s[n][~masks[n]].max() for n in ("a/kernel", "c/kernel"))
    assert kept_min >= pruned_max


def test_global_floor_that_cannot_be_met_raises():
    s = floor_case()
    with pytest.raises(ValueError, match=r"min_density.*Received: min_density=0\.2, sparsity=0\.9"):
        allocation.Global(min_density=0.2).masks(s, 0.9)
    # The default floor shrinks instead (half the density left at 99.9%) and never fails.
    masks = allocation.Global().masks(s, 0.999)
    assert sum(m.sum() for m in masks.values()) == round(sum(v.size for v in s.values()) * 0.001)
    assert masks["big/kernel"].sum() == allocation.keep_count(s["big/kernel"].size, 1 - 0.0005)
    for value in (1.0, -0.1, "0.01", True, float("nan")):
        with pytest.raises(ValueError, match="Received: min_density="):
            allocation.Global(min_density=value)


def test_global_floor_with_overrides_counts_only_the_free_layers():
    s = floor_case()
    masks = allocation.Global(keep_dense=["a"], min_density=0.02).masks(s, 0.8)
    assert masks["a/kernel"].all()
    assert masks["big/kernel"].sum() >= allocation.keep_count(s["big/kernel"].size, 0.98)
    assert sum(m.sum() for m in masks.values()) == round(sum(v.size for v in s.values()) * 0.2)
    with pytest.raises(ValueError, match=r"min_density.*keep at least"):
        allocation.Global(keep_dense=["a"], min_density=0.11).masks(s, 0.8)  # 10.1% left to them


def test_lamp_scores_by_hand():
    np.testing.assert_allclose(allocation.lamp_scores(np.array([1.0, 2.0, 3.0])), [1 / 14, 4 / 13, 9 / 9])
    # Any order and shape, signs squared away, equal values share a score, zeros score 0.
    np.testing.assert_allclose(allocation.lamp_scores(np.array([[3.0, 0.0, -2.0], [2.0, 1.0, 0.0]])),
                               [[1, 0, 4 / 17], [4 / 17, 1 / 18, 0]])
    np.testing.assert_array_equal(allocation.lamp_scores(np.zeros(4)), np.zeros(4))
    # Without ties, the paper's formula: squares sorted ascending over their reversed cumulative sums.
    x = np.random.default_rng(0).normal(size=1000)
    squares = np.sort(x ** 2)
    np.testing.assert_allclose(np.sort(allocation.lamp_scores(x)), squares / np.cumsum(squares[::-1])[::-1])
    # Scale-free: the scores of a layer do not change when it is scaled.
    np.testing.assert_allclose(allocation.lamp_scores(x * 1e-3), allocation.lamp_scores(x))


def test_lamp_keeps_a_similar_share_of_every_scale_where_global_does_not():
    rng = np.random.default_rng(1)
    s = {f"{name}/kernel": np.abs(rng.normal(size=(100, 50))) * scale
         for name, scale in (("small", 1e-3), ("mid", 1.0), ("large", 100.0))}
    total = sum(v.size for v in s.values())
    lamp = allocation.LAMP().masks(s, 0.9)
    glob = allocation.Global(min_density=0).masks(s, 0.9)
    for masks in (lamp, glob):
        assert sum(m.sum() for m in masks.values()) == round(total * 0.1)
    shares = {n: m.mean() for n, m in lamp.items()}
    assert all(0.08 < share < 0.12 for share in shares.values()), shares
    assert glob["small/kernel"].sum() == 1 and glob["mid/kernel"].mean() < 1e-3
    for name, mask in lamp.items():  # within a layer LAMP keeps the largest magnitudes
        assert s[name][mask].min() >= s[name][~mask].max()


def test_lamp_masks_do_not_depend_on_the_scale_of_a_layer():
    rng = np.random.default_rng(3)
    s = {"a/kernel": np.abs(rng.normal(size=(100, 50))), "b/kernel": np.abs(rng.normal(size=(3, 3, 8, 16))),
         "c/kernel": np.abs(rng.normal(size=(50, 10)))}
    scaled = {"a/kernel": s["a/kernel"] * 2.0 ** -10, "b/kernel": s["b/kernel"] * 2.0 ** 7, "c/kernel": s["c/kernel"]}
    for sparsity in (0.5, 0.9, 0.98):
        masks, rescaled = allocation.LAMP().masks(s, sparsity), allocation.LAMP().masks(scaled, sparsity)
        for name in s:
            np.testing.assert_array_equal(masks[name], rescaled[name])


def test_lamp_is_global_on_lamp_scores():
    rng = np.random.default_rng(2)
    s = {"a/kernel": np.abs(rng.normal(size=(60, 30))), "b/kernel": np.abs(rng.normal(size=(3, 3, 8, 16))) * 5,
         "c/kernel": np.abs(rng.normal(size=(400, 10))) * 0.01}
    for sparsity, kwargs in ((0.5, {}), (0.9, {}), (0.99, {"min_density": 0.005}), (0.9, {"overrides": {"b": 0.5}})):
        expected = allocation.Global(**kwargs).masks({n: allocation.lamp_scores(v) for n, v in s.items()}, sparsity)
        masks = allocation.LAMP(**kwargs).masks(s, sparsity)
        for name in s:
            np.testing.assert_array_equal(masks[name], expected[name])


def test_lamp_never_revives_pruned_weights():
    """magnitude_scores marks pruned weights -1: they rank below every live weight."""
    s = {"x/kernel": np.array([-1.0, -1.0, -1.0, 0.1, 0.2, 0.3, 0.4, 0.5]),
         "y/kernel": np.array([-1.0, 0.3, 0.2, 0.1, 0.5, 0.6, 0.7, 0.8])}
    masks = allocation.LAMP(min_density=0).masks(s, 0.5)
    for name, mask in masks.items():
        assert not mask[s[name] < 0].any(), name
    assert sum(m.sum() for m in masks.values()) == 8


def test_lamp_counts_stay_exact_with_ties():
    # LAMP of a: the three 1.0 score 1/7 each, 2.0 scores 1; of b: the 1.0 score 1/11, 3.0 scores 1.
    s = {"a/kernel": np.array([0.0, 1.0, 1.0, 1.0, 2.0, 0.0]), "b/kernel": np.array([1.0, 1.0, 0.0, 3.0])}
    tiebreak = {"a/kernel": np.array([0, 0, 5, 9, 0, 0.0]), "b/kernel": np.zeros(4)}
    for sparsity in (0.1, 0.3, 0.5, 0.6, 0.7, 0.8):
        masks = allocation.LAMP(min_density=0).masks(s, sparsity, tiebreak=tiebreak)
        assert sum(m.sum() for m in masks.values()) == round(10 * (1 - sparsity))
    # 4 kept: each layer's best, then two of a's three tied 1.0, those with the larger tiebreak.
    masks = allocation.LAMP(min_density=0).masks(s, 0.6, tiebreak=tiebreak)
    np.testing.assert_array_equal(masks["a/kernel"], [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(masks["b/kernel"], [0, 0, 0, 1])
    with pytest.raises(FloatingPointError, match="b/kernel"):
        allocation.LAMP().masks({**s, "b/kernel": np.array([np.inf, 1.0])}, 0.5)


def test_names_are_the_allocations_get_takes():
    for name in allocation.NAMES:
        assert isinstance(allocation.get(name), allocation.Allocation)
    assert "lamp" in allocation.NAMES and "uniform" not in allocation.NAMES
