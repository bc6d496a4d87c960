"""Mask functions: how a masked layer turns its variables into a mask.

A masked layer multiplies its kernel by a mask in every forward pass. By
default that mask is the layer's `mask` variable, which a method updates
between steps. Score-based methods need more: a mask that depends on trainable
scores, with a gradient that reaches the scores. They attach a
`MaskFunction`, which is serialized with the layer, so a saved model computes
the same forward pass after loading.

Contract: in inference (`training=False`) a mask function must return a
deterministic 0/1 mask; `tfsparse.strip` bakes exactly that mask in.
"""

import keras
from keras import ops


class MaskFunction:
    """Base class. Subclasses implement `__call__(weight, training)`.

    `weight` is a `tfsparse.layers.MaskedWeight`; the result is a tensor of
    the kernel's shape.
    """

    def __call__(self, weight, training):
        raise NotImplementedError

    def build(self, layer, weight):
        """Creates any per-weight variables the function needs in `layer`
        (through `layer.add_masking_weight`); called once per kernel when
        the layer is built. Default: none."""

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="tfsparse")
class StraightThroughScores(MaskFunction):
    """Forward: the `mask` variable. Backward: d loss / d score = g * kernel.

    Written as `mask + score - stop_gradient(score)`: its value is the mask,
    and its gradient with respect to the score is the gradient with respect to
    the mask, `g * kernel`, for every entry, pruned ones included. The kernel
    receives `g * mask`. This is the straight-through estimator of OptG
    (Zhang et al., arXiv:2201.12826); the method decides how scores turn into
    the `mask` variable (e.g. a global top-k once per epoch).
    """

    def __call__(self, weight, training):
        mask = ops.convert_to_tensor(weight.mask)
        if not training or weight.score is None:
            return mask
        score = self.score_path(weight)
        # (score - stop_gradient(score)) is exactly 0, so the value is exactly the mask.
        return mask + (score - ops.stop_gradient(score))

    def score_path(self, weight):
        """The tensor through which the gradient reaches the score."""
        return ops.convert_to_tensor(weight.score)
