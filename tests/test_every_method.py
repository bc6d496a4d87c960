"""Every fit-time method under mixed precision and XLA, and resumed after an
interruption (the cases are in method_cases.py)."""

import keras
import numpy as np
import pytest
from method_cases import BATCH_SIZE, CASES, EPOCHS, STEPS_PER_EPOCH, InterruptAtEpoch, build, data, inference_kernels

import tfsparse

NAMES = sorted(CASES)


def fit(model, method, x, y, extra_callbacks=()):
    return model.fit(x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0,
                     callbacks=[method, *extra_callbacks])


@pytest.mark.parametrize("jit_compile", [False, True], ids=["eager-graph", "xla"])
@pytest.mark.parametrize("name", NAMES)
def test_mixed_float16_with_and_without_xla(name, jit_compile):
    keras.config.set_dtype_policy("mixed_float16")
    x, y = data()
    model, method = build(name, x, y, jit_compile=jit_compile)
    history = fit(model, method, x, y)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    for weight in tfsparse.masked_weights(model):
        assert weight.layer.compute_dtype == "float16"
        # Masks, scores and scales stay float32: float16 would round scores
        # together and break top-k ties and small score updates.
        for variable in (weight.kernel, weight.mask, weight.score, weight.scale):
            assert variable is None or variable.dtype == "float32"
    kernels = inference_kernels(model)
    assert all(np.isfinite(kernel).all() for kernel in kernels.values())
    nonzero = sum(np.count_nonzero(kernel) for kernel in kernels.values())
    total = sum(kernel.size for kernel in kernels.values())
    assert 0 < nonzero < total  # pruned, and not emptied
    np.testing.assert_allclose(tfsparse.strip(model)(x[:16]), model(x[:16]), atol=2e-2)


@pytest.mark.parametrize("name", NAMES)
def test_backup_and_restore_resume_ends_with_the_uninterrupted_masks(name, tmp_path):
    x, y = data()
    model, method = build(name, x, y)
    fit(model, method, x, y)
    uninterrupted = inference_kernels(model)

    model, method = build(name, x, y)
    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="interrupted"):
        fit(model, method, x, y, [backup, InterruptAtEpoch(EPOCHS // 2)])
    model, method = build(name, x, y)  # what a new process would build
    fit(model, method, x, y, [backup])
    assert int(model.optimizer.iterations) == EPOCHS * STEPS_PER_EPOCH
    for key, kernel in inference_kernels(model).items():
        np.testing.assert_array_equal(kernel != 0, uninterrupted[key] != 0, err_msg=key)
        np.testing.assert_allclose(kernel, uninterrupted[key], rtol=1e-5, atol=1e-6, err_msg=key)
