"""Every fit-time method under `steps_per_execution` > 1 (issue #19).

With `model.compile(..., steps_per_execution=K)` Keras runs K training steps
per call and calls the batch hooks once per call, so a method sees the model
only every K steps. Each test trains a method with one step per execution
and with K = 3 (the update periods are not multiples of 3, and an epoch of 8
steps ends with a call of 2) and checks that the schedule was followed: the
same update rounds, in the same order, with the same schedule values, and the
same nonzero count per layer. Epoch-time updates must not depend on K at all,
and an update at an epoch's boundary must fall on the documented side of its
validation (`tfsparse.methods.PruningMethod`).
"""

import keras
import numpy as np
import pytest
from method_cases import BATCH_SIZE, CASES, EPOCHS, INPUT_SHAPE, STEPS_PER_EPOCH, InterruptAtEpoch, data, inference_kernels

import tfsparse
from tfsparse import allocation, methods
from tfsparse_app import zoo

K = 3
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def build(make_method, steps_per_execution):
    """A seeded LeNet-300-100 pruned and compiled for the method; returns
    (model, method, update calls).

    The update calls are `(optimizer step when the update ran, its
    argument)` of every call of the method's `update`: the argument is the
    step the update was due at, or the epoch of an epoch-time update.
    """
    x, y = data()
    keras.utils.set_random_seed(0)
    method = make_method(x, y)
    model = tfsparse.prune(zoo.lenet_300_100(INPUT_SHAPE, 10), **method.layer_options)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  steps_per_execution=steps_per_execution)
    return model, method, recording(method, "update")


def recording(method, name):
    """Records `(optimizer step, argument)` of every call of `method.<name>`."""
    calls, original = [], getattr(method, name)

    def recorded(at):
        calls.append((method.optimizer_step(), at))
        return original(at)

    setattr(method, name, recorded)
    return calls


def fit(model, method, extra_callbacks=()):
    model.fit(*data(), batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0,
              callbacks=[method, *extra_callbacks])


def train(make_method, steps_per_execution):
    """`build`, then train for the whole schedule."""
    model, method, calls = build(make_method, steps_per_execution)
    fit(model, method)
    assert int(model.optimizer.iterations) == TOTAL_STEPS
    return model, method, calls


def nonzeros(model, method=None):
    """Nonzeros per layer, or in total under a global allocation: one
    threshold over all layers fixes only the total, and the layers' shares
    depend on the weights at the moment of the update."""
    counts = {name: int(np.count_nonzero(kernel)) for name, kernel in inference_kernels(model).items()}
    if isinstance(getattr(method, "allocation", None), allocation.Global):
        return sum(counts.values())
    return counts


def schedule_record(method, calls):
    """What the method's schedule decided, round by round, in its own terms."""
    if isinstance(method, methods.MagnitudePruning):
        return [method.schedule(step + 1) for _, step in calls]  # the sparsity of every update
    if isinstance(method, methods.dst.DynamicSparseTraining):
        # The weights dropped (and grown) per round follow from the drop
        # fraction; how many of them regrow at once depends on the weights.
        return [(h["step"], h["drop_fraction"], h["dropped"]) for h in method.history]
    if isinstance(method, methods.ASNI):
        return method.history
    if isinstance(method, methods.OptG):
        return [(h["epoch"], h["sparsity"]) for h in method.history]
    return [h["epoch"] for h in method.history]  # frozen weights: per-epoch records


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_method_follows_its_schedule(name):
    reference_model, reference, reference_calls = train(CASES[name], 1)
    model, method, calls = train(CASES[name], K)
    record = schedule_record(method, calls)
    assert record == schedule_record(reference, reference_calls)
    assert nonzeros(model, method) == nonzeros(reference_model, reference)
    if isinstance(method, methods.dst.DynamicSparseTraining):
        # Rounds every 4 steps up to stop_at * 32 = 24, though the calls
        # end after steps 3, 6, 8, 11, 14, 16, ... (a check of the step at
        # each call's end alone meets only 8, 16 and 24).
        assert [step for step, *_ in record] == [4, 8, 12, 16, 20, 24]


def test_magnitude_applies_the_update_due_inside_the_last_call():
    """frequency=4, end_fraction=1: the last update is due before step 32,
    inside the last call (steps 31 and 32); it is applied at that call's end,
    so training ends at the target like with one step per execution."""
    def make(x, y):
        return methods.MagnitudePruning(0.8, frequency=4, end_fraction=1.0)

    reference_model, _, reference_calls = train(make, 1)
    model, method, calls = train(make, K)
    assert [step for _, step in calls] == [step for _, step in reference_calls]
    assert method.schedule(calls[-1][1] + 1) == pytest.approx(0.8)
    assert nonzeros(model) == nonzeros(reference_model)
    # Each update ran at the first hook at or after the step it was due at.
    assert all(ran == due for ran, due in reference_calls)
    for ran, due in calls:
        assert due <= ran < due + K


@pytest.mark.parametrize("update_every", [2, 4])
def test_dst_runs_every_round_once_with_its_own_step(update_every):
    """With update_every < K two rounds fall due inside one call: both run,
    back to back at its end, each with its own step (drop fraction, seed)."""
    def make(x, y):
        return methods.RigL(0.8, update_every=update_every, gradient_data=(x, y))

    reference_model, reference, reference_calls = train(make, 1)
    model, method, calls = train(make, K)
    expected = list(range(update_every, int(0.75 * TOTAL_STEPS) + 1, update_every))
    assert [h["step"] for h in reference.history] == expected
    assert schedule_record(method, calls) == schedule_record(reference, reference_calls)
    for ran, step in calls:
        assert step <= ran < step + K
    assert nonzeros(model) == nonzeros(reference_model)


def test_edge_popup_recomputes_the_top_k_at_the_first_hook_after_each_due_step():
    """update_every=2: due before the even steps. A due step inside a call is
    served at the call's end (the next call's start), and a boundary serves
    all the due steps before it with one recomputation."""
    def make(x, y):
        return methods.EdgePopup(keep_fraction=0.3, update_every=2)

    _, _, reference_calls = train(make, 1)
    _, _, calls = train(make, K)
    due = list(range(0, TOTAL_STEPS, 2))
    assert reference_calls == [(step, step) for step in due]
    boundaries = sorted({epoch * STEPS_PER_EPOCH + min(start, STEPS_PER_EPOCH)
                         for epoch in range(EPOCHS) for start in range(0, STEPS_PER_EPOCH + K, K)})
    served = sorted({min(b for b in boundaries if b >= step) for step in due})
    # One update per hook, at the latest step due there.
    assert calls == [(ran, max(step for step in due if step <= ran)) for ran in served]


@pytest.mark.parametrize("name", ["magnitude", "rigl", "edge-popup"])
def test_resumed_training_neither_repeats_nor_skips_updates(name, tmp_path):
    """`BackupAndRestore` restores the step after the methods' on_train_begin;
    the interrupted and the resumed run together make the updates of the
    uninterrupted one, each once."""
    model, method, calls = train(CASES[name], K)
    uninterrupted = inference_kernels(model)

    model, method, interrupted_calls = build(CASES[name], K)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, method, [backup, InterruptAtEpoch(EPOCHS // 2)])
    model, method, resumed_calls = build(CASES[name], K)
    fit(model, method, [backup])
    assert interrupted_calls + resumed_calls == calls
    for key, kernel in inference_kernels(model).items():
        np.testing.assert_array_equal(kernel != 0, uninterrupted[key] != 0, err_msg=key)


EPOCH_ENDS = [(epoch + 1) * STEPS_PER_EPOCH for epoch in range(EPOCHS)]


@pytest.mark.parametrize("name, updates", [
    ("asni", [(end, epoch) for epoch, end in enumerate(EPOCH_ENDS)]),  # after each epoch's training
    ("optg", [(epoch * STEPS_PER_EPOCH, epoch) for epoch in range(EPOCHS)]),  # before its first step
    ("aslp", []),  # records only
    ("supermask", []),
])
def test_epoch_methods_act_at_their_epoch_hook_whatever_k(name, updates):
    """Epoch-time updates and records come at the same points with K = 1
    and K = 3, on the same model: the same masks, exactly, and the same
    records."""
    runs = []
    for steps_per_execution in (1, K):
        model, method, calls = build(CASES[name], steps_per_execution)
        summaries = recording(method, "summarize_epoch")
        fit(model, method)
        assert calls == updates
        assert summaries == [(end, epoch) for epoch, end in enumerate(EPOCH_ENDS)]
        runs.append(({key: kernel != 0 for key, kernel in inference_kernels(model).items()}, method.history))
    (reference_masks, reference_history), (masks, history) = runs
    assert history == reference_history
    for key, mask in masks.items():
        np.testing.assert_array_equal(mask, reference_masks[key], err_msg=key)


class UpdatesAtValidation(keras.callbacks.Callback):
    """Counts a method's updates so far at the start of each validation."""

    def __init__(self, calls):
        super().__init__()
        self.calls, self.counts = calls, []

    def on_test_begin(self, logs=None):
        self.counts.append(len(self.calls))


@pytest.mark.parametrize("make, counts", [
    # Before a batch: tfmot steps 3, 6, ..., 21 are due after 2, 5, ..., 20
    # steps; the one after step 8, an epoch's end, is left to the next epoch.
    (lambda x, y: methods.MagnitudePruning(0.8, frequency=3), [2, 5, 7, 7]),
    # After a batch: the rounds at steps 8, 16, 24 come before validation.
    (CASES["rigl"], [2, 4, 6, 6]),
    # Epoch t's prune comes after its validation, epoch t's top-k before its first step.
    (CASES["asni"], [0, 1, 2, 3]),
    (CASES["optg"], [1, 2, 3, 4]),
], ids=["before-batch", "after-batch", "epoch-end", "epoch-begin"])
def test_updates_at_an_epoch_boundary_come_before_or_after_its_validation(make, counts):
    model, method, calls = build(make, K)
    spy = UpdatesAtValidation(calls)
    model.fit(*data(), validation_data=data(seed=1), batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False,
              verbose=0, callbacks=[method, spy])
    assert spy.counts == counts
