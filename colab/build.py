"""Writes and runs the tutorial notebooks.

The notebooks' cells live here, as Python, so they can be reviewed and
edited as code. `python colab/build.py` writes every notebook and executes
it in the full setting (outputs kept, plots as images), recording the
SHA-256 of its code cells in the notebook's metadata; the test
(tests/test_notebooks.py) runs each committed notebook again in the small
setting (TFSPARSE_NOTEBOOK_SMALL=1) and checks that its code still has that
hash, so the committed outputs come from the code CI executes.

    python colab/build.py [--only 03_dst_ee]
"""

import argparse
import hashlib
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
REPOSITORY = "tfsparse/tfsparse"

SETUP = '''import importlib.util
import os

if importlib.util.find_spec("tfsparse") is None:  # on Colab: install tfsparse first
    get_ipython().run_line_magic("pip", "install -q 'tfsparse[all] @ git+https://github.com/{repository}'")

SMALL = os.environ.get("TFSPARSE_NOTEBOOK_SMALL") == "1"  # CI runs a shrunken version
EPOCHS = {epochs}
MAX_TRAIN = 3000 if SMALL else None

import keras
import numpy as np
import tfsparse
from IPython.display import Image
from tfsparse_app import datasets, zoo

# tensorflow-datasets on Colab; offline: local files (Debian's Fashion-MNIST, ~/.keras/datasets)
data = datasets.load("fashion_mnist", max_train=MAX_TRAIN, max_test=2000 if SMALL else None)
loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
print(data.source, data.x_train.shape)'''

NOTEBOOKS = {
    "01_quickstart": ("Quickstart: prune a Keras 3 model, strip, save, export", '''
tfsparse prunes **Keras 3** models with callbacks you pass to `model.fit`. tfmot, the standard Keras
pruning library, only accepts legacy Keras 2 (`tf_keras`) models. This notebook prunes LeNet-300-100 on
Fashion-MNIST to 90 % zeros with gradual magnitude pruning (Zhu & Gupta, "To prune, or not to prune",
arXiv:1710.01878, the method tfmot implements), compares with tfmot on the same recipe, then strips,
saves and exports the model to TFLite.''', "1 if SMALL else 8", [
        '''model = tfsparse.prune(zoo.lenet_300_100())   # masked copy: outputs unchanged
model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
pruning = tfsparse.methods.MagnitudePruning(target_sparsity=0.9, frequency=10 if SMALL else 100)  # tfmot's schedule
model.fit(data.x_train, data.y_train, batch_size=128, epochs=EPOCHS, verbose=2, callbacks=[pruning])
tfsparse.summary(model)''',
        '''final = tfsparse.strip(model)        # plain Keras layers, zeros baked in
final.compile(loss=loss, metrics=["accuracy"])
print("test accuracy", final.evaluate(data.x_test, data.y_test, verbose=0)[1])
final.save("pruned.keras")''',
        '''# The same recipe with tfmot, for users migrating from tf_keras. tfmot needs tf_keras
# (TF_USE_LEGACY_KERAS=1), which cannot share a process with Keras 3, so it runs in a subprocess.
import subprocess, sys
np.savez("data.npz", x=data.x_train, y=data.y_train, xt=data.x_test, yt=data.y_test)
script = f"""
import numpy as np, tf_keras as keras, tensorflow_model_optimization as tfmot
d = np.load("data.npz")
model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(300, activation="relu"),
                          keras.layers.Dense(100, activation="relu"), keras.layers.Dense(10)])
steps = int(np.ceil(len(d["x"]) / 128)) * {EPOCHS}
schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, 0.9, 0, int(0.7 * steps) // 100 * 100 or 1, frequency=min(100, steps))
model = tfmot.sparsity.keras.prune_low_magnitude(model, pruning_schedule=schedule)
model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
model.fit(d["x"], d["y"], batch_size=128, epochs={EPOCHS}, verbose=0, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
print("tfmot test accuracy", model.evaluate(d["xt"], d["yt"], verbose=0)[1])
"""
if importlib.util.find_spec("tensorflow_model_optimization") and importlib.util.find_spec("tf_keras"):
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    print(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True).stdout)
else:
    print("tfmot is not installed: pip install 'tfsparse[tfmot]' to compare")''',
        '''report = tfsparse.export.to_tflite(final, "pruned.tflite", quantization="int8",
                                   representative_data=data.x_train[:500], verification_data=data.x_test)
print(report)''',
    ]),
    "02_asni": ("ASNI-I and ASNI-II", '''
**ASNI** (Damadi, Nouri & Pirsiavash, arXiv:2202.09284). ASNI-I prunes in one training run: after each
epoch t, global magnitude pruning brings the network to S(t) = M sigmoid((t - T/2) / k). ASNI-II takes
the trained sparse network and keeps only its mask, the signs of the surviving weights and **two
numbers per layer** (the mean of the positive and of the negative survivors): that tiny
initialization retrains to the accuracy of ASNI-I.''', "5 if SMALL else 20", [
        '''from pathlib import Path

from tfsparse.methods import ASNI, amenable_initialization, amenable_model
from tfsparse_app.plots import plot_asni2_centroids, plot_asni_schedule

keras.utils.set_random_seed(0)
model = tfsparse.prune(zoo.lenet_300_100())
model.compile(keras.optimizers.Adam(1.2e-4), loss, metrics=["accuracy"])
asni = ASNI(target_sparsity=0.9, scale=EPOCHS / 25)   # M derived so the reported network has 0.9
model.fit(data.x_train, data.y_train, batch_size=60, epochs=EPOCHS, verbose=2, callbacks=[asni])
print("ASNI-I:", model.evaluate(data.x_test, data.y_test, verbose=0)[1], "sparsity", tfsparse.sparsity(model))
plot_asni_schedule(asni.schedule, asni.history, "schedule.png"); Image("schedule.png")''',
        '''init = amenable_initialization(model)
Path("asni2_init.npz").write_bytes(init.to_bytes())
print(f"ASNI-II initialization: {init.size_bytes():,} bytes vs {init.dense_size_bytes():,} bytes of dense float32 kernels")
plot_asni2_centroids(model, init, "centroids.png"); Image("centroids.png")''',
        '''second = amenable_model(model, init)        # fresh copy: survivors set to c_plus / c_minus by sign
second.compile(keras.optimizers.Adam(1.2e-4), loss, metrics=["accuracy"])
second.fit(data.x_train, data.y_train, batch_size=60, epochs=EPOCHS, verbose=2)
print("ASNI-II:", second.evaluate(data.x_test, data.y_test, verbose=0)[1])''',
    ]),
    "03_dst_ee": ("DST-EE vs RigL vs SET", '''
**Dynamic sparse training** keeps the network sparse from the first step and moves its connections:
every 100 steps each layer drops its weakest weights and grows new ones. **SET** (Mocanu et al. 2018)
grows at random, **RigL** (Evci et al., arXiv:1911.11134) where the dense gradient is largest, and
**DST-EE** (Huang et al., arXiv:2211.16667) adds an exploration bonus c sqrt(ln t / N) for weights
that were rarely active, balancing exploitation and exploration. Coverage is the fraction of weights
that have ever been active.''', "1 if SMALL else 10", [
        '''from tfsparse.methods import DSTEE, SET, RigL

runs = {}
for method_class in (DSTEE, RigL, SET):
    keras.utils.set_random_seed(0)
    extra = {} if method_class is SET else {"gradient_data": (data.x_train, data.y_train)}
    method = method_class(0.95, update_every=5 if SMALL else 100, **extra)
    model = tfsparse.prune(zoo.lenet_300_100(), **method.layer_options)
    model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
    model.fit(data.x_train, data.y_train, batch_size=128, epochs=EPOCHS, verbose=0, callbacks=[method])
    runs[method_class.__name__] = method.history
    print(f"{method_class.__name__:6s} test accuracy {model.evaluate(data.x_test, data.y_test, verbose=0)[1]:.4f}"
          f"  sparsity {tfsparse.sparsity(model):.3f}  coverage {method.history[-1]['coverage']:.3f}")''',
        '''import matplotlib.pyplot as plt

for name, history in runs.items():
    plt.plot([h["step"] for h in history], [h["coverage"] for h in history], label=name)
plt.xlabel("step"); plt.ylabel("coverage (fraction of weights ever active)"); plt.legend(); plt.show()''',
    ]),
    "04_aslp": ("ASLP: subnetworks of an untrained network", '''
A randomly initialized network, never trained, contains subnetworks that classify well. **ASLP**
(Dupont et al., "Extracting Effective Subnetworks with Gumbel-Softmax", arXiv:2202.12986) learns one
logit per weight and samples hard masks with the straight-through Gumbel-softmax; a learned scale per
layer ("Smart Rescale") compensates for the pruned weights. No sparsity target: it emerges.''', "2 if SMALL else 15", [
        '''from tfsparse.methods import ASLP
from tfsparse_app.plots import plot_frozen_history

keras.utils.set_random_seed(0)
aslp = ASLP()
model = tfsparse.prune(zoo.lenet_300_100(), **aslp.layer_options)
model.compile("sgd", loss, metrics=["accuracy"])   # the weights are frozen: only logits and scales learn
model.fit(data.x_train, data.y_train, batch_size=256, epochs=EPOCHS, verbose=2, callbacks=[aslp])
final = tfsparse.strip(model)                      # keep logit >= 0, fold in the scales
final.compile(loss=loss, metrics=["accuracy"])
print("subnetwork test accuracy", final.evaluate(data.x_test, data.y_test, verbose=0)[1],
      "sparsity", tfsparse.sparsity(final))''',
        '''plot_frozen_history(aslp.history, "aslp.png", "ASLP"); Image("aslp.png")''',
    ]),
    "05_directed_evolution": ("Directed Evolution and compression", '''
**Directed Evolution** (Franca-Neto, arXiv:2206.05859; only the abstract is public, the details here
are tfsparse's design) prunes a *trained* network: candidate sets of weights are zeroed tentatively and
screened by how much the student's outputs diverge from the teacher's; the best set is committed. Then
the survivors are quantized to a few bits per layer and losslessly encoded.''', "1 if SMALL else 8", [
        '''from tfsparse import compression
from tfsparse.methods import DirectedEvolution

keras.utils.set_random_seed(0)
teacher = zoo.lenet_300_100()
teacher.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
teacher.fit(data.x_train, data.y_train, batch_size=128, epochs=EPOCHS, verbose=0)
evolution = DirectedEvolution(teacher, data.x_train[:1024], layer_sparsity=0.5 if SMALL else 0.8,
                              candidate_fraction=0.1 if SMALL else 0.02, verbose=0)
student = tfsparse.strip(evolution.run())
for name, model in (("teacher", teacher), ("DE student", student),
                    ("one-shot magnitude", tfsparse.strip(tfsparse.prune_once(
                        tfsparse.prune(teacher, layers=list(evolution.targets)), evolution.targets)))):
    model.compile(loss=loss, metrics=["accuracy"])
    print(f"{name:20s} {model.evaluate(data.x_test, data.y_test, verbose=0)[1]:.4f}")
print(f"{evolution.candidates_per_second:.0f} candidate sets screened per second")''',
        '''bits, divergence = compression.search_bits(student, data.x_train[:1024], divergence_budget=0.01)
report = compression.compress(student, "student.tfsz", bits=bits)
print(report)
import matplotlib.pyplot as plt
parts = {"positions": report.position_bytes, "values": report.value_bytes, "codebooks": report.codebook_bytes,
         "biases": report.raw_bytes, "header": report.header_bytes}
plt.bar(list(parts), list(parts.values())); plt.ylabel("bytes"); plt.title(f"{report.ratio:.1f}x smaller than float32"); plt.show()''',
    ]),
    "06_optg": ("OptG", '''
**OptG** (Zhang, Lin et al., arXiv:2201.12826) trains a score per weight with the signed
straight-through gradient g * W (a running estimate of the loss change if the weight were removed) and,
at each epoch start, keeps the top scores globally. Sparsity and the scores' learning rate follow a
sigmoid around mid-training; pruned weights can come back.''', "2 if SMALL else 12", [
        '''from tfsparse.methods import OptG
from tfsparse_app.plots import plot_optg_history

keras.utils.set_random_seed(0)
optg = OptG(0.95)
model = tfsparse.prune(zoo.lenet_300_100(), **optg.layer_options)
model.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss, metrics=["accuracy"])
model.fit(data.x_train, data.y_train, batch_size=128, epochs=EPOCHS, verbose=2, callbacks=[optg])
print("test accuracy", model.evaluate(data.x_test, data.y_test, verbose=0)[1], "sparsity", tfsparse.sparsity(model))''',
        '''plot_optg_history(optg.history, "optg.png"); Image("optg.png")''',
    ]),
    "07_mobile_export": ("From pruned model to mobile: TFLite / LiteRT", '''
`tfsparse.export.to_tflite` converts a pruned model with TFLite's sparse weight encoding and the
quantization you ask for, then runs the file in the LiteRT interpreter and compares it with Keras
before writing it. It also tells you which interpreter configuration runs it: sparse int8 files do
not run under LiteRT's default XNNPACK delegate here and fall back to the builtin kernels.''', "1 if SMALL else 8", [
        '''keras.utils.set_random_seed(0)
model = tfsparse.prune(zoo.lenet_300_100())
model.compile(keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
model.fit(data.x_train, data.y_train, batch_size=128, epochs=EPOCHS, verbose=0,
          callbacks=[tfsparse.methods.MagnitudePruning(0.9, frequency=10 if SMALL else 100)])
reports = {}
for name, options in {"dense float32": dict(sparse=False), "sparse float32": {},
                      "sparse dynamic": dict(quantization="dynamic"), "sparse int8": dict(quantization="int8")}.items():
    reports[name] = tfsparse.export.to_tflite(model, name.replace(" ", "_") + ".tflite", representative_data=data.x_train[:500],
                                              verification_data=data.x_test, **options)
    print(f"--- {name}\\n{reports[name]}")''',
        '''import statistics, time

def latency_ms(report, example, invokes=200):
    interpreter = tfsparse.export.interpreter(report.path, report.interpreter_options, num_threads=1)
    tfsparse.export.run(interpreter, example[None])      # allocates for batch 1
    times = []
    for _ in range(invokes):
        start = time.perf_counter(); interpreter.invoke(); times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

for name, report in reports.items():
    print(f"{name:15s} {report.size_bytes:9,d} bytes  {latency_ms(report, data.x_test[0]):.3f} ms  ({report.runtime})")''',
    ]),
}


def notebook(name):
    title, explanation, epochs, cells = NOTEBOOKS[name]
    badge = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             f"(https://colab.research.google.com/github/{REPOSITORY}/blob/main/colab/{name}.ipynb)")
    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{badge}\n{explanation}"),
                  nbformat.v4.new_code_cell(SETUP.format(repository=REPOSITORY, epochs=epochs))]
    book.cells += [nbformat.v4.new_code_cell(source.strip()) for source in cells]
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return book


def code_hash(book):
    """SHA-256 of the notebook's code cells, in order."""
    code = "\n\0\n".join(cell.source for cell in book.cells if cell.cell_type == "code")
    return hashlib.sha256(code.encode()).hexdigest()


def execute(book, small, timeout=1800):
    env_before = os.environ.get("TFSPARSE_NOTEBOOK_SMALL")
    os.environ["TFSPARSE_NOTEBOOK_SMALL"] = "1" if small else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        workdir = Path(os.environ.get("TFSPARSE_NOTEBOOK_WORKDIR", HERE))
        NotebookClient(book, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()
    finally:
        if env_before is None:
            os.environ.pop("TFSPARSE_NOTEBOOK_SMALL", None)
        else:
            os.environ["TFSPARSE_NOTEBOOK_SMALL"] = env_before
    return book


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=list(NOTEBOOKS))
    args = parser.parse_args()
    import tempfile

    for name in args.only or NOTEBOOKS:
        book = notebook(name)
        with tempfile.TemporaryDirectory() as workdir:
            os.environ["TFSPARSE_NOTEBOOK_WORKDIR"] = workdir
            execute(book, small=False)
        book.metadata["tfsparse"] = {"code_sha256": code_hash(book), "setting": "full"}
        nbformat.write(book, HERE / f"{name}.ipynb")
        print("wrote", HERE / f"{name}.ipynb", flush=True)


if __name__ == "__main__":
    main()
