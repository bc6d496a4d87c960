"""One training job: data, model, method, fit, evaluate, strip, save, report.

This is what `tfsparse run` and `tfsparse demo` execute; it is also the
function to call from a notebook for the same outputs.
"""

import time

import keras

import tfsparse
from tfsparse import callbacks
from tfsparse._utils import require
from tfsparse_app import datasets, recipes, report, zoo

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

    `method` is a method name of `tfsparse_app.recipes.RECIPES` (see
    `tfsparse methods`) or "dense" for the unpruned baseline;
    `method_options` are options of its recipe. `out` receives
    `model.keras` (the stripped model), `report.json`, `report.md`,
    `training.png`, `layers.png` and what the recipe adds. 10 % of the
    training set is held out for validation; the test set is used once, at
    the end.

    Returns:
        The report as a dict.
    """
    require("matplotlib.figure", "plot", "The run report's plots")  # before training, not after it
    recipe = None if method == DENSE else recipes.get(method)
    if model not in zoo.BUILDERS:
        raise ValueError(f"Unknown model {model!r}. Available models: {sorted(zoo.BUILDERS)}")
    method_options = method_options or {}
    output = report.OutputDirectory(out, overwrite=overwrite)
    try:
        data = datasets.load(dataset, data_dir=data_dir, download=download, max_train=max_train, max_test=max_test)
        result = {
            "settings": {
                "method": method, "model": model, "dataset": dataset, "target_sparsity": sparsity,
                "epochs": epochs, "batch_size": batch_size, "learning_rate": learning_rate, "seed": seed,
                **{f"method.{k}": v for k, v in method_options.items()},
            },
            "data_source": data.source + (" (SUBSET)" if data.is_subset else ""),
            **_train_and_evaluate(
                recipe, data, output.path, model_name=model, sparsity=sparsity, epochs=epochs,
                batch_size=batch_size, learning_rate=learning_rate, options=method_options, seed=seed,
                validation_fraction=validation_fraction, verbose=verbose, export=export,
            ),
        }
        report.write_report(output.path, result)
    except BaseException:
        output.abandon()
        raise
    output.commit()
    return result


def _train_and_evaluate(recipe, data, directory, *, model_name, sparsity, epochs, batch_size, learning_rate,
                        options, seed, validation_fraction, verbose, export):
    """Trains, evaluates and saves; returns the report's metrics, history,
    layers and export sections."""
    (x_train, y_train), (x_val, y_val) = data.validation_split(validation_fraction, seed=seed)
    keras.utils.set_random_seed(seed)
    model = zoo.get(model_name, data.input_shape, data.num_classes)

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
        stripped = tfsparse.strip(model)
        stripped.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        loss, accuracy = stripped.evaluate(data.x_test, data.y_test, batch_size=512, verbose=0)
        return stripped, {"test_accuracy": float(accuracy), "test_loss": float(loss)}

    def retrain(new_model):
        train(new_model, [])
        return test_metrics(new_model)[1]

    job = recipes.Job(sparsity, epochs, options, (x_train, y_train), directory, retrain,
                      lambda model: test_metrics(model)[1], verbose)
    method = recipe.build(job) if recipe else None
    if method is not None:
        model = tfsparse.prune(model, **method.layer_options)
    started = time.perf_counter()
    history = train(model, [method] if method else [])
    train_seconds = time.perf_counter() - started
    written, metrics = test_metrics(model)
    metrics["params"] = written.count_params()
    if recipe and recipe.shrink:  # the pruned channels removed: same outputs
        written = tfsparse.shrink(model)
        metrics["params_before_shrink"], metrics["params"] = metrics["params"], written.count_params()
    written.save(directory / "model.keras")
    extra = recipe.after_training(job, method, model) if recipe else {}
    summary = tfsparse.summary(written, print_fn=print if verbose else None)
    exported = {}
    if export is not False:
        from tfsparse import export as export_lib

        tflite = export_lib.to_tflite(written, directory / "model.tflite", quantization=export,
                                      representative_data=x_train[:500], verification_data=data.x_test[:1000])
        exported = {"tflite": tflite.to_dict(),
                    "tflite_summary": str(tflite).replace(str(directory / "model.tflite"), "model.tflite")}
    return {
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
