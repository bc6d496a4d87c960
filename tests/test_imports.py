"""What `import tfsparse` costs: no optional dependency, no import cycle, not
the application (`tfsparse_app`)."""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfsparse"

# Runs in a fresh interpreter: matplotlib and tensorboard cannot be imported
# (as if not installed), and every attempt to import them is recorded with
# the module that made it. Keras and TensorFlow try both (and go on without
# them); no tfsparse module may try either.
BLOCKED_IMPORTS = textwrap.dedent("""
    import importlib, pkgutil, sys

    BLOCKED = {"matplotlib", "tensorboard"}
    attempts = set()

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] not in BLOCKED:
                return None
            frame = sys._getframe(1)
            while frame.f_code.co_filename.startswith("<frozen"):
                frame = frame.f_back
            attempts.add((name, frame.f_globals.get("__name__")))
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)

    sys.meta_path.insert(0, Blocker())
    import tfsparse

    modules = sorted(m.name for m in pkgutil.walk_packages(tfsparse.__path__, "tfsparse."))
    for module in modules:
        importlib.import_module(module)
    print(len(modules), "modules imported")
    by_tfsparse = sorted(a for a in attempts if str(a[1]).startswith("tfsparse"))
    assert not by_tfsparse, f"tfsparse modules import optional dependencies: {by_tfsparse}"
    assert not any(m.split(".")[0] in BLOCKED for m in sys.modules)
""")


def test_import_needs_neither_matplotlib_nor_tensorboard():
    result = subprocess.run([sys.executable, "-c", BLOCKED_IMPORTS], capture_output=True, text=True,
                            cwd=PACKAGE.parent, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "modules imported" in result.stdout


def test_a_feature_without_its_optional_dependency_names_the_extra_to_install(monkeypatch):
    from tfsparse import callbacks
    from tfsparse_app import plots

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ImportError, match=r"SparsitySummaries needs tensorboard.*pip install 'tfsparse\[tensorboard\]'"):
        callbacks.SparsitySummaries("logs")
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(ImportError, match=r"Plotting needs matplotlib.*pip install 'tfsparse\[plot\]'"):
        plots.plot_training({"loss": [1.0]})


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path, modules):
    """The modules among `modules` that the file imports, anywhere in it
    (inside functions too: a deferred import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tfsparse import layers` imports the module tfsparse.layers;
            # `from tfsparse.surgery import prune` the module tfsparse.surgery.
            submodules = {f"{node.module}.{alias.name}" for alias in node.names}
            found.update(submodules & modules or {node.module})
    return {name for name in found if name in modules}


def _application_modules():
    application = PACKAGE.parent / "tfsparse_app"
    return {".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
            for path in application.rglob("*.py")}


def test_no_library_module_imports_the_application():
    application = _application_modules()
    assert {"tfsparse_app", "tfsparse_app.cli", "tfsparse_app.datasets", "tfsparse_app.zoo"} <= application
    importers = {_module_name(path): sorted(_imports(path, application)) for path in PACKAGE.rglob("*.py")}
    importers = {name: targets for name, targets in importers.items() if targets}
    assert not importers, f"library modules import the application: {importers}"


def test_import_tfsparse_loads_neither_the_application_nor_data_sets():
    check = "import sys, tfsparse; print(sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", check, "tfsparse_app", "tensorflow_datasets", "mlxtend"],
                            capture_output=True, text=True, cwd=PACKAGE.parent,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_no_import_cycle_between_tfsparse_modules():
    files = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    modules = set(files)
    graph = {name: _imports(path, modules) - {name} for name, path in files.items()}
    # The package `tfsparse` gathers the public names for users; a module of
    # the library that imported it would import everything (itself included).
    importers = sorted(name for name, targets in graph.items() if "tfsparse" in targets and name != "tfsparse")
    assert not importers, f"modules import the `tfsparse` package itself: {importers}"
    del graph["tfsparse"]

    state, stack = {}, []

    def visit(name):  # depth-first search; a module met again on the current path closes a cycle
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == "open":
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)

