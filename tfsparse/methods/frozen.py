"""Subnetworks of frozen random networks: ASLP, with supermask and edge-popup.

The weights are drawn once and never trained; only per-weight mask scores
(and, for ASLP, one scale per layer) learn which weights to keep.

- ASLP (Dupont, Alaoui, Sahbi, Lebois, "Extracting Effective Subnetworks
  with Gumbel-Softmax", ICIP 2022, arXiv:2202.12986; details from the
  authors' code as the method notes describe it): one straight-through
  Gumbel-softmax sample per tensor and forward pass over [logit, 0],
  temperature 1, logits initialized to 0; "Smart Rescale", one learned
  scalar per layer initialized to 1. Logits train by SGD at lr 50 with
  momentum 0.9, the scale by SGD at lr 1e-3 with momentum 0.9: the logits'
  gradients are tiny (a weight's effect on the loss through one sample), and
  a sigmoid needs logits of order 1 to decide, hence the large rate. There
  is no sparsity target: it emerges. The final network keeps logit >= 0 and
  folds the scale in (`tfsparse.strip`).
- Supermask (Zhou, Lan, Liu, Yosinski, "Deconstructing Lottery Tickets",
  NeurIPS 2019): a Bernoulli sample of sigmoid(score), straight-through,
  rescaled by N / sum(m). Scores start at 0 and train like ASLP's logits
  (our choice, for a like-for-like comparison). Final network: keep
  sigmoid(score) >= 0.5, rescaled (our deterministic choice).
- Edge-popup (Ramanujan et al., "What's Hidden in a Randomly Weighted
  Neural Network?", CVPR 2020): per layer, the `keep_fraction` of weights
  with the largest |score|, straight-through gradient sign(score) g W to the
  scores (through the |.|, as in the original code);
  scores start Kaiming-uniform (bound 1/sqrt(fan_in)) and train by SGD at
  lr 0.1, momentum 0.9. The top-k runs on the host before every step
  (`update_every`), since an in-graph sort costs ~50 ms per step here.

Scores and scales train through `tfsparse.mask_functions.SelfUpdatingSGD`,
so their learning rates do not depend on the optimizer given to `compile`
(it sees no trainable variable but the scores' own, which it leaves alone).
Every other variable is made non-trainable when fit starts; with
`initialize=True` the kernels are redrawn then (untruncated Kaiming normal,
fan_in, or its signed constant) and the biases set to 0, so methods given
the same seed start from the same frozen network.
"""

import keras
import numpy as np

from tfsparse import allocation as allocation_lib
from tfsparse._utils import finish_figure, new_figure
from tfsparse.mask_functions import BernoulliMask, GumbelSoftmaxMask, ScoreSGD, set_learning_rate
from tfsparse.methods.base import PruningMethod, UpdateSteps, check_integer, register


class FrozenWeightsMethod(PruningMethod):
    """Common machinery: freeze, initialize, record per-layer sparsity and scales.

    Args:
        score_learning_rate: SGD rate of the scores (logits).
        scale_learning_rate: SGD rate of the per-layer scales (if any).
        initialize: redraw the frozen weights when training starts.
        signed_constant: with `initialize`, every weight becomes
            sign(w) * sqrt(2 / fan_in).
        seed: seed of the frozen weights (and of edge-popup's scores).
    """

    score_learning_rate = None
    scale_learning_rate = 1e-3

    def __init__(self, score_learning_rate=None, scale_learning_rate=None, initialize=True,
                 signed_constant=False, seed=0):
        super().__init__()
        if score_learning_rate is not None:
            self.score_learning_rate = _positive(score_learning_rate, "score_learning_rate")
        if scale_learning_rate is not None:
            self.scale_learning_rate = _positive(scale_learning_rate, "scale_learning_rate")
        self.initialize = initialize
        self.signed_constant = signed_constant
        self.seed = seed
        self.history = []

    def set_model(self, model):
        super().set_model(model)
        learned = set()
        for weight in self.masked_weights:
            for name in ("score", "scale"):
                variable = getattr(weight, name)
                if variable is not None:
                    learned |= {id(variable), id(weight.state(f"{name}_velocity"))}
        for variable in model.trainable_variables:
            if id(variable) not in learned:
                variable.trainable = False

    def on_train_begin(self, logs=None):
        if self.initialize and self.optimizer_step() == 0:
            self.initialize_weights()
        for weight in self.masked_weights:
            set_learning_rate(weight, "score", self.score_learning_rate)
            if weight.scale is not None:
                set_learning_rate(weight, "scale", self.scale_learning_rate)

    def initialize_weights(self):
        """Frozen random kernels (untruncated Kaiming normal or signed constant), zero biases, fresh scores."""
        for index, weight in enumerate(self.masked_weights):
            initializer = keras.initializers.VarianceScaling(
                2.0, "fan_in", "untruncated_normal", seed=self.seed * 1000 + index)
            kernel = keras.ops.convert_to_numpy(initializer(weight.shape))
            if self.signed_constant:
                kernel = np.sign(kernel) * np.float32(np.std(kernel) if kernel.size > 1 else 1.0)
            weight.kernel.assign(kernel)
            bias = getattr(weight.layer, "bias", None)
            if bias is not None:
                bias.assign(np.zeros(bias.shape, "float32"))
            weight.score.assign(self.initial_scores(weight, index))
            if weight.scale is not None:
                weight.scale.assign(1.0)

    def initial_scores(self, weight, index):
        return np.zeros(weight.shape, "float32")

    def on_epoch_end(self, epoch, logs=None):
        # NaN logits would give an all-zero mask (NaN >= 0 is False) without a word.
        learned = {}
        for weight in self.masked_weights:
            learned[weight.name] = keras.ops.convert_to_numpy(weight.score)
            if weight.scale is not None:
                learned[f"{weight.name} scale"] = keras.ops.convert_to_numpy(weight.scale)
        allocation_lib.check_finite(learned, "scores")
        layers = {}
        for weight in self.masked_weights:
            mask = keras.ops.convert_to_numpy(weight.layer.mask_function(weight, training=False))
            scale = None if weight.scale is None else float(keras.ops.convert_to_numpy(weight.scale))
            layers[weight.name] = {"sparsity": float(np.mean(mask == 0)), "scale": scale}
        total = sum(w.size for w in self.masked_weights)
        sparsity = sum(layers[w.name]["sparsity"] * w.size for w in self.masked_weights) / total
        self.history.append({"epoch": epoch, "sparsity": sparsity, "layers": layers})
        if logs is not None:
            logs["mask_sparsity"] = sparsity

    def finish(self, model, directory, retrain, evaluate):
        if self.history:
            plot_history(self.history, directory / "subnetwork.png", type(self).__name__)
        return {}

    @classmethod
    def from_cli(cls, target_sparsity, epochs, train_data, **options):
        return cls(**options)


@register(
    "aslp",
    "ASLP: subnetwork of frozen random weights, straight-through Gumbel-softmax masks + learned per-layer scale.",
    "Dupont et al., 'Extracting Effective Subnetworks with Gumbel-Softmax', arXiv:2202.12986 (ICIP 2022)",
)
class ASLP(FrozenWeightsMethod):
    """ASLP with Smart Rescale (see the module docstring).

    Args:
        smart_rescale: learn one scale per layer (prune with
            `ASLP(...).layer_options`, which adds it).
        temperature: of the Gumbel-softmax (1, no annealing, as the code).
        Others: `FrozenWeightsMethod` (score_learning_rate defaults to 50).

    The sparsity is not an argument: `tfsparse run --method aslp` ignores
    `--sparsity` and reports the sparsity that emerged.

    Example:

    ```python
    aslp = ASLP()
    model = tfsparse.prune(model, **aslp.layer_options)
    model.compile("sgd", loss, metrics=["accuracy"])   # the optimizer has nothing to train
    model.fit(x, y, batch_size=256, epochs=20, callbacks=[aslp])
    final = tfsparse.strip(model)                      # logit >= 0 kept, scales folded in
    ```
    """

    score_learning_rate = 50.0
    cli_options = {
        "no_rescale": dict(action="store_true", default=False, help="ASLP without Smart Rescale"),
        "signed_constant": dict(action="store_true", default=False,
                                help="frozen weights sign(w) * std instead of Kaiming normal"),
    }

    def __init__(self, smart_rescale=True, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.smart_rescale = smart_rescale
        self.temperature = temperature

    @property
    def layer_options(self):
        return {"with_score": True, "with_scale": self.smart_rescale,
                "mask_function": GumbelSoftmaxMask(self.temperature, seed=self.seed)}

    @classmethod
    def from_cli(cls, target_sparsity, epochs, train_data, no_rescale=False, **options):
        return cls(smart_rescale=not no_rescale, **options)

    def _check_layer_options(self):
        _check_mask_function(self, GumbelSoftmaxMask)


@register(
    "supermask",
    "Supermask: Bernoulli masks of sigmoid(score) over frozen random weights, rescaled by N / sum(m).",
    "Zhou et al., 'Deconstructing Lottery Tickets: Zeros, Signs, and the Supermask', NeurIPS 2019",
)
class Supermask(FrozenWeightsMethod):
    """Zhou et al.'s supermask on frozen weights (see the module docstring)."""

    score_learning_rate = 50.0
    cli_options = {"signed_constant": ASLP.cli_options["signed_constant"]}

    @property
    def layer_options(self):
        return {"with_score": True, "mask_function": BernoulliMask(seed=self.seed)}

    def _check_layer_options(self):
        _check_mask_function(self, BernoulliMask)


@register(
    "edge-popup",
    "Edge-popup: per-layer top-k of |score| over frozen random weights, straight-through.",
    "Ramanujan et al., 'What's Hidden in a Randomly Weighted Neural Network?', CVPR 2020",
)
class EdgePopup(FrozenWeightsMethod):
    """Edge-popup on frozen weights (see the module docstring).

    Args:
        keep_fraction: fraction of each layer's weights kept, in (0, 1].
        update_every: steps between top-k recomputations (1: every step,
            as the original).
        Others: `FrozenWeightsMethod` (score_learning_rate defaults to 0.1).

    The top-k is recomputed before every step that is a multiple of
    `update_every`. With `steps_per_execution=K` the callback acts only
    between calls of K steps: a recomputation due inside a call happens at
    its end (`tfsparse.methods.base.UpdateSteps`), and one recomputation
    serves all those due in a call, so the masks change at most every K
    steps (the scores still train at every step).
    """

    score_learning_rate = 0.1
    cli_options = {
        "keep_fraction": dict(type=float, default=0.5, help="fraction of each layer's weights kept"),
        "signed_constant": ASLP.cli_options["signed_constant"],
    }

    def __init__(self, keep_fraction=0.5, update_every=1, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"`keep_fraction` must be in (0, 1]. Received: keep_fraction={keep_fraction}")
        check_integer(update_every, "update_every")
        self.keep_fraction = keep_fraction
        self.update_every = update_every
        self.allocation = allocation_lib.Uniform()
        self.update_steps = UpdateSteps(self, lambda step: step % self.update_every == 0, after_batch=False)

    @property
    def layer_options(self):
        return {"with_score": True, "mask_function": ScoreSGD(absolute=True)}

    @classmethod
    def from_cli(cls, target_sparsity, epochs, train_data, **options):
        return cls(**options)

    def _check_layer_options(self):
        _check_mask_function(self, ScoreSGD)

    def initial_scores(self, weight, index):
        initializer = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=self.seed * 1000 + 500 + index)
        return keras.ops.convert_to_numpy(initializer(weight.shape))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.update_masks()

    def on_epoch_begin(self, epoch, logs=None):
        self.update_steps.epoch_begin()

    def on_train_batch_begin(self, batch, logs=None):
        if self.update_steps.at_batch_begin(batch):
            self.update_masks()

    def on_train_batch_end(self, batch, logs=None):
        if self.update_steps.at_batch_end(batch):
            self.update_masks()

    def update_masks(self):
        """Per layer, keep the `keep_fraction` of weights with the largest |score|."""
        scores = {w.name: np.abs(keras.ops.convert_to_numpy(w.score)) for w in self.masked_weights}
        self.assign_masks(self.allocation.masks(scores, 1.0 - self.keep_fraction), zero_pruned=False)


def plot_history(history, path=None, title=""):
    """Per-layer sparsity of the deterministic mask and learned scales, per
    epoch (a frozen-weights method's `history`); returns the figure, saved
    to `path` when given."""
    epochs = [h["epoch"] + 1 for h in history]
    names = list(history[0]["layers"])
    has_scales = history[0]["layers"][names[0]]["scale"] is not None
    figure, axes = new_figure(10 if has_scales else 5.5, 3.5, 1, 2 if has_scales else 1, squeeze=False)
    for name in names:
        axes[0, 0].plot(epochs, [h["layers"][name]["sparsity"] for h in history], marker=".", label=name)
    axes[0, 0].plot(epochs, [h["sparsity"] for h in history], color="black", linewidth=2, label="all")
    axes[0, 0].set(xlabel="epoch", ylabel="sparsity of the final mask", title=f"{title}: sparsity per layer")
    axes[0, 0].legend(fontsize=7)
    if has_scales:
        for name in names:
            axes[0, 1].plot(epochs, [h["layers"][name]["scale"] for h in history], marker=".", label=name)
        axes[0, 1].set(xlabel="epoch", ylabel="learned scale", title="Smart Rescale per layer")
        axes[0, 1].legend(fontsize=7)
    return finish_figure(figure, path)


def _check_mask_function(method, expected):
    for weight in method.masked_weights:
        if not isinstance(weight.layer.mask_function, expected):
            raise ValueError(
                f"{type(method).__name__} needs the {expected.__name__} mask function, and layer "
                f"'{weight.layer.name}' has mask_function={weight.layer.mask_function!r}. Prune for "
                f"this method: `tfsparse.prune(model, **method.layer_options)`."
            )


def _positive(value, name):
    if value <= 0:
        raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
    return float(value)
