"""OptG: supermask scores inside gradient-driven sparsity.

Zhang, Lin et al., "Optimizing Gradient-driven Criteria in Network Sparsity:
Gradient is All You Need", arXiv:2201.12826; the details follow the authors'
code (github zyxxmu/OptG) as described in the method notes:

- every pruned kernel W has a score s, initialized to 0, and a 0/1 mask m;
  forward uses W * m; backward is straight-through: the score receives the
  signed g * W for every entry (pruned ones included), the kernel g * m;
- scores are trained by SGD with momentum 0.9 and no weight decay (PyTorch
  form: v <- 0.9 v + g W, s <- s - lr v) at the mask learning rate
  lr_mask(e) = lr_w(e) * sigmoid(beta (e - E/2));
- at the start of each epoch, one global top-k over all scores applies the
  sparsity s(e) = s_target * sigmoid(beta (e - E/2)); pruned weights keep
  their values and return when their score rises. Our addition: s(e) is
  divided by its value at the last epoch, so that the final network has
  exactly the target also in short runs (`schedules.SigmoidStep`,
  `end_at_target`); over the paper's 100 epochs this changes nothing.

How the score optimizer runs inside plain `model.fit` (our design): the
scores train themselves by SGD with momentum in the backward pass
(`tfsparse.mask_functions.ScoreSGD`, see `SelfUpdatingSGD`), so the user's
optimizer (SGD, Adam, anything) trains the weights and never touches the
scores, and no custom train_step is needed. lr_w(e) is the
user's optimizer learning rate at the start of epoch e (its schedule
included); a global top-k is invariant to a constant factor on all scores, so
only the shape of lr_w over time matters, not its scale.
"""

import math
import warnings

import keras
import numpy as np

from tfsparse import allocation as allocation_lib
from tfsparse import schedules
from tfsparse.mask_functions import ScoreSGD, set_learning_rate
from tfsparse.methods.base import BudgetWarning, PruningMethod, check_integer

#: Epochs at (95 % of) the target below which a fit draws a `BudgetWarning`.
MIN_RECOVERY_EPOCHS = 2


class OptG(PruningMethod):
    """OptG as a Keras callback (with the `ScoreSGD` mask function).

    Args:
        target_sparsity: final sparsity in [0, 1).
        epochs: E of the schedules; defaults to the `epochs` given to `fit`.
        beta: steepness of the sigmoid (1 in the paper's code).

    The score optimizer's momentum (0.9, as in the code) belongs to the
    layers' mask function: `tfsparse.prune(model, with_score=True,
    mask_function=ScoreSGD(momentum=...))` changes it.

    Example:

    ```python
    optg = OptG(0.95)
    model = tfsparse.prune(model, **optg.layer_options)
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), loss, metrics=["accuracy"])
    model.fit(x, y, epochs=30, callbacks=[optg])
    ```

    `history` holds, per epoch: the applied sparsity, the mask learning
    rate and the fraction of mask entries that flipped.
    """

    update_at = "epoch_begin"

    def __init__(self, target_sparsity, epochs=None, beta=1.0):
        super().__init__()
        schedules.check_sparsity(target_sparsity, "target_sparsity")
        if epochs is not None:
            check_integer(epochs, "epochs")
        if beta <= 0:
            raise ValueError(f"`beta` must be > 0. Received: beta={beta}")
        self.target_sparsity = target_sparsity
        self.epochs = epochs
        self.beta = float(beta)
        self.schedule = None
        self.allocation = allocation_lib.Global()
        self.history = []

    @property
    def layer_options(self):
        return {"with_score": True, "mask_function": ScoreSGD()}

    def _check_layer_options(self):
        for weight in self.masked_weights:
            if not isinstance(weight.layer.mask_function, ScoreSGD):
                raise ValueError(
                    f"OptG trains scores through the ScoreSGD mask function, and layer "
                    f"'{weight.layer.name}' has mask_function={weight.layer.mask_function!r}. "
                    "Prune for this method: `tfsparse.prune(model, **optg.layer_options)` "
                    "(that is `tfsparse.prune(model, with_score=True, "
                    "mask_function=tfsparse.methods.optg.ScoreSGD())`)."
                )

    def on_train_begin(self, logs=None):
        epochs = self.epochs or self.params.get("epochs")
        # The schedule rises from 5 % to 95 % of the target over about 6 / beta
        # epochs centred at E / 2; the epochs after that are the sparse network's
        # to recover in (the paper trains 100).
        recovery = epochs / 2 - 3 / self.beta
        if recovery < MIN_RECOVERY_EPOCHS:
            warnings.warn(
                f"OptG over {epochs} epochs reaches 95 % of its target sparsity {recovery:.1f} epoch(s) "
                f"before the end (beta={self.beta}): too few for the pruned network to recover, so this "
                f"run says little about the method. Train for at least "
                f"{math.ceil(2 * (MIN_RECOVERY_EPOCHS + 3 / self.beta))} epochs (the paper: 100).",
                BudgetWarning, stacklevel=2,
            )
        self.schedule = schedules.SigmoidStep(self.target_sparsity, epochs, self.beta, end_at_target=True)

    def update(self, epoch):
        """The global top-k and the mask learning rate of `epoch`, before its first step."""
        sparsity = self.schedule(epoch)
        learning_rate = self.mask_learning_rate(epoch)
        before = self.masks()
        after = self.global_top_k(sparsity)
        self.assign_masks(after, zero_pruned=False)
        for weight in self.masked_weights:
            set_learning_rate(weight, "score", learning_rate)
        flipped = sum(int(np.count_nonzero(before[n] != after[n])) for n in after)
        total = sum(w.size for w in self.masked_weights)
        self.history.append({"epoch": epoch, "sparsity": sparsity, "mask_learning_rate": learning_rate,
                             "flip_fraction": flipped / total})

    def global_top_k(self, sparsity):
        """Masks keeping the highest scores over all layers at `sparsity`.

        Equal scores (all of them at the start, when every score is 0) are
        ranked by |kernel| (our choice; the code's top-k breaks ties
        arbitrarily). With the paper's 100 epochs nothing is pruned while the
        scores are all 0; in short runs the first epochs already prune, and an
        arbitrary choice there can empty whole layers.
        """
        scores = {w.name: keras.ops.convert_to_numpy(w.score) for w in self.masked_weights}
        magnitudes = {name: np.abs(kernel) for name, kernel in self.kernels().items()}
        return self.allocation.masks(scores, sparsity, tiebreak=magnitudes)

    def mask_learning_rate(self, epoch):
        """lr_w(epoch) * sigmoid(beta * (epoch - E/2))."""
        weight_rate = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
        return weight_rate * schedules._sigmoid(self.beta * (epoch - 0.5 * self.schedule.total_epochs))
