import keras
import numpy as np
import pytest

import tfsparse
from tfsparse import allocation, schedules
from tfsparse.masking import optimizer_slots
from tfsparse_app import zoo


class RecordingPruning(tfsparse.methods.MagnitudePruning):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.updates, self.history = [], []

    def update_masks(self, sparsity):
        self.updates.append((int(self.model.optimizer.iterations) + 1, sparsity))
        super().update_masks(sparsity)
        self.history.append(self.masks())


def train(data, method, epochs=2, optimizer="adam", model_fn=zoo.lenet_300_100):
    model = tfsparse.prune(model_fn(input_shape=(28, 28, 1)))
    model.compile(optimizer, keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=128, epochs=epochs, verbose=0, callbacks=[method])
    return model


def test_layerwise_magnitude_pruning_on_mnist(mnist_subset):
    method = RecordingPruning(0.9, frequency=10)
    model = train(mnist_subset, method)
    steps = 2 * int(np.ceil(4000 / 128))  # 64
    end = int(0.7 * steps) // 10 * 10  # the default end is aligned to the frequency
    # tfmot's steps: iterations + 1, every `frequency` steps from begin to end.
    assert [s for s, _ in method.updates] == list(range(10, end + 1, 10))
    assert method.updates[-1][1] == pytest.approx(0.9)  # the target is reached exactly
    # Masks only shrink.
    for before, after in zip(method.history, method.history[1:]):
        for name in before:
            assert not np.any(after[name] & ~before[name])
    # Exact per-layer counts at the last update, and the schedule never overshoots.
    final_sparsity = method.updates[-1][1]
    for weight in tfsparse.masked_weights(model):
        assert int(np.sum(weight.mask)) == allocation.keep_count(weight.size, final_sparsity)
    _, accuracy = model.evaluate(mnist_subset.x_test, mnist_subset.y_test, verbose=0)
    assert accuracy > 0.65  # chance is 0.1; 2 short epochs on 4,000 images


def test_pruned_weights_and_adam_slots_stay_exactly_zero(mnist_subset):
    method = tfsparse.methods.MagnitudePruning(
        schedule=schedules.ConstantSparsity(0.8, begin_step=5, end_step=5, frequency=1))
    model = train(mnist_subset, method, epochs=1,
                  optimizer=keras.optimizers.AdamW(1e-3, weight_decay=0.01))
    slots = optimizer_slots(model.optimizer)
    for weight in tfsparse.masked_weights(model):
        pruned = keras.ops.convert_to_numpy(weight.mask) == 0
        assert pruned.mean() == pytest.approx(0.8, abs=0.01)
        assert np.all(keras.ops.convert_to_numpy(weight.kernel)[pruned] == 0)
        assert len(slots[id(weight.kernel)]) == 2  # Adam's two moments
        for slot in slots[id(weight.kernel)]:
            assert np.all(keras.ops.convert_to_numpy(slot)[pruned] == 0)


def test_global_allocation_single_threshold(mnist_subset):
    method = tfsparse.methods.MagnitudePruning(
        schedule=schedules.PolynomialDecay(0.0, 0.95, 0, 30, frequency=10), allocation="global")
    model = train(mnist_subset, method, epochs=1)
    assert tfsparse.sparsity(model) == pytest.approx(0.95, abs=1e-4)
    kept = [np.abs(w.effective_value()[w.effective_value() != 0]).min() for w in tfsparse.masked_weights(model)]
    sparsities = [1 - float(np.mean(keras.ops.convert_to_numpy(w.mask))) for w in tfsparse.masked_weights(model)]
    # Layers differ in sparsity under one threshold (the small head keeps more).
    assert max(sparsities) - min(sparsities) > 0.05
    assert min(kept) > 0


def test_pruning_continues_across_save_and_load(mnist_subset, tmp_path):
    schedule = schedules.PolynomialDecay(0.0, 0.9, begin_step=0, end_step=60, frequency=10)
    uninterrupted = train(mnist_subset, tfsparse.methods.MagnitudePruning(schedule=schedule), epochs=2)

    keras.utils.set_random_seed(0)
    first = train(mnist_subset, tfsparse.methods.MagnitudePruning(schedule=schedule), epochs=1)
    first.save(tmp_path / "mid.keras")
    resumed = keras.models.load_model(tmp_path / "mid.keras")
    assert int(resumed.optimizer.iterations) == 32
    resumed.fit(mnist_subset.x_train, mnist_subset.y_train, batch_size=128, epochs=1, verbose=0,
                callbacks=[tfsparse.methods.MagnitudePruning(schedule=schedule)])
    for weight in tfsparse.masked_weights(resumed):
        assert 1 - float(np.mean(keras.ops.convert_to_numpy(weight.mask))) == pytest.approx(0.9, abs=1e-3)
    assert tfsparse.sparsity(resumed) == pytest.approx(tfsparse.sparsity(uninterrupted), abs=1e-3)


def test_method_errors_are_clear(mnist_subset):
    too_short = tfsparse.prune(zoo.lenet_300_100())
    too_short.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="never be updated"):
        too_short.fit(mnist_subset.x_train[:256], mnist_subset.y_train[:256], batch_size=128, verbose=0,
                      callbacks=[tfsparse.methods.MagnitudePruning(0.5)])
    with pytest.raises(ValueError, match=r"target_sparsity=1\.2"):
        tfsparse.methods.MagnitudePruning(1.2)
    with pytest.raises(ValueError, match="neither"):
        tfsparse.methods.MagnitudePruning()
    plain = zoo.lenet_300_100()
    plain.compile("adam", "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match=r"tfsparse.prune\(model\)"):
        plain.fit(mnist_subset.x_train[:64], mnist_subset.y_train[:64], verbose=0,
                  callbacks=[tfsparse.methods.MagnitudePruning(0.5)])


def test_sparsity_summaries_write_tensorboard_events(mnist_subset, tmp_path):
    import tensorflow as tf

    model = tfsparse.prune(zoo.lenet_300_100())
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(mnist_subset.x_train[:512], mnist_subset.y_train[:512], batch_size=64, epochs=1, verbose=0,
              callbacks=[tfsparse.methods.MagnitudePruning(0.5, frequency=2),
                         tfsparse.callbacks.SparsitySummaries(tmp_path)])
    tags = {}
    for path in tmp_path.glob("events*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                tags[value.tag] = float(tf.make_ndarray(value.tensor))
    assert set(tags) == {"sparsity/fc1/kernel", "sparsity/fc2/kernel", "sparsity/logits/kernel", "sparsity/total"}
    assert tags["sparsity/fc1/kernel"] == pytest.approx(tfsparse.sparsity(model), abs=0.01)
