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
from tfsparse.mask_functions import BernoulliMask, GumbelSoftmaxMask, ScoreSGD, set_learning_rate
from tfsparse.methods.base import PruningMethod, check_integer


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

    def summarize_epoch(self, epoch):
        """Records the final mask's sparsity per layer (and the scales) in `history`."""
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
        return {"mask_sparsity": sparsity}

class ASLP(FrozenWeightsMethod):
    """ASLP with Smart Rescale (see the module docstring).

    Args:
        smart_rescale: learn one scale per layer (prune with
            `ASLP(...).layer_options`, which adds it).
        temperature: of the Gumbel-softmax (1, no annealing, as the code).
        Others: `FrozenWeightsMethod` (score_learning_rate defaults to 50).

    The sparsity is not an argument: it emerges from training.

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

    def __init__(self, smart_rescale=True, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.smart_rescale = smart_rescale
        self.temperature = temperature

    @property
    def layer_options(self):
        return {"with_score": True, "with_scale": self.smart_rescale,
                "mask_function": GumbelSoftmaxMask(self.temperature, seed=self.seed)}

    def _check_layer_options(self):
        _check_mask_function(self, GumbelSoftmaxMask)


class Supermask(FrozenWeightsMethod):
    """Zhou et al.'s supermask on frozen weights (see the module docstring)."""

    score_learning_rate = 50.0

    @property
    def layer_options(self):
        return {"with_score": True, "mask_function": BernoulliMask(seed=self.seed)}

    def _check_layer_options(self):
        _check_mask_function(self, BernoulliMask)


class EdgePopup(FrozenWeightsMethod):
    """Edge-popup on frozen weights (see the module docstring).

    Args:
        keep_fraction: fraction of each layer's weights kept, in (0, 1].
        update_every: steps between top-k recomputations (1: every step,
            as the original).
        Others: `FrozenWeightsMethod` (score_learning_rate defaults to 0.1).

    The top-k is recomputed when training starts and before every step that
    is a multiple of `update_every`; when several recomputations fall due at
    one hook (`steps_per_execution` > 1), one serves them all, so the masks
    change at most every K steps (the scores still train at every step).
    """

    score_learning_rate = 0.1
    update_at = "before_batch"
    latest_update_only = True

    def __init__(self, keep_fraction=0.5, update_every=1, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"`keep_fraction` must be in (0, 1]. Received: keep_fraction={keep_fraction}")
        check_integer(update_every, "update_every")
        self.keep_fraction = keep_fraction
        self.update_every = update_every
        self.allocation = allocation_lib.Uniform()

    @property
    def layer_options(self):
        return {"with_score": True, "mask_function": ScoreSGD(absolute=True)}

    def _check_layer_options(self):
        _check_mask_function(self, ScoreSGD)

    def initial_scores(self, weight, index):
        initializer = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform", seed=self.seed * 1000 + 500 + index)
        return keras.ops.convert_to_numpy(initializer(weight.shape))

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self.update_masks()

    def is_due(self, step):
        return step % self.update_every == 0

    def update(self, step):
        self.update_masks()

    def update_masks(self):
        """Per layer, keep the `keep_fraction` of weights with the largest |score|."""
        scores = {w.name: np.abs(keras.ops.convert_to_numpy(w.score)) for w in self.masked_weights}
        self.assign_masks(self.allocation.masks(scores, 1.0 - self.keep_fraction), zero_pruned=False)


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
