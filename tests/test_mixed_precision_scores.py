"""Self-updating scores under mixed_float16: float32 state, loss scale undone."""

import keras
import numpy as np
import pytest

import tfsparse
from tfsparse.methods import ASLP, OptG
from tfsparse_app import zoo


def score_magnitude(method_factory, policy, data):
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    method = method_factory()
    model = tfsparse.prune(zoo.lenet_300_100(), **method.layer_options)
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train[:1000], data.y_train[:1000], batch_size=100, epochs=2, verbose=0, callbacks=[method])
    if policy == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    weight = tfsparse.masked_weights(model)[0]
    assert weight.score.dtype == "float32"
    return float(np.abs(keras.ops.convert_to_numpy(weight.score)).max())


@pytest.mark.parametrize("factory", [lambda: OptG(0.5), lambda: ASLP()], ids=["optg", "aslp"])
def test_scores_learn_the_same_under_mixed_float16(mnist_subset, factory):
    full = score_magnitude(factory, "float32", mnist_subset)
    mixed = score_magnitude(factory, "mixed_float16", mnist_subset)
    # Without undoing the loss scale (2**15) the mixed run's scores would be thousands of times larger.
    assert np.isfinite(mixed) and mixed == pytest.approx(full, rel=0.25)
