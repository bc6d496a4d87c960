"""One training job: data, model, method, fit, evaluate, strip, save, report.

This is what `tfsparse run` and `tfsparse demo` execute; it is also the
function to call from a notebook for the same outputs.
"""

import time

import keras

from tfsparse import callbacks, datasets, methods, models, report, stats
from tfsparse._utils import require
from tfsparse.shrink import shrink
from tfsparse.surgery import prune, strip

DENSE = "dense"


def run_job(
    method,
    model,
    dataset,
    sparsity,
    epochs,
    out,
    batch_size=128,
    learning_rate=1e-3,
    method_options=None,
    seed=0,
    max_train=None,
    max_test=None,
    validation_fraction=0.1,
    overwrite=False,
    data_dir=None,
    download=None,
    verbose=1,
    export=False,
):
    """Trains `model` on `dataset` with `method` and writes its outputs to `out`.

    `method` is a registered method name (see `tfsparse methods`) or
    "dense" for the unpruned baseline. `out` receives `model.keras` (the
    stripped model), `report.json`, `report.md`, `training.png` and
    `layers.png`. 10 % of the training set is held out for validation; the
    test set is used once, at the end.

    Returns:
        The report as a dict.
    """
    require("matplotlib.figure", "plot", "The run report's plots")  # before training, not after it
    method_class = None if method == DENSE else methods.get(method)
    if model not in models.BUILDERS:
        raise ValueError(f"Unknown model {model!r}. Available models: {sorted(models.BUILDERS)}")
    output = report.OutputDirectory(out, overwrite=overwrite)
    try:
        result = _train_and_evaluate(
            method, method_class, model, dataset, sparsity, epochs, batch_size,
            learning_rate, method_options or {}, seed, max_train, max_test,
            validation_fraction, data_dir, download, verbose, output.path, export,
        )
        report.write_report(output.path, result)
    except BaseException:
        output.abandon()
        raise
    output.commit()
    return result


def _train_and_evaluate(
    method, method_class, model_name, dataset, sparsity, epochs, batch_size,
    learning_rate, method_options, seed, max_train, max_test,
    validation_fraction, data_dir, download, verbose, directory, export,
):
    data = datasets.load(dataset, data_dir=data_dir, download=download, max_train=max_train, max_test=max_test)
    (x_train, y_train), (x_val, y_val) = data.validation_split(validation_fraction, seed=seed)
    keras.utils.set_random_seed(seed)
    model = models.get(model_name, data.input_shape, data.num_classes)
    callback = None
    if method_class is not None:
        callback = method_class.from_cli(sparsity, epochs, (x_train, y_train), **method_options)
        model = prune(model, **callback.layer_options)

    def train(model, method_callbacks):
        model.compile(
            keras.optimizers.Adam(learning_rate),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        return model.fit(
            x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val),
            callbacks=[*method_callbacks, callbacks.SparsityLogger()], verbose=verbose,
        )

    def test_metrics(model):
        stripped = strip(model)
        stripped.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        loss, accuracy = stripped.evaluate(data.x_test, data.y_test, batch_size=512, verbose=0)
        return stripped, {"test_accuracy": float(accuracy), "test_loss": float(loss)}

    def retrain(new_model):
        train(new_model, [])
        return test_metrics(new_model)[1]

    started = time.perf_counter()
    history = train(model, [callback] if callback else [])
    train_seconds = time.perf_counter() - started
    stripped, metrics = test_metrics(model)
    metrics["params"] = stripped.count_params()
    if isinstance(callback, methods.ChannelPruning):  # remove the pruned channels: same outputs
        stripped = shrink(model)
        metrics["params_before_shrink"], metrics["params"] = metrics["params"], stripped.count_params()
    stripped.save(directory / "model.keras")
    extra = callback.finish(model, directory, retrain, lambda m: test_metrics(m)[1]) if callback else {}
    summary = stats.summary(stripped, print_fn=print if verbose else None)
    exported = {}
    if export is not False:
        from tfsparse import export as export_lib

        tflite = export_lib.to_tflite(stripped, directory / "model.tflite", quantization=export,
                                      representative_data=x_train[:500], verification_data=data.x_test[:1000])
        exported = {"tflite": tflite.to_dict(), "tflite_summary": str(tflite).replace(str(directory / "model.tflite"), "model.tflite")}
    return {
        "settings": {
            "method": method, "model": model_name, "dataset": dataset, "target_sparsity": sparsity,
            "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
            **{f"method.{k}": v for k, v in method_options.items()},
        },
        "data_source": data.source + (" (SUBSET)" if data.is_subset else ""),
        "metrics": {
            **metrics,
            "val_accuracy": float(history.history["val_accuracy"][-1]),
            "sparsity": summary["total"]["sparsity"],
            "train_seconds": train_seconds,
            **extra,
        },
        "history": {k: [float(v) for v in values] for k, values in history.history.items()},
        "layers": summary["layers"],
        **exported,
    }
