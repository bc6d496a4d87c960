"""Block and N:M granularity (issue #20): allocation, MagnitudePruning, structure, LiteRT encoding."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import allocation, structure, tflite_tensors
from tfsparse.methods import MagnitudePruning
from tfsparse_app import cli

KINDS = ("layer", "global", "lamp", "erk")


def scores(seed=0):
    """Non-negative scores (magnitudes) of a Dense, a Conv and a small Dense
    kernel, all with input dimensions that are multiples of 16."""
    rng = np.random.default_rng(seed)
    return {"a/kernel": np.abs(rng.normal(size=(64, 32))), "b/kernel": np.abs(rng.normal(size=(3, 3, 16, 8))) * 3,
            "c/kernel": np.abs(rng.normal(size=(32, 10)))}


def block_count(mask, block_size):
    """Kept blocks of a mask whose zeros are whole blocks."""
    return int(allocation.Block(block_size).pool(mask.astype("float32")).sum())


# --- blocks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [(4, 1), (16, 1)])
def test_block_masks_are_whole_blocks_with_exact_block_counts(kind, block_size):
    s = scores()
    area = block_size[0] * block_size[1]
    blocks = {name: value.size // area for name, value in s.items()}
    masks = allocation.get(kind, granularity=allocation.Block(block_size)).masks(s, 0.8)
    for name, mask in masks.items():
        assert mask.shape == s[name].shape and mask.dtype == bool
        assert structure.whole_blocks(mask, block_size), name
        assert mask.sum() == block_count(mask, block_size) * area  # every dimension divides: no partial block
    kept = {name: block_count(mask, block_size) for name, mask in masks.items()}
    if kind == "layer":
        assert kept == {name: allocation.keep_count(n, 0.8) for name, n in blocks.items()}
    elif kind == "erk":  # ERK's densities come from the weights' shapes, applied to the block counts
        densities = allocation.ERK().densities({name: value.shape for name, value in s.items()}, 0.8)
        assert kept == {name: allocation.keep_count(n, 1 - densities[name]) for name, n in blocks.items()}
    else:  # one threshold over the blocks of all layers: the total is exact, in blocks and so in weights
        assert sum(kept.values()) == round(sum(blocks.values()) * 0.2)
        assert sum(m.sum() for m in masks.values()) == round(sum(v.size for v in s.values()) * 0.2)


def test_global_over_blocks_is_one_threshold_over_pooled_scores():
    s = scores()
    block = allocation.Block((4, 1))
    masks = allocation.Global(min_density=0, granularity=block).masks(s, 0.6)
    pooled = {name: block.pool(value) for name, value in s.items()}
    kept = {name: block.pool(mask.astype("float32")) == 1 for name, mask in masks.items()}
    assert min(pooled[n][kept[n]].min() for n in s) >= max(pooled[n][~kept[n]].max() for n in s)
    # The Conv kernel of 3x larger scores keeps the largest share, as with single weights.
    assert masks["b/kernel"].mean() > masks["a/kernel"].mean()


def test_avg_and_max_pooling_choose_different_blocks():
    # One column, two blocks of 4 inputs: [10, 0, 0, 0] (avg 2.5, max 10) and [3, 3, 3, 3] (avg 3, max 3).
    kernel = {"d/kernel": np.array([10.0, 0, 0, 0, 3, 3, 3, 3]).reshape(8, 1)}
    avg = allocation.Uniform(granularity=allocation.Block((4, 1), "avg")).masks(kernel, 0.5)["d/kernel"]
    top = allocation.Uniform(granularity="block4x1-max").masks(kernel, 0.5)["d/kernel"]
    np.testing.assert_array_equal(avg.ravel(), [0, 0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(top.ravel(), [1, 1, 1, 1, 0, 0, 0, 0])


def test_blocks_run_along_the_input_axis_of_every_output_unit():
    # (8, 2): output 0 has its large block in inputs 0-3, output 1 in inputs 4-7.
    kernel = np.zeros((8, 2))
    kernel[:4, 0] = kernel[4:, 1] = 1.0
    mask = allocation.Uniform(granularity="block4x1").masks({"d/kernel": kernel}, 0.5)["d/kernel"]
    np.testing.assert_array_equal(mask, kernel.astype(bool))


def test_partial_blocks_count_as_one_block_and_never_crash():
    rng = np.random.default_rng(0)
    s = {"odd/kernel": np.abs(rng.normal(size=(10, 3))), "tiny/kernel": np.abs(rng.normal(size=(3, 5))),
         "flat/kernel": np.abs(rng.normal(size=(6,)))}
    block = allocation.Block((4, 1))
    # Pooling averages the weights a partial block has (inputs 8-9), not its padding.
    np.testing.assert_allclose(block.pool(s["odd/kernel"])[0, 2], s["odd/kernel"][8:].mean(axis=0))
    np.testing.assert_allclose(allocation.Block((4, 1), "max").pool(s["odd/kernel"])[0, 2], s["odd/kernel"][8:].max(axis=0))
    for kind in KINDS:
        masks = allocation.get(kind, granularity=block).masks(s, 0.6)
        for name, mask in masks.items():
            assert mask.shape == s[name].shape and structure.whole_blocks(mask, (4, 1)), (kind, name)
    masks = allocation.Uniform(granularity=block).masks(s, 0.6)
    # odd: 3 x 3 blocks (the last row of blocks has 2 inputs): keep_count(9, 0.6) = 4 blocks.
    assert block_count(masks["odd/kernel"], (4, 1)) == allocation.keep_count(9, 0.6)
    # A (16, 1) block larger than the kernel: one partial block per output unit.
    masks = allocation.Uniform(granularity="block16x1").masks(s, 0.6)
    assert masks["tiny/kernel"].all(axis=0).sum() == allocation.keep_count(5, 0.6)
    assert (masks["tiny/kernel"].all(axis=0) | ~masks["tiny/kernel"].any(axis=0)).all()


def test_block_tiebreak_ranks_equal_block_scores():
    kernel = {"d/kernel": np.ones((8, 2))}
    tiebreak = {"d/kernel": np.array([[0, 0], [0, 0], [0, 0], [0, 0], [0, 9], [0, 9], [0, 9], [0, 9]], float)}
    mask = allocation.Uniform(granularity="block4x1").masks(kernel, 0.75, tiebreak=tiebreak)["d/kernel"]
    assert mask[4:, 1].all() and mask.sum() == 4


# --- N:M -------------------------------------------------------------------------------------------------------


def groups_of(mask, m=4):
    """(..., groups, m, out) view of a mask along the input axis (divisible shapes)."""
    *lead, rows, columns = mask.shape
    return mask.reshape(*lead, rows // m, m, columns)


def test_nm_follows_the_gradual_rule_and_ends_at_two_of_four():
    s = scores()
    for kind in KINDS:
        alloc = allocation.get(kind, granularity="2:4")
        for sparsity, kept in ((0.0, 4), (0.1, 4), (0.25, 3), (0.3, 3), (0.5, 2)):
            for name, mask in alloc.masks(s, sparsity).items():
                assert (groups_of(mask).sum(axis=-2) == kept).all(), (kind, sparsity, name)
        final = alloc.masks(s, 0.5)
        assert all(allocation.check_m_by_n(mask) for mask in final.values())
    # Within a group the largest scores stay; the kind of allocation does not matter.
    mask = allocation.Uniform(granularity="2:4").masks(s, 0.5)["a/kernel"]
    g, k = groups_of(s["a/kernel"]), groups_of(mask)
    assert (np.where(k, g, np.inf).min(axis=-2) >= np.where(k, -np.inf, g).max(axis=-2)).all()
    for name, value in allocation.ERK(granularity="2:4").masks(s, 0.5).items():
        np.testing.assert_array_equal(value, allocation.Global(granularity=allocation.NM(2, 4)).masks(s, 0.5)[name])


def test_nm_groups_conv_kernels_along_input_channels_and_handles_partial_groups():
    rng = np.random.default_rng(1)
    conv = np.abs(rng.normal(size=(3, 3, 8, 5)))
    mask = allocation.Uniform(granularity="2:4").masks({"conv/kernel": conv}, 0.5)["conv/kernel"]
    assert (mask.reshape(3, 3, 2, 4, 5).sum(axis=3) == 2).all()
    # 10 inputs: groups of 4, 4 and a last one of 2, which keeps min(2, k).
    odd = np.abs(rng.normal(size=(10, 3)))
    for sparsity, full, last in ((0.0, 4, 2), (0.25, 3, 2), (0.5, 2, 2)):
        mask = allocation.Uniform(granularity="2:4").masks({"odd/kernel": odd}, sparsity)["odd/kernel"]
        assert (mask[:8].reshape(2, 4, 3).sum(axis=1) == full).all() and (mask[8:].sum(axis=0) == last).all()
    assert allocation.check_m_by_n(mask)
    mask = allocation.Uniform(granularity="1:4").masks({"odd/kernel": odd}, 0.75)["odd/kernel"]
    assert (mask[8:].sum(axis=0) == 1).all() and allocation.check_m_by_n(mask, 1, 4)


def test_nm_never_brings_back_pruned_weights_and_breaks_ties():
    # MagnitudePruning scores pruned weights -1: they rank below every survivor.
    s = {"d/kernel": np.array([[-1.0], [0.0], [0.5], [0.2]])}
    mask = allocation.Uniform(granularity="2:4").masks(s, 0.25)["d/kernel"]
    np.testing.assert_array_equal(mask.ravel(), [0, 1, 1, 1])
    ties = {"d/kernel": np.ones((4, 1))}
    np.testing.assert_array_equal(allocation.Uniform(granularity="2:4").masks(ties, 0.5)["d/kernel"].ravel(), [1, 1, 0, 0])
    tiebreak = {"d/kernel": np.array([[0.0], [1.0], [0.0], [2.0]])}
    mask = allocation.Uniform(granularity="2:4").masks(ties, 0.5, tiebreak=tiebreak)["d/kernel"]
    np.testing.assert_array_equal(mask.ravel(), [0, 1, 0, 1])


def test_check_m_by_n():
    assert allocation.check_m_by_n(np.array([[1.0], [0], [2], [0], [0], [0], [0], [3]]))
    assert not allocation.check_m_by_n(np.array([[1.0], [1], [2], [0]]))
    # Groups run along the input axis: two nonzeros per row of 4 outputs is not 2:4 along inputs.
    assert not allocation.check_m_by_n(np.array([[1.0, 1, 0, 0]] * 4))
    assert allocation.check_m_by_n(np.array([[1.0, 1, 0, 0]] * 4).T)
    assert not allocation.check_m_by_n(np.ones((6, 1)))  # the partial last group holds 2, but the first 4
    assert allocation.check_m_by_n(np.array([[1.0], [0], [0], [1], [1], [1]]))
    assert not allocation.check_m_by_n(np.array([[1.0], [0], [0], [1], [1], [1], [1]]))  # 3 in the last (partial) group
    with pytest.raises(ValueError, match=r"Received: n=4, m=2"):
        allocation.check_m_by_n(np.ones((4, 4)), n=4, m=2)


# --- overrides, names, errors -------------------------------------------------------------------------------------


def test_overrides_and_keep_dense_at_every_granularity():
    s = scores()
    for granularity in ("block4x1", "block16x1-max"):
        masks = allocation.Global(overrides={"a": 0.9}, keep_dense=["c/kernel"], granularity=granularity).masks(s, 0.6)
        assert masks["c/kernel"].all()
        size = 4 if granularity == "block4x1" else 16
        assert block_count(masks["a/kernel"], (size, 1)) == allocation.keep_count(s["a/kernel"].size // size, 0.9)
        assert structure.whole_blocks(masks["b/kernel"], (size, 1))
        assert sum(m.sum() for m in masks.values()) == round(sum(v.size for v in s.values()) * 0.4)
    masks = allocation.ERK(overrides={"a": 0.25}, keep_dense=["c"], granularity="2:4").masks(s, 0.5)
    assert masks["c/kernel"].all()
    assert (groups_of(masks["a/kernel"]).sum(axis=-2) == 3).all()
    assert (groups_of(masks["b/kernel"]).sum(axis=-2) == 2).all()
    with pytest.raises(ValueError, match="unknown layers"):
        allocation.Uniform(overrides={"nope": 0.5}, granularity="2:4").masks(s, 0.5)


def test_granularity_names_and_get():
    assert allocation.get_granularity(None) == allocation.Weight() == allocation.get_granularity("weight")
    assert allocation.get_granularity("block4x1") == allocation.Block((4, 1))
    block = allocation.get_granularity("Block16x1-MAX")
    assert block.block_size == (16, 1) and block.pooling == "max" and block.name == "block16x1-max"
    assert allocation.get_granularity("2:4") == allocation.NM(2, 4)
    for name in allocation.GRANULARITY_NAMES:
        assert allocation.get_granularity(name).name == name
    assert isinstance(allocation.get("lamp", granularity="2:4"), allocation.LAMP)
    assert allocation.get("lamp", granularity="2:4").granularity == allocation.NM(2, 4)
    # An instance is copied with the granularity; the original stays as it was.
    original = allocation.Global(min_density=0.02)
    copied = allocation.get(original, granularity="block4x1")
    assert copied.granularity == allocation.Block((4, 1)) and copied.min_density == 0.02
    assert original.granularity == allocation.Weight()
    assert allocation.get(copied, granularity="block4x1") is not None
    assert allocation.Global(granularity="2:4").get_config()["granularity"] == "2:4"
    config = allocation.ERK(granularity="block4x1-max").get_config()
    assert allocation.ERK(**config).granularity == allocation.Block((4, 1), "max")


def test_errors_name_the_argument():
    s = scores()
    with pytest.raises(ValueError, match=r"`sparsity`.*0\.5 that 2:4.*Received: sparsity=0\.6"):
        allocation.Uniform(granularity="2:4").masks(s, 0.6)
    with pytest.raises(ValueError, match=r"`overrides`.*Received: overrides=\{'a': 0\.8\}"):
        allocation.Global(overrides={"a": 0.8}, granularity="2:4")
    with pytest.raises(ValueError, match=r"`target_sparsity`.*Received: target_sparsity=0\.7"):
        MagnitudePruning(0.7, granularity="2:4")
    for bad in ("block4", "blockx4", "4:2", "2:2", "0:4", "blocks", 4, (4, 1)):
        with pytest.raises(ValueError, match="Received: granularity="):
            allocation.get_granularity(bad)
    for bad in ((4,), (0, 1), (4.0, 1), (True, 1), "4x1", None):
        with pytest.raises(ValueError, match="Received: block_size="):
            allocation.Block(bad)
    with pytest.raises(ValueError, match="Received: pooling='mean'"):
        allocation.Block((4, 1), "mean")
    with pytest.raises(ValueError, match="Received: n=4, m=4"):
        allocation.NM(4, 4)
    with pytest.raises(ValueError, match="already has granularity 'block4x1'.*Received: granularity='2:4'"):
        allocation.get(allocation.Global(granularity="block4x1"), granularity="2:4")
    s["a/kernel"][0, 0] = np.nan
    for granularity in ("block4x1", "2:4"):
        with pytest.raises(FloatingPointError, match="a/kernel"):
            allocation.Global(granularity=granularity).masks(s, 0.5)


def test_cli_takes_granularity_for_magnitude():
    parser = cli.build_parser()
    args = parser.parse_args(["run", "--method", "magnitude", "--out", "x", "--granularity", "Block4x1"])
    assert args.granularity == "block4x1"
    assert parser.parse_args(["run", "--method", "magnitude", "--out", "x", "--granularity", "2:4"]).granularity == "2:4"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--method", "magnitude", "--out", "x", "--granularity", "3x3"])
    assert MagnitudePruning(0.5, **{"granularity": args.granularity}).allocation.granularity == allocation.Block((4, 1))


# --- end to end ------------------------------------------------------------------------------------------------


def tiny_model(inputs=32):
    return keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(16, activation="relu", name="fc1"),
                             keras.layers.Dense(4, name="fc2")])


@pytest.mark.parametrize("granularity,target", [("2:4", 0.5), ("block4x1", 0.75), (allocation.Block((16, 1), "max"), 0.5)])
def test_magnitude_pruning_ends_with_the_structure(granularity, target):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 32)).astype("float32"), rng.integers(0, 4, 64)
    model = tfsparse.prune(tiny_model())
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    method = MagnitudePruning(target, allocation="global", granularity=granularity, frequency=2)
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=[method])  # 8 steps, updates at 2 and 4
    for weight in tfsparse.masked_weights(model):
        kernel = weight.effective_value()
        if granularity == "2:4":
            assert allocation.check_m_by_n(kernel) and np.count_nonzero(kernel) == kernel.size // 2
            assert structure.describe(kernel) == "2:4"
        else:
            size = allocation.get_granularity(granularity).block_size
            assert structure.whole_blocks(kernel, size)
            # fc2 (16 x 4) has one 16x1 block per output: Global may keep them all.
            assert structure.describe(kernel) == f"block {size[0]}x1" or weight.name == "fc2/kernel"
    kept = sum(np.count_nonzero(w.effective_value()) for w in tfsparse.masked_weights(model))
    total = sum(w.size for w in tfsparse.masked_weights(model))
    assert kept == round(total * (1 - target))


def test_structure_labels():
    rng = np.random.default_rng(0)
    assert structure.describe(np.ones((8, 4))) == "dense"
    assert structure.describe(np.zeros((8, 4))) == "zero"
    blocks16 = np.repeat(np.array([[1.0, 0, 1, 1], [0, 1, 1, 0]]), 16, axis=0)
    assert structure.describe(blocks16) == "block 16x1"
    blocks4 = np.repeat(np.array([[1.0, 0], [0, 1], [1, 1]]), 4, axis=0)
    assert structure.describe(blocks4) == "block 4x1"
    assert structure.describe(blocks4[:10]) == "block 4x1"  # a partial last block counts
    two_four = np.tile(np.array([[1.0], [0], [1], [0]]), (3, 3))
    assert structure.describe(two_four) == "2:4"
    assert structure.describe(rng.random((8, 8)) * (rng.random((8, 8)) < 0.6)) == "random"


def test_inspect_keras_shows_the_structure_column(tmp_path, capsys):
    model = tfsparse.prune(tiny_model())
    kernels = {w.name: w for w in tfsparse.masked_weights(model)}
    kernels["fc1/kernel"].mask.assign(allocation.Uniform(granularity="block4x1").masks(
        {"k": np.abs(kernels["fc1/kernel"].kernel.numpy())}, 0.75)["k"].astype("float32"))
    kernels["fc2/kernel"].mask.assign(allocation.Uniform(granularity="2:4").masks(
        {"k": np.abs(kernels["fc2/kernel"].kernel.numpy())}, 0.5)["k"].astype("float32"))
    path = tmp_path / "model.keras"
    tfsparse.strip(model).save(path)
    assert cli.main(["inspect", str(path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-1] == "structure"
    assert next(line for line in lines if line.startswith("fc1")).split()[-1] == "4x1"
    assert next(line for line in lines if line.startswith("fc2")).split()[-1] == "2:4"


# --- LiteRT ------------------------------------------------------------------------------------------------------


def _structured_model(inputs, granularity, sparsity, seed=0):
    """A 2-layer Dense model whose kernels are pruned at `granularity` (masks set directly)."""
    keras.utils.set_random_seed(seed)
    model = tfsparse.prune(keras.Sequential([keras.Input((inputs,)), keras.layers.Dense(32, activation="relu", name="fc1"),
                                             keras.layers.Dense(8, name="fc2")]))
    rng = np.random.default_rng(seed)
    weights = tfsparse.masked_weights(model)
    masks = allocation.Uniform(granularity=granularity).masks({w.name: rng.random(w.shape) for w in weights}, sparsity)
    for weight in weights:
        weight.mask.assign(masks[weight.name].astype("float32"))
        weight.layer.bias.assign(rng.normal(size=weight.layer.bias.shape))  # zero biases are folded away
    return model


def _convert(model, path):
    """The plain TFLite conversion with EXPERIMENTAL_SPARSITY, without to_tflite's verification."""
    import tensorflow as tf

    stripped = tfsparse.strip(model)
    stripped.export(str(path.with_suffix("")), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(path.with_suffix("")))
    converter.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    path.write_bytes(converter.convert())
    return path


def test_block_pruned_dense_layers_are_block_encoded_for_fully_connected(tmp_path, capsys):
    model = _structured_model(64, "block4x1", 0.8)
    report = tfsparse.export.to_tflite(model, tmp_path / "block.tflite")
    assert report.max_abs_error < 1e-4
    kernels = [row for row in report.tensors if len(row["shape"]) == 2]
    assert len(kernels) == 2
    for row in kernels:  # TFLite's (out, in): Keras (4, 1) blocks are 1x4
        assert row["encoding"] == "block" and row["block"] == (1, 4) and row["consumers"] == ["FULLY_CONNECTED"]
        assert tflite_tensors.lost_positions(row) == {}
        assert row["stored"] == round(row["shape"][0] * row["shape"][1] * 0.2 / 4) * 4
    assert cli.main(["inspect", str(tmp_path / "block.tflite")]) == 0
    out = capsys.readouterr().out
    assert "block 1x4 -> FULLY_CONNECTED" in out and "DENSIFY" not in out and "2 block, 0 random" in out


def test_random_and_two_four_kernels_go_through_densify(tmp_path, capsys):
    for granularity, sparsity in (("weight", 0.8), ("2:4", 0.5)):
        path = _convert(_structured_model(64, granularity, sparsity), tmp_path / f"{granularity[0]}.tflite")
        kernels = [row for row in tflite_tensors.tensor_rows(path) if len(row["shape"]) == 2]
        assert [(row["encoding"], row["block"], row["consumers"]) for row in kernels] == [("random", None, ["DENSIFY"])] * 2
        assert tflite_tensors.encoding_label(kernels[0]) == "random -> DENSIFY"


def test_the_converter_drops_a_partial_last_block_and_inspect_says_so(tmp_path):
    # 30 inputs: blocks of 4 cover 28; TF 2.21 stores the 1x4 blocks and loses inputs 28-29.
    path = _convert(_structured_model(30, "block4x1", 0.8), tmp_path / "odd.tflite")
    fc1 = next(row for row in tflite_tensors.tensor_rows(path) if row["shape"] == (32, 30))
    assert fc1["encoding"] == "block" and tflite_tensors.lost_positions(fc1) == {1: 2}
    assert "LOST: last 2 of 30 on dim 1" in tflite_tensors.encoding_label(fc1)


def test_to_tflite_refuses_a_quantized_file_that_lost_a_partial_block(tmp_path):
    # 30 inputs in (16, 1) blocks: the int8 converter keeps one whole block and drops inputs 16-29.
    model = _structured_model(30, "block16x1", 0.8)
    data = np.random.default_rng(0).random((64, 30)).astype("float32")
    with pytest.raises(ValueError, match=r"without its partial last block.*last 14 of dim 1.*nothing was written"):
        tfsparse.export.to_tflite(model, tmp_path / "lost.tflite", quantization="int8", representative_data=data)
    assert not (tmp_path / "lost.tflite").exists()
    written = tfsparse.export.to_tflite(model, tmp_path / "dense.tflite", quantization="int8",
                                        representative_data=data, sparse=False)
    assert written.top1_agreement >= 0.95
