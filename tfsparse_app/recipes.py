"""What `tfsparse run` knows about each method: one table, name -> `Recipe`.

A recipe gives the method's summary and paper, its command-line options, how
to build it from the run's settings, and what the run does after training
(plots, metrics, later phases such as ASNI-II or Directed Evolution). The
methods themselves (`tfsparse.methods`) know none of this. To put a method
on the command line, add its entry to `RECIPES`.
"""

import dataclasses
from pathlib import Path
from typing import Callable

import keras

import tfsparse
from tfsparse import allocation, compression, methods
from tfsparse.methods.channel import CRITERIA
from tfsparse_app import plots

#: Training examples Directed Evolution measures the divergence on.
CALIBRATION_EXAMPLES = 1024


@dataclasses.dataclass(frozen=True)
class Job:
    """One `tfsparse run`, as its recipe sees it.

    Attributes:
        sparsity: `--sparsity`.
        epochs: `--epochs`.
        options: the recipe's options given on the command line (name ->
            value); options not given are absent, so the method's own
            defaults apply.
        train_data: the training split, `(x, y)`.
        directory: where the run's files go.
        retrain: `retrain(model)` compiles `model` with a fresh optimizer,
            trains it like the run (no method: masks stay fixed) and returns
            its test metrics.
        evaluate: `evaluate(model)` returns the test metrics of `model` as it is.
        verbose: the run's verbosity (0: quiet), as in `fit`.
    """

    sparsity: float
    epochs: int
    options: dict
    train_data: tuple
    directory: Path
    retrain: Callable
    evaluate: Callable
    verbose: int = 1


def _no_phase(job, method, model):
    return {}


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How `tfsparse run` trains with one method.

    Attributes:
        summary: one line for `tfsparse methods`.
        paper: the paper the method follows.
        build: `build(job)` returns the callback to train with, or None to
            train the model dense (a method that starts from a trained model).
        options: option name -> keyword arguments of
            `argparse.ArgumentParser.add_argument`; "default" is the
            method's default, shown in the help.
        after_training: `after_training(job, method, model)` runs after
            training (`method`: what `build` returned; `model`: the trained
            model, masked unless dense), may write files into
            `job.directory`, and returns extra metrics for the report.
        shrink: write `tfsparse.shrink(model)` (pruned channels removed)
            instead of `tfsparse.strip(model)`.
    """

    summary: str
    paper: str
    build: Callable
    options: dict = dataclasses.field(default_factory=dict)
    after_training: Callable = _no_phase
    shrink: bool = False


def _allocation(default):
    return dict(choices=list(allocation.NAMES), default=default,
                help="per-layer budget: every layer at the target, one global threshold "
                     "(1 %% floor per layer), one threshold over LAMP scores, or ERK")


# Options that several methods share.
FREQUENCY = dict(type=int, default=100, help="steps between mask updates")
END_FRACTION = dict(type=float, default=0.7, help="fraction of training over which sparsity ramps up")
GRANULARITY = dict(type=allocation.granularity_name, default="weight",
                   help="unit of pruning: weight, blockRxC (e.g. block4x1, block16x1, block4x1-max: "
                        "LiteRT's sparse FULLY_CONNECTED blocks) or N:M (e.g. 2:4, target <= 1 - N/M)")
SIGNED_CONSTANT = dict(action="store_true", default=False,
                       help="frozen weights sign(w) * std instead of Kaiming normal")
DST_OPTIONS = {
    "update_every": dict(type=int, default=100, help="steps between drop-and-grow rounds"),
    "drop_fraction": dict(type=float, default=0.3, help="initial drop fraction (cosine decay to 0)"),
    "stop_at": dict(type=float, default=0.75, help="fraction of training after which masks stay fixed"),
    "allocation": _allocation("erk"),
    "granularity": GRANULARITY,
}


def _at_target(cls):
    """Builds `cls(--sparsity, **options)`."""
    return lambda job: cls(job.sparsity, **job.options)


def _without_target(cls):
    """Builds `cls(**options)`: the sparsity emerges, `--sparsity` is ignored."""
    return lambda job: cls(**job.options)


def _with_gradient_data(cls):
    """Builds `cls(--sparsity, gradient_data=the training split, **options)`."""
    return lambda job: cls(job.sparsity, gradient_data=job.train_data, **job.options)


def _asni(job):
    options = dict(job.options)
    options.pop("asni2", None)
    magnitude = options.pop("magnitude", None)
    if magnitude is not None:
        return methods.ASNI(magnitude=magnitude, **options)
    return methods.ASNI(job.sparsity, **options)


def _aslp(job):
    options = dict(job.options)
    return methods.ASLP(smart_rescale=not options.pop("no_rescale", False), **options)


def _optg(job):
    return methods.OptG(job.sparsity, epochs=job.epochs, **job.options)


def _asni_phases(job, method, model):
    """The schedule plot; with `--asni2`, ASNI-II: the 2-numbers-per-layer
    initialization, written and plotted, and a retraining from it."""
    plots.plot_asni_schedule(method.schedule, method.history, job.directory / "asni_schedule.png")
    schedule = {"asni_scale": method.schedule.scale, "asni_magnitude": method.schedule.magnitude}
    if not job.options.get("asni2"):
        return schedule
    init = methods.amenable_initialization(model)
    (job.directory / "asni2_init.npz").write_bytes(init.to_bytes())
    plots.plot_asni2_centroids(model, init, job.directory / "asni2_centroids.png")
    metrics = job.retrain(methods.amenable_model(model, init))
    return {
        **schedule,
        "asni2_test_accuracy": metrics["test_accuracy"],
        "asni2_init_bytes": init.size_bytes(),
        "dense_init_bytes": init.dense_size_bytes(),
    }


def _dst_coverage(job, method, model):
    if not method.history:
        return {}
    plots.plot_dst_coverage(method.history, job.directory / "coverage.png", title=type(method).__name__)
    return {"coverage": method.history[-1]["coverage"], "mask_updates": len(method.history)}


def _frozen_history(job, method, model):
    if method.history:
        plots.plot_frozen_history(method.history, job.directory / "subnetwork.png", type(method).__name__)
    return {}


def _optg_history(job, method, model):
    plots.plot_optg_history(method.history, job.directory / "optg.png")
    return {"mask_flips_last_epoch": method.history[-1]["flip_fraction"]} if method.history else {}


def _directed_evolution(job, method, teacher):
    """Evolves the student from the trained dense `teacher`, fine-tunes it
    (unless `--no-fine-tune`) and compresses it; one-shot magnitude pruning
    at the same per-layer sparsity, with the same fine-tuning, is the
    baseline. Writes de_model.keras, de_model.tfsz and de.png."""
    options = dict(job.options)
    fine_tune = not options.pop("no_fine_tune", False)
    calibration = job.train_data[0][:CALIBRATION_EXAMPLES]
    evolution = methods.DirectedEvolution(teacher, calibration, job.sparsity, verbose=job.verbose, **options)
    student = evolution.run()
    baseline = _one_shot_magnitude(teacher, job.sparsity)
    metrics = {}
    for name, model in (("de", student), ("magnitude_oneshot", baseline)):
        if fine_tune:
            metrics.update(_prefixed(f"{name}_before_fine_tuning", job.evaluate(model)))
            metrics.update(_prefixed(name, job.retrain(model)))
        else:
            metrics.update(_prefixed(name, job.evaluate(model)))
    metrics["de_fine_tune_epochs"] = job.epochs if fine_tune else 0
    metrics["de_candidates_per_second"] = evolution.candidates_per_second
    student = tfsparse.strip(student)
    student.save(job.directory / "de_model.keras")
    plots.plot_evolution_history(evolution.history, job.directory / "de.png")
    bits, _ = compression.search_bits(student, calibration)
    report = compression.compress(student, job.directory / "de_model.tfsz", bits=bits)
    metrics.update(_prefixed("de_quantized", job.evaluate(compression.decompress(report.path))))
    metrics.update(de_compressed_bytes=report.file_bytes, de_compression_ratio=report.ratio,
                   de_bits=min(bits.values()))
    return metrics


def _one_shot_magnitude(teacher, sparsity):
    """`teacher` with each Dense layer magnitude-pruned to `sparsity` at
    once, masked, so that fine-tuning keeps its zeros."""
    return tfsparse.prune_once(tfsparse.prune(teacher, layers=keras.layers.Dense), sparsity)


def _prefixed(prefix, metrics):
    return {f"{prefix}_{key}": value for key, value in metrics.items()}


RECIPES = {
    "magnitude": Recipe(
        "Gradual magnitude pruning on a polynomial schedule (tfmot's prune_low_magnitude).",
        "Zhu & Gupta, 'To prune, or not to prune', arXiv:1710.01878 (2017)",
        _at_target(methods.MagnitudePruning),
        options={"allocation": _allocation("layer"), "frequency": FREQUENCY, "end_fraction": END_FRACTION,
                 "granularity": GRANULARITY},
    ),
    "channel": Recipe(
        "Gradual channel pruning by group norm or BatchNorm scale; `tfsparse.shrink` removes the channels.",
        "Li et al., 'Pruning Filters for Efficient ConvNets', ICLR 2017 (L1 filter norm); "
        "Liu et al., 'Learning Efficient Convolutional Networks through Network Slimming', ICCV 2017",
        _at_target(methods.ChannelPruning),
        options={
            "criterion": dict(choices=list(CRITERIA), default="l2", help="channel score"),
            "penalty": dict(choices=["group_lasso", "slimming"], default=None,
                            help="sparsity-inducing proximal step after every batch"),
            "penalty_strength": dict(type=float, default=1e-4, help="the penalty's coefficient"),
            "frequency": FREQUENCY,
            "end_fraction": END_FRACTION,
        },
        shrink=True,
    ),
    "asni": Recipe(
        "ASNI-I: sigmoid-scheduled global magnitude pruning in one training run (per epoch).",
        "Damadi, Nouri & Pirsiavash, 'ASNI', arXiv:2202.09284 (2022)",
        _asni,
        options={
            "scale": dict(type=float, default="chosen from --epochs",
                          help="ASNI k: sigmoid scale in epochs"),
            "magnitude": dict(type=float, default=None,
                              help="ASNI M as a fraction; overrides --sparsity (the schedule's asymptote)"),
            "asni2": dict(action="store_true", default=False,
                          help="then ASNI-II: retrain from the 2-numbers-per-layer initialization"),
        },
        after_training=_asni_phases,
    ),
    "dst-ee": Recipe(
        "DST-EE: dynamic sparse training, grow score |grad| + c * sqrt(ln t / N) (exploitation + exploration).",
        "Huang et al., 'Dynamic Sparse Training via Balancing the Exploration-Exploitation Trade-off', "
        "arXiv:2211.16667 (DAC 2023)",
        _with_gradient_data(methods.DSTEE),
        options={**DST_OPTIONS, "c": dict(type=float, default=1e-2, help="exploration weight c of the grow score")},
        after_training=_dst_coverage,
    ),
    "rigl": Recipe(
        "RigL: dynamic sparse training growing the largest dense gradients.",
        "Evci et al., 'Rigging the Lottery: Making All Tickets Winners', arXiv:1911.11134 (ICML 2020)",
        _with_gradient_data(methods.RigL),
        options=DST_OPTIONS,
        after_training=_dst_coverage,
    ),
    "set": Recipe(
        "SET: dynamic sparse training with random growth.",
        "Mocanu et al., 'Scalable training of artificial neural networks with adaptive sparse connectivity', "
        "Nature Communications 9 (2018)",
        _at_target(methods.SET),
        options=DST_OPTIONS,
        after_training=_dst_coverage,
    ),
    "aslp": Recipe(
        "ASLP: subnetwork of frozen random weights, straight-through Gumbel-softmax masks + learned per-layer scale.",
        "Dupont et al., 'Extracting Effective Subnetworks with Gumbel-Softmax', arXiv:2202.12986 (ICIP 2022)",
        _aslp,
        options={"no_rescale": dict(action="store_true", default=False, help="ASLP without Smart Rescale"),
                 "signed_constant": SIGNED_CONSTANT},
        after_training=_frozen_history,
    ),
    "supermask": Recipe(
        "Supermask: Bernoulli masks of sigmoid(score) over frozen random weights, rescaled by N / sum(m).",
        "Zhou et al., 'Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask', NeurIPS 2019",
        _without_target(methods.Supermask),
        options={"signed_constant": SIGNED_CONSTANT},
        after_training=_frozen_history,
    ),
    "edge-popup": Recipe(
        "Edge-popup: per-layer top-k of |score| over frozen random weights, straight-through.",
        "Ramanujan et al., 'What's Hidden in a Randomly Weighted Neural Network?', CVPR 2020",
        _without_target(methods.EdgePopup),
        options={"keep_fraction": dict(type=float, default=0.5, help="fraction of each layer's weights kept"),
                 "signed_constant": SIGNED_CONSTANT},
        after_training=_frozen_history,
    ),
    "optg": Recipe(
        "OptG: straight-through supermask scores (signed g*W) with a per-epoch global top-k on a sigmoid schedule.",
        "Zhang, Lin et al., 'Optimizing Gradient-driven Criteria in Network Sparsity', arXiv:2201.12826",
        _optg,
        options={"beta": dict(type=float, default=1.0, help="steepness of OptG's sigmoid schedules")},
        after_training=_optg_history,
    ),
    "de": Recipe(
        "Directed Evolution after dense training: teacher-student screening of candidate sets, then "
        "fine-tuning (post-training).",
        "Franca-Neto, 'A Directed-Evolution Method for Sparsification and Compression of Neural Networks', "
        "arXiv:2206.05859 (2022)",
        lambda job: None,  # the teacher trains dense
        options={
            "population": dict(type=int, default=32, help="candidate sets per directed-evolution cycle"),
            "candidate_fraction": dict(type=float, default=0.02,
                                       help="size of a candidate set, fraction of the layer's survivors"),
            "no_fine_tune": dict(action="store_true", default=False,
                                 help="keep the evolved student as it is (default: fine-tune it, and the "
                                      "one-shot magnitude baseline, like the run trains: --epochs of Adam at --lr)"),
        },
        after_training=_directed_evolution,
    ),
}


def get(name):
    """The recipe of the method `name`."""
    if name not in RECIPES:
        raise ValueError(f"Unknown method {name!r}. Available methods: {sorted(RECIPES)}")
    return RECIPES[name]
