"""Hostile input: diverged training, damaged files, wrong shapes, extreme
sparsities. (Selections, unsupported layers and models with nothing to
prune: test_surgery.py; bad method arguments: each method's tests.)"""

import keras
import numpy as np
import pytest
from method_cases import BATCH_SIZE, CASES, EPOCHS, build, data

import tfsparse
from tfsparse import export, methods, tflite_tensors
from tfsparse_app import cli


@pytest.mark.parametrize("name", sorted(CASES))
def test_diverged_training_stops_with_a_clear_error_not_a_silent_mask(name):
    x, y = data()
    x[3, 0, 0, 0] = np.nan  # one bad pixel: NaN loss, NaN gradients, NaN weights or scores
    model, method = build(name, x, y)
    with pytest.raises(FloatingPointError, match=r"contain NaN or inf \(the weights diverged\?\)"):
        model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[method])
    for weight in tfsparse.masked_weights(model):
        mask = keras.ops.convert_to_numpy(weight.mask)
        assert set(np.unique(mask)) <= {0.0, 1.0} and mask.any(), weight.name


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("files")
    x, y = data()
    model, method = build("magnitude", x, y)
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0, callbacks=[method])
    stripped = tfsparse.strip(model)
    stripped.save(directory / "model.keras")
    export.to_tflite(stripped, directory / "model.tflite", verification_data=x[:32])
    return directory


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9])
def test_truncated_keras_and_tflite_files_give_errors_naming_the_file(saved_files, tmp_path, keep, capsys):
    for suffix in ("keras", "tflite"):
        content = (saved_files / f"model.{suffix}").read_bytes()
        damaged = tmp_path / f"damaged.{suffix}"
        damaged.write_bytes(content[: int(len(content) * keep)])
        assert cli.main(["inspect", str(damaged)]) != 0
        error = capsys.readouterr().err
        assert str(damaged) in error, error
    with pytest.raises(ValueError, match="not a valid .tflite file"):
        tflite_tensors.tensor_rows(tmp_path / "damaged.tflite")
    with pytest.raises(ValueError):
        export.interpreter(tmp_path / "damaged.tflite")


def test_undamaged_files_still_read(saved_files, capsys):
    assert cli.main(["inspect", str(saved_files / "model.keras")]) == 0
    assert cli.main(["inspect", str(saved_files / "model.tflite")]) == 0
    assert "fc1" in capsys.readouterr().out


def test_masks_of_the_wrong_shape_are_refused_before_anything_changes():
    x, y = data()
    model, method = build("magnitude", x, y)
    method.set_model(model)
    before = method.masks()
    wrong = {name: np.ones(mask.shape, bool) for name, mask in before.items()}
    wrong["logits/kernel"] = np.ones((10, 100), bool)  # transposed
    wrong["fc1/kernel"] = np.zeros(before["fc1/kernel"].shape, bool)
    with pytest.raises(ValueError, match=r"Mask for 'logits/kernel' has shape \(10, 100\), expected \(100, 10\)"):
        method.assign_masks(wrong)
    for name, mask in method.masks().items():
        np.testing.assert_array_equal(mask, before[name])


@pytest.mark.parametrize("sparsity", [0.0, 0.999])
@pytest.mark.parametrize("name", ["magnitude", "magnitude-global", "dst-ee", "set", "optg"])
def test_extreme_sparsities_keep_every_layer_alive(name, sparsity):
    x, y = data()
    factories = {
        "magnitude": lambda: methods.MagnitudePruning(sparsity, frequency=4),
        "magnitude-global": lambda: methods.MagnitudePruning(sparsity, frequency=4, allocation="global"),
        "dst-ee": lambda: methods.DSTEE(sparsity, update_every=4, gradient_data=(x, y)),
        "set": lambda: methods.SET(sparsity, update_every=4),
        "optg": lambda: methods.OptG(sparsity),
    }
    model, _ = build(name, x, y)  # pruned for this method's layer options
    method = factories[name]()
    history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, verbose=0, callbacks=[method])
    assert np.isfinite(history.history["loss"]).all()
    total = sum(weight.size for weight in tfsparse.masked_weights(model))
    kept = 0
    for weight in tfsparse.masked_weights(model):
        count = int(np.count_nonzero(keras.ops.convert_to_numpy(weight.mask)))
        assert count >= 1, weight.name
        kept += count
    if sparsity == 0.0:
        assert kept == total
    else:
        assert kept <= round(total * (1 - sparsity)) + len(tfsparse.masked_weights(model))


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan"), "0.9", True])
def test_sparsity_outside_zero_one_is_refused_by_every_method(value):
    for factory in (
        lambda: methods.MagnitudePruning(value),
        lambda: methods.DSTEE(value, gradient_data=data()),
        lambda: methods.SET(value),
        lambda: methods.OptG(value),
        lambda: methods.ASNI(value),
    ):
        with pytest.raises(ValueError, match=r"sparsity.*\[0, 1\)"):
            factory()
