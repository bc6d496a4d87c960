"""Worker process of the benchmarks: trains one configuration, prints JSON.

Jobs (a JSON object on the command line):
- {"kind": "accuracy", "library": "tfsparse"|"tfmot"|"dense", ...}: the tfmot
  recipe (Adam, polynomial schedule over the first `end_fraction` of the
  steps, `frequency`), returns test accuracy, sparsity, training seconds.
- {"kind": "epoch_time", "library": "keras3"|"tf_keras", ...}: per-epoch
  training time of the plain and of the pruned model, interleaved.
- {"kind": "dst" or "method", "method": "dst-ee"|"rigl"|"set"|"optg"|
  "magnitude-global"|"dense", ...}: a tfsparse method (or none) on the shared recipe (Adam),
  or with "recipe": "paper" on OptG's (see `optimizer`).
- {"kind": "overhead", "method": ..., ...}: per-epoch times of a method and
  of the plain masked model, interleaved.
- {"kind": "de", ...}: a dense teacher, then Directed Evolution.
Under "tfmot"/"tf_keras" the process must run with TF_USE_LEGACY_KERAS=1.
"""

import functools
import json
import sys
import time
from pathlib import Path

import numpy as np


def load(job):
    with np.load(job["data"]) as data:
        return data["x_train"], data["y_train"], data["x_test"], data["y_test"]


def build(keras, model, input_shape, weight_decay=0.0):
    """The benchmark model; `weight_decay` > 0 adds PyTorch's coupled weight
    decay on every kernel: an L2 penalty weight_decay / 2 * sum(w ** 2) on
    the kernel variable, so pruned entries decay too."""
    layers = keras.layers
    options = {"kernel_regularizer": keras.regularizers.L2(weight_decay / 2)} if weight_decay else {}
    dense = functools.partial(layers.Dense, **options)
    conv = functools.partial(layers.Conv2D, **options)
    if model == "lenet_300_100":
        body = [layers.Flatten(), dense(300, activation="relu"), dense(100, activation="relu")]
    elif model == "lenet5":
        body = [conv(6, 5, padding="same", activation="relu"), layers.MaxPooling2D(),
                conv(16, 5, activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
                dense(120, activation="relu"), dense(84, activation="relu")]
    elif model == "conv2":
        body = [conv(64, 3, padding="same", activation="relu"),
                conv(64, 3, padding="same", activation="relu"), layers.MaxPooling2D(), layers.Flatten(),
                dense(256, activation="relu"), dense(256, activation="relu")]
    else:
        raise ValueError(model)
    return keras.Sequential([keras.Input(input_shape), *body, dense(10)])


def libraries(library):
    """(keras module, prune function, callbacks factory, strip function, sparsity function)."""
    if library in ("tfmot", "tf_keras"):
        import tf_keras as keras
        import tensorflow_model_optimization as tfmot

        sparsity_api = tfmot.sparsity.keras

        def prune(model, schedule_args):
            schedule = sparsity_api.PolynomialDecay(**schedule_args)
            return sparsity_api.prune_low_magnitude(model, pruning_schedule=schedule)

        def strip(model):
            return sparsity_api.strip_pruning(model)

        return keras, prune, lambda: [sparsity_api.UpdatePruningStep()], strip
    import keras

    import tfsparse

    def prune(model, schedule_args):
        prune.method = tfsparse.methods.MagnitudePruning(
            schedule=tfsparse.schedules.PolynomialDecay(**schedule_args), allocation=schedule_args.get("allocation", "layer"))
        return tfsparse.prune(model)

    def strip(model):
        return tfsparse.strip(model)

    return keras, prune, lambda: [prune.method], strip


def fit_same_batches(model, x, y, job, callbacks):
    """Trains epoch by epoch on batches that do not depend on the library.

    Keras 3 and tf_keras shuffle differently from the second epoch on (with
    the same seed they agree on epoch 1 only), so each epoch's order comes
    from NumPy here and `fit` runs with shuffle=False. Both pruning libraries
    keep their step counters across the one-epoch fits.
    """
    rng = np.random.default_rng(job["seed"])
    for epoch in range(job["epochs"]):
        order = rng.permutation(len(x))
        model.fit(x[order], y[order], batch_size=job["batch_size"], initial_epoch=epoch, epochs=epoch + 1,
                  shuffle=False, verbose=0, callbacks=callbacks)


def optimizer(keras, job, steps_per_epoch):
    """Adam at `learning_rate` (the shared recipe), or with "recipe": "paper"
    OptG's: SGD momentum 0.9, the learning rate rising linearly from 0 to
    `learning_rate` over `warmup_epochs`, then cosine to 0 at the last step
    (its coupled "weight_decay" is in the model, see `build`)."""
    if job.get("recipe", "adam") == "adam":
        return keras.optimizers.Adam(job["learning_rate"])
    warmup_steps = job["warmup_epochs"] * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, job["epochs"] * steps_per_epoch - warmup_steps, warmup_target=job["learning_rate"],
        warmup_steps=warmup_steps)
    return keras.optimizers.SGD(schedule, momentum=0.9)


def kernel_sparsity(model):
    kernels = [w.numpy() for w in model.weights if "kernel" in w.name]
    return 1.0 - sum(np.count_nonzero(k) for k in kernels) / sum(k.size for k in kernels)


def accuracy_job(job):
    x, y, xt, yt = load(job)
    keras, prune, callbacks, strip = libraries(job["library"])
    keras.utils.set_random_seed(job["seed"])
    model = build(keras, job["model"], x.shape[1:])
    steps = int(np.ceil(len(x) / job["batch_size"])) * job["epochs"]
    fit_callbacks = []
    if job["library"] != "dense":
        schedule_args = dict(initial_sparsity=0.0, final_sparsity=job["sparsity"], begin_step=0,
                             end_step=int(job["end_fraction"] * steps), frequency=job["frequency"])
        model = prune(model, schedule_args)
        fit_callbacks = callbacks()
    model.compile(keras.optimizers.Adam(job["learning_rate"]),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    start = time.perf_counter()
    fit_same_batches(model, x, y, job, fit_callbacks)
    seconds = time.perf_counter() - start
    if job["library"] != "dense":
        model = strip(model)
        model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _, accuracy = model.evaluate(xt, yt, batch_size=1024, verbose=0)
    return {"accuracy": float(accuracy), "sparsity": kernel_sparsity(model), "train_seconds": seconds}


def epoch_time_job(job):
    """Per-epoch times of the plain and the pruned model, in alternating epochs.

    Both models are built once; then one-epoch fits alternate (plain, pruned,
    plain, ...) `rounds` times, so each pair is measured close in time and the
    machine's drift cancels out of the per-pair ratio. The first pair (tracing)
    is dropped. The pruned model prunes on a polynomial schedule to 90 % over
    the first 70 % of all rounds' steps, frequency 100.
    """
    x, y, _, _ = load(job)
    x, y = x[: job["examples"]], y[: job["examples"]]
    keras, prune, callbacks, _ = libraries(job["library"])
    steps = int(np.ceil(len(x) / 128)) * job["rounds"]
    models = {}
    for variant in ("plain", "pruned"):
        keras.utils.set_random_seed(0)
        model = build(keras, job["model"], x.shape[1:])
        fit_callbacks = []
        if variant == "pruned":
            model = prune(model, dict(initial_sparsity=0.0, final_sparsity=0.9, begin_step=0,
                                      end_step=int(0.7 * steps), frequency=100))
            fit_callbacks = callbacks()
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        models[variant] = (model, fit_callbacks)
    times = {"plain": [], "pruned": []}
    for _ in range(job["rounds"]):
        for variant, (model, fit_callbacks) in models.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=128, epochs=1, verbose=0, callbacks=fit_callbacks)
            times[variant].append(time.perf_counter() - start)
    times = {k: v[1:] for k, v in times.items()}
    times["ratios"] = [p / q for p, q in zip(times["pruned"], times["plain"])]
    return times


def asni_job(job):
    """ASNI-I, then ASNI-II and the same mask from a fresh random init."""
    x, y, xt, yt = load(job)
    import keras

    import tfsparse
    from tfsparse.methods import asni

    def compile_fit_evaluate(model, callbacks):
        model.compile(keras.optimizers.Adam(job["learning_rate"]),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        fit_same_batches(model, x, y, job, callbacks)
        return float(model.evaluate(xt, yt, batch_size=1024, verbose=0)[1])

    keras.utils.set_random_seed(job["seed"])
    model = tfsparse.prune(build(keras, job["model"], x.shape[1:]))
    if "sparsity" in job:  # the suite's shared budget: the target, k = min(T / 12, (T/2 - 2) / 4) (our choice,
        epochs = job["epochs"]  # so that S(T - 2) can reach 0.98 with M <= 1 in short runs)
        method = asni.ASNI(target_sparsity=job["sparsity"], scale=min(epochs / 12, (epochs / 2 - 2) / 4),
                           total_epochs=epochs)
    else:
        method = asni.ASNI(magnitude=job["magnitude"], scale=job["scale"], total_epochs=job["epochs"])
    result = {"asni1": compile_fit_evaluate(model, [method]), "sparsity": tfsparse.sparsity(model)}
    init = asni.amenable_initialization(model)
    result["init_bytes"], result["dense_bytes"] = init.size_bytes(), init.dense_size_bytes()
    if job.get("plots"):  # the schedule reached and the surviving weights with c_plus / c_minus
        from tfsparse_app import plots

        directory = Path(job["plots"])
        plots.plot_asni_schedule(method.schedule, method.history, directory / f"asni_{job['model']}_schedule.png")
        plots.plot_asni2_centroids(model, init, directory / f"asni_{job['model']}_centroids.png")
    result["asni2"] = compile_fit_evaluate(asni.amenable_model(model, init), [])
    keras.utils.set_random_seed(job["seed"] + 1000)
    random_init = keras.models.clone_model(model)  # fresh random weights
    tfsparse.masking.assign_masks(tfsparse.masked_weights(random_init),
                                  tfsparse.masking.masks(tfsparse.masked_weights(model)))
    result["random_same_mask"] = compile_fit_evaluate(random_init, [])
    return result


def dst_method(tfsparse, job, x, y, total_steps):
    options = dict(update_every=job["update_every"], total_steps=total_steps, seed=job["seed"])
    if job["method"] != "set":
        options["gradient_data"] = (x, y)
    if job["method"] == "dst-ee":
        options["c"] = job["c"]
    classes = {"dst-ee": tfsparse.methods.DSTEE, "rigl": tfsparse.methods.RigL, "set": tfsparse.methods.SET}
    return classes[job["method"]](job["sparsity"], **options)


def make_method(tfsparse, job, x, y, total_steps):
    """The tfsparse method of a "dst", "optg" or "overhead" job ("magnitude-sigmoid":
    magnitude pruning, global, on OptG's per-epoch sigmoid schedule, applied
    before the last batch of the epoch before)."""
    if job["method"] in ("dst-ee", "rigl", "set"):
        return dst_method(tfsparse, job, x, y, total_steps)
    if job["method"] == "optg":
        return tfsparse.methods.OptG(job["sparsity"], epochs=job["epochs"], beta=job.get("beta", 1.0))
    if job["method"] == "optg-polynomial":
        return optg_on_polynomial_schedule(tfsparse, job["sparsity"], job["epochs"], job["end_fraction"])
    frozen = dict(seed=job["seed"], signed_constant=job.get("signed_constant", False))
    if job["method"] in ("aslp", "aslp-norescale"):
        return tfsparse.methods.ASLP(smart_rescale=job["method"] == "aslp", **frozen)
    if job["method"] == "supermask":
        return tfsparse.methods.Supermask(**frozen)
    if job["method"] == "edge-popup":
        return tfsparse.methods.EdgePopup(job["keep_fraction"], **frozen)
    if job["method"] == "magnitude-sigmoid":  # ablation: OptG's schedule, the magnitude criterion
        steps_per_epoch = total_steps // job["epochs"]
        sigmoid = tfsparse.schedules.SigmoidStep(job["sparsity"], job["epochs"], end_at_target=True)
        schedule = tfsparse.schedules.FunctionSchedule(lambda step: sigmoid(step // steps_per_epoch), steps_per_epoch)
        return tfsparse.methods.MagnitudePruning(schedule=schedule, allocation="global")
    if job["method"] in ("magnitude-global", "magnitude-layer", "magnitude-lamp"):
        schedule = tfsparse.schedules.PolynomialDecay(
            0.0, job["sparsity"], begin_step=0, end_step=int(job["end_fraction"] * total_steps) // 100 * 100,
            frequency=100)
        return tfsparse.methods.MagnitudePruning(schedule=schedule, allocation=job["method"].split("-")[1])
    raise ValueError(job["method"])


def optg_on_polynomial_schedule(tfsparse, sparsity, epochs, end_fraction):
    """Ablation: OptG's scores and per-epoch global top-k, on magnitude
    pruning's schedule instead of its sigmoids: s(e) = sparsity (1 - (1 -
    e / (end_fraction E))^3), and the scores learn at lr_w from the start."""

    class OptGPolynomial(tfsparse.methods.OptG):
        def on_train_begin(self, logs=None):
            self.schedule = lambda epoch: sparsity * (1 - (1 - min(epoch / (end_fraction * epochs), 1.0)) ** 3)

        def mask_learning_rate(self, epoch):
            return float(self.model.optimizer.learning_rate)

    return OptGPolynomial(sparsity, epochs=epochs)


def validation_tracker(x, y, test=None):
    """A callback recording, after every epoch, the inference network's
    accuracy on the last 10 % of (x, y), which the caller holds out from
    training (`cut` is where the held-out part begins), and with `test`
    (x, y) its test accuracy, for reporting the epoch that validation picks
    (early stopping) without looking at the test set."""
    import keras

    class ValidationTracker(keras.callbacks.Callback):
        cut = int(0.9 * len(x))

        def __init__(self):
            super().__init__()
            self.accuracies = []
            self.test_accuracies = []

        def accuracy(self, inputs, labels):
            return float(np.mean(self.model.predict(inputs, batch_size=1024, verbose=0).argmax(-1) == labels))

        def on_epoch_end(self, epoch, logs=None):
            self.accuracies.append(self.accuracy(x[self.cut:], y[self.cut:]))
            if test is not None:
                self.test_accuracies.append(self.accuracy(*test))

    return ValidationTracker()


def method_job(job):
    """One tfsparse method (see `make_method`; "dense": none, the unpruned
    model) on the shared recipe; test (or, with "validation", held-out) accuracy."""
    x, y, xt, yt = load(job)
    if job.get("validation"):  # the last 10 % of the training set, never the test set
        cut = int(0.9 * len(x))
        x, y, xt, yt = x[:cut], y[:cut], x[cut:], y[cut:]
    import keras

    import tfsparse

    keras.utils.set_random_seed(job["seed"])
    tracker = (validation_tracker(x, y, (xt, yt) if job.get("early_stopping") else None)
               if job.get("track_validation") else None)
    steps_per_epoch = int(np.ceil((tracker.cut if tracker else len(x)) / job["batch_size"]))
    method = None if job["method"] == "dense" else make_method(tfsparse, job, x, y, steps_per_epoch * job["epochs"])
    model = build(keras, job["model"], x.shape[1:], job.get("weight_decay", 0.0))
    if method:
        model = tfsparse.prune(model, **method.layer_options)
    model.compile(optimizer(keras, job, steps_per_epoch),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    if tracker:
        x, y = x[:tracker.cut], y[:tracker.cut]
    start = time.perf_counter()
    fit_same_batches(model, x, y, job, [callback for callback in (method, tracker) if callback])
    seconds = time.perf_counter() - start
    stripped = tfsparse.strip(model)
    stripped.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _, accuracy = stripped.evaluate(xt, yt, batch_size=1024, verbose=0)
    history = getattr(method, "history", [])
    result = {"accuracy": float(accuracy), "sparsity": kernel_sparsity(stripped), "train_seconds": seconds,
              "history": history}
    if tracker:
        result["val_accuracy"] = tracker.accuracies
        if job.get("early_stopping"):
            result["test_accuracy_by_epoch"] = tracker.test_accuracies
    if history and "coverage" in history[-1]:
        result["coverage"] = history[-1]["coverage"]
    return result


def overhead_job(job):
    """Per-epoch times: a method vs the plain masked model (no method), interleaved.

    The plain model is `tfsparse.prune(model)` trained without callbacks, so
    it pays for `kernel * mask` too; epochs alternate as in
    `epoch_time_job`, and the first pair (tracing) is dropped.
    """
    x, y, _, _ = load(job)
    import keras

    import tfsparse

    steps = int(np.ceil(len(x) / 128)) * job["rounds"]
    runs = {}
    for variant in ("plain", "method"):
        keras.utils.set_random_seed(0)
        callbacks, options = [], {}
        if variant == "method":
            method = make_method(tfsparse, dict(job, seed=0, epochs=job["rounds"]), x, y, steps)
            callbacks, options = [method], method.layer_options
        model = tfsparse.prune(build(keras, job["model"], x.shape[1:]), **options)
        model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        runs[variant] = (model, callbacks)
    times = {"plain": [], "method": []}
    for epoch in range(job["rounds"]):
        for variant, (model, callbacks) in runs.items():
            start = time.perf_counter()
            model.fit(x, y, batch_size=128, initial_epoch=epoch, epochs=epoch + 1, verbose=0, callbacks=callbacks)
            times[variant].append(time.perf_counter() - start)
    times = {k: v[1:] for k, v in times.items()}
    times["ratios"] = [m / p for m, p in zip(times["method"], times["plain"])]
    return times


def de_job(job):
    """A dense teacher on the shared recipe, then Directed Evolution to the
    per-layer sparsity (post-training, no fine-tuning)."""
    x, y, xt, yt = load(job)
    import keras

    import tfsparse

    keras.utils.set_random_seed(job["seed"])
    teacher = build(keras, job["model"], x.shape[1:])
    teacher.compile(keras.optimizers.Adam(job["learning_rate"]),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    fit_same_batches(teacher, x, y, job, [])
    start = time.perf_counter()
    evolution = tfsparse.methods.DirectedEvolution(teacher, x[:1024], layer_sparsity=job["sparsity"],
                                                   seed=job["seed"], verbose=0)
    student = tfsparse.strip(evolution.run())
    seconds = time.perf_counter() - start
    student.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _, accuracy = student.evaluate(xt, yt, batch_size=1024, verbose=0)
    return {"accuracy": float(accuracy), "sparsity": kernel_sparsity(student), "train_seconds": seconds}


if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    kinds = {"accuracy": accuracy_job, "epoch_time": epoch_time_job, "asni": asni_job, "dst": method_job,
             "method": method_job, "overhead": overhead_job, "de": de_job}
    result = kinds[job["kind"]](job)
    print(json.dumps(result))
