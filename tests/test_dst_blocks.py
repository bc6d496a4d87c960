"""Dynamic sparse training at block and N:M granularity (issue #20): DSTEE, RigL and SET drop and grow
whole blocks, or refill groups of M, with exact counts; block-trained Dense layers export block-encoded."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import allocation, structure, tflite_tensors
from tfsparse.masking import optimizer_slots
from tfsparse.methods import DSTEE, SET, RigL
from tfsparse.methods.dst import ACTIVE_ROUNDS
from tfsparse_app import cli, recipes

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
BLOCK = allocation.Block((4, 1))


@pytest.fixture(scope="module")
def data():
    """A 4-class problem from a random linear teacher (64 features)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(512, 64)).astype("float32")
    y = np.argmax(x @ rng.normal(size=(64, 4)), axis=1).astype("int32")
    return x, y


def compiled(method, inputs=64):
    model = tfsparse.prune(keras.Sequential([
        keras.Input((inputs,)), keras.layers.Dense(32, activation="relu", name="fc1"),
        keras.layers.Dense(8, name="fc2"),
    ]), **method.layer_options)
    model.compile(keras.optimizers.Adam(1e-2), LOSS, metrics=["accuracy"])
    return model


def active_blocks(mask, block_size=(4, 1)):
    """Blocks whose weights are all active."""
    return int((allocation.Block(block_size).pool(np.asarray(mask, "float32")) == 1).sum())


class MaskRecorder(keras.callbacks.Callback):
    """Every mask after each batch."""

    def __init__(self):
        super().__init__()
        self.masks = []

    def on_train_batch_end(self, batch, logs=None):
        weights = tfsparse.masked_weights(self.model)
        self.masks.append({w.name: keras.ops.convert_to_numpy(w.mask) > 0.5 for w in weights})


def train(method, inputs=64, data=None, epochs=2):
    x, y = data
    model = compiled(method, inputs)
    recorder = MaskRecorder()
    # 16 steps per epoch, 32 in all: rounds every 4 steps up to 75 % (step 24) = 6 rounds.
    model.fit(x[:, :inputs], y, batch_size=32, epochs=epochs, verbose=0, callbacks=[method, recorder])
    return model, recorder.masks


def dst(method_class, data, sparsity=0.8, **kwargs):
    if method_class is not SET:
        kwargs["gradient_data"] = (data[0][:, :kwargs.pop("inputs", 64)], data[1])
    kwargs.pop("inputs", None)
    return method_class(sparsity, update_every=4, seed=3, **kwargs)


@pytest.mark.parametrize("method_class", [DSTEE, RigL, SET])
def test_block_dst_keeps_whole_blocks_at_the_allocated_count_and_moves_them(data, method_class):
    method = dst(method_class, data, granularity=BLOCK)
    model, masks = train(method, data=data)
    shapes = {w.name: w.shape for w in tfsparse.masked_weights(model)}
    # ERK densities from the weights' shapes, applied to the block counts (as in magnitude pruning).
    densities = allocation.ERK().densities(shapes, 0.8)
    expected = {name: allocation.keep_count(np.prod(shape) // 4, 1 - densities[name]) for name, shape in shapes.items()}
    assert all(0 < expected[name] < np.prod(shape) // 4 for name, shape in shapes.items())
    for snapshot in masks:
        for name, mask in snapshot.items():
            assert structure.whole_blocks(mask, (4, 1)), name
            assert active_blocks(mask) == expected[name] and mask.sum() == 4 * expected[name]
    for weight in tfsparse.masked_weights(model):
        # The mask's label (a kernel may hold more zeros: a block grown behind a dead ReLU stays at 0).
        assert structure.describe(masks[-1][weight.name].astype("float32")) == "block 4x1", weight.name
        assert not np.array_equal(masks[0][weight.name], masks[-1][weight.name])  # the blocks moved
    assert len(method.history) == 6 and all(h["grown"] > 0 and h["grown"] % 4 == 0 for h in method.history[:3])
    assert all(h["dropped"] % 4 == 0 for h in method.history)


def test_block_dst_with_partial_blocks_counts_each_as_one_block(data):
    # 30 inputs: 8 row blocks per output unit, the last one of 2 inputs.
    method = dst(RigL, data, inputs=30, granularity="block4x1", allocation="layer")
    model, masks = train(method, inputs=30, data=data, epochs=1)
    assert method.history
    for name, blocks in (("fc1/kernel", 8 * 32), ("fc2/kernel", 8 * 8)):
        for snapshot in masks:
            assert structure.whole_blocks(snapshot[name], (4, 1))
            assert active_blocks(snapshot[name]) == allocation.keep_count(blocks, 0.8)
    assert not np.array_equal(masks[0]["fc1/kernel"], masks[-1]["fc1/kernel"])


def test_block_dst_exports_block_encoded_fully_connected(data, tmp_path):
    method = dst(DSTEE, data, granularity="block4x1")
    model, _ = train(method, data=data)
    report = tfsparse.export.to_tflite(tfsparse.strip(model), tmp_path / "dst.tflite", representative_data=data[0][:64])
    assert report.max_abs_error < 1e-4
    kernels = [row for row in report.tensors if len(row["shape"]) == 2]
    assert len(kernels) == 2
    for row in kernels:  # TFLite's (out, in): Keras (4, 1) blocks are 1x4
        assert row["encoding"] == "block" and row["block"] == (1, 4) and row["consumers"] == ["FULLY_CONNECTED"]
        assert tflite_tensors.lost_positions(row) == {}


def hand_made(method, pooling="avg"):
    """One Dense(16 -> 1), blocks 0 and 1 of 4 active, planted kernel, slots, counters and gradient."""
    model = tfsparse.prune(keras.Sequential([keras.Input((16,)), keras.layers.Dense(1, use_bias=False)]),
                           **method.layer_options)
    model.compile(keras.optimizers.Adam(), "mse")
    model.optimizer.build(model.trainable_variables)
    weight = tfsparse.masked_weights(model)[0]
    weight.mask.assign(np.repeat([1.0, 1, 0, 0], 4).reshape(16, 1))
    # Block magnitudes: block 0 avg 0.3 / max 0.9, block 1 avg 0.4 / max 0.4 (planted values in 2-3).
    weight.kernel.assign(np.array([0.9, 0.1, 0.1, 0.1, 0.4, -0.4, 0.4, 0.4] + [0.3] * 8, "float32").reshape(16, 1))
    for slot in optimizer_slots(model.optimizer)[id(weight.kernel)]:
        slot.assign(np.full((16, 1), 0.7, "float32"))
    # Block 2 was active in 5 rounds, block 3 never; block 2 has the larger |gradient| (avg 0.5 vs 0.2).
    weight.state(ACTIVE_ROUNDS).assign(np.repeat([3.0, 3, 5, 0], 4).reshape(16, 1))
    gradient = np.array([0.0] * 8 + [0.5, -0.5, 0.5, 0.5] + [0.2] * 4, "float32").reshape(16, 1)
    method.set_model(model)
    method.stop_step = 1000
    method._gradients = lambda step: {weight.name: gradient}
    return model, weight


@pytest.mark.parametrize("method, dropped, grown", [
    (RigL(0.5, gradient_data=(None, None), granularity="block4x1"), 0, 2),  # largest block |gradient|
    # |g| + c sqrt(ln t / (N + 1)) with the block's N: block 3 (N = 0) 0.2 + 2.15 > block 2 0.5 + 0.88
    (DSTEE(0.5, c=1.0, gradient_data=(None, None), granularity="block4x1"), 0, 3),
    (RigL(0.5, gradient_data=(None, None), granularity="block4x1-max"), 1, 2),  # max pooling drops block 1
])
def test_block_grow_score_and_reset(method, dropped, grown):
    model, weight = hand_made(method)
    method.update(step=100)  # drop fraction 0.15 * (1 + cos(0.1 pi)) of 2 blocks -> 1 block
    expected = np.zeros(4)
    expected[[1 - dropped, grown]] = 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(weight.mask).ravel(), np.repeat(expected, 4))
    kernel = keras.ops.convert_to_numpy(weight.kernel).reshape(4, 4)
    assert (kernel[grown] == 0).all() and (kernel[dropped] == 0).all() and (kernel[1 - dropped] != 0).all()
    for slot in optimizer_slots(model.optimizer)[id(weight.kernel)]:
        values = keras.ops.convert_to_numpy(slot).reshape(4, 4)
        assert (values[grown] == 0).all() and (values[1 - dropped] == pytest.approx(0.7))
    rounds = keras.ops.convert_to_numpy(weight.state(ACTIVE_ROUNDS)).reshape(4, 4)
    np.testing.assert_array_equal(rounds[:, 0], [4, 4, 5, 0])  # counted per weight, equal within a block
    record = method.history[-1]
    assert record["grown"] == 4 and record["dropped"] == 4
    assert record["exploitation"] == pytest.approx(0.5 if grown == 2 else 0.2)
    if method.c:
        assert record["exploration"] == pytest.approx(np.sqrt(np.log(100)))


@pytest.mark.parametrize("method_class", [RigL, SET])
def test_nm_dst_keeps_n_of_every_m(data, method_class):
    method = dst(method_class, data, sparsity=0.5, granularity="2:4")
    model, masks = train(method, data=data, epochs=1)
    for snapshot in masks:
        for name, mask in snapshot.items():
            *_, rows, columns = mask.shape
            assert (mask.reshape(rows // 4, 4, columns).sum(axis=1) == 2).all(), name
    for weight in tfsparse.masked_weights(model):
        assert allocation.check_m_by_n(weight.effective_value())
        assert not np.array_equal(masks[0][weight.name], masks[-1][weight.name])
    assert method.history[0]["dropped"] > 0


def test_bad_granularity_gives_clear_errors(data):
    for bad in ("block4", "3x3", 4, (4, 1)):
        with pytest.raises(ValueError, match="Received: granularity="):
            SET(0.8, granularity=bad)
    with pytest.raises(ValueError, match=r"`target_sparsity`.*2:4.*Received: target_sparsity=0\.8"):
        RigL(0.8, gradient_data=data, granularity="2:4")
    with pytest.raises(ValueError, match="already has granularity 'block4x1'.*Received: granularity='2:4'"):
        SET(0.5, allocation=allocation.ERK(granularity="block4x1"), granularity="2:4")
    # Masks that are not whole blocks (made at another granularity) are not silently re-cut.
    method = SET(0.8, granularity="block4x1")
    model = compiled(method)
    method.set_model(model)
    method.stop_step = 100
    for weight in tfsparse.masked_weights(model):
        weight.mask.assign((np.random.default_rng(0).random(weight.shape) < 0.2).astype("float32"))
    with pytest.raises(ValueError, match=r"'fc1/kernel' does not have the structure.*Received: granularity='block4x1'"):
        method.update(step=4)


def test_cli_takes_granularity_for_dst():
    parser = cli.build_parser()
    for method in ("dst-ee", "rigl", "set"):
        args = parser.parse_args(["run", "--method", method, "--out", "x", "--granularity", "Block4x1-max"])
        assert args.granularity == "block4x1-max"
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "--method", "set", "--out", "x", "--granularity", "3x3"])

    def built(name, sparsity, **options):
        return recipes.get(name).build(recipes.Job(sparsity, 2, options, (None, None), None, None, None))

    method = built("set", 0.8, granularity="block16x1")
    assert method.granularity == allocation.Block((16, 1)) and method.allocation.granularity == method.granularity
    assert built("rigl", 0.5, granularity="2:4").granularity == allocation.NM(2, 4)
