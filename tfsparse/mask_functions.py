"""Mask functions: how a masked layer turns its variables into a mask.

A masked layer multiplies its kernel by a mask in every forward pass. By
default that mask is the layer's `mask` variable, which a method updates
between steps. Score-based methods need more: a mask that depends on trainable
scores, with a gradient that reaches the scores. They attach a
`MaskFunction`, which is serialized with the layer, so a saved model computes
the same forward pass after loading.

Contract: in inference (`training=False`) a mask function must return a
deterministic mask (0/1, times at most one factor per tensor);
`tfsparse.strip` bakes exactly that mask in.

Scores (and scales) with an optimizer of their own: `SelfUpdatingSGD`
subclasses train them by SGD with momentum inside the backward pass, so a
method can give them their own learning rate while the user's optimizer
trains the weights, in plain `model.fit`. A custom gradient turns the
variable's gradient u into its new value `v - lr * (momentum * velocity + u)`
(and the velocity's), and the variables are marked `overwrite_with_gradient`
(the Keras 3 mechanism behind its float8 training), so the optimizer assigns
them that value instead of applying its own rule, weight decay and gradient
clipping included. The learning rate is a per-weight variable that the
method sets (`set_learning_rate`).

Under a `tf.distribute` strategy the optimizer overwrites such a variable
with each replica's own value, before (and without) its all-reduce of the
gradients; the custom gradient therefore sums u over the replicas itself, so
every replica computes the same new value, the one a single device would.
"""

import keras
import tensorflow as tf
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

    def scale_tensor(self, weight):
        """The per-kernel scale the layer multiplies by (if it has one)."""
        return ops.convert_to_tensor(weight.scale)

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


def _sgd_momentum_path(value, velocity, learning_rate, momentum, loss_scale=None):
    """Equals `value`; its gradients are the SGD-momentum updates of the
    variables behind `value` and `velocity` (PyTorch form: v <- m v + u,
    x <- x - lr v, with u the incoming gradient divided by `loss_scale`:
    a LossScaleOptimizer does not unscale variables it overwrites)."""

    @ops.custom_gradient
    def path(value, velocity):
        def update(upstream):
            gradient = _sum_over_replicas(ops.cast(upstream, velocity.dtype))
            if loss_scale is not None:
                gradient = gradient / ops.cast(loss_scale, velocity.dtype)
            new_velocity = momentum * velocity + gradient
            return value - learning_rate * new_velocity, new_velocity

        return ops.copy(value), update

    return path(value, velocity)


def _sum_over_replicas(gradient):
    """Sums a per-replica gradient over the replicas of a `tf.distribute`
    strategy (Keras divides each replica's loss by their number, so the sum
    is the gradient of the global batch); unchanged on a single device."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return gradient
    return context.all_reduce(tf.distribute.ReduceOp.SUM, gradient)


class SelfUpdatingSGD(MaskFunction):
    """Base of mask functions whose score (and scale) train themselves by SGD.

    Creates, per kernel, `<score|scale>_velocity` (trainable, overwritten
    with its gradient) and `<score|scale>_learning_rate` (set by the method).
    No weight decay reaches these variables.
    """

    trained = ("score", "scale")

    def __init__(self, momentum=0.9):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"`momentum` must be in [0, 1). Received: momentum={momentum}")
        self.momentum = float(momentum)

    def build(self, layer, weight):
        if weight.score is None:
            raise ValueError(
                f"{type(self).__name__} needs score variables; layer '{layer.name}' was built "
                "without them. Prune with with_score=True (see the method's layer_options)."
            )
        for name in self.trained:
            variable = getattr(weight, name)
            if variable is None:
                continue
            velocity = layer.add_masking_weight(weight, f"{name}_velocity", variable.shape, trainable=True)
            layer.add_masking_weight(weight, f"{name}_learning_rate", (), trainable=False)
            variable.overwrite_with_gradient = True
            velocity.overwrite_with_gradient = True

    def score_path(self, weight):
        return self._path(weight, "score")

    def scale_tensor(self, weight):
        return self._path(weight, "scale")

    def _path(self, weight, name):
        # Tensors, not variables, go in: tf.custom_gradient treats variables
        # read inside the function differently (they need a `variables` argument).
        return _sgd_momentum_path(
            ops.copy(getattr(weight, name)), ops.copy(weight.state(f"{name}_velocity")),
            ops.copy(weight.state(f"{name}_learning_rate")), self.momentum, _loss_scale(weight.layer),
        )

    def get_config(self):
        return {"momentum": self.momentum}


def use_loss_scale_of(optimizer, layers):
    """Lets the layers' self-updating variables undo `optimizer`'s loss
    scaling (mixed precision). Methods call it when training starts."""
    scaling = optimizer if isinstance(optimizer, keras.optimizers.LossScaleOptimizer) else None
    for layer in layers:
        object.__setattr__(layer, "_loss_scale_optimizer", scaling)


def _loss_scale(layer):
    optimizer = getattr(layer, "_loss_scale_optimizer", None)
    if optimizer is None:
        return None
    return optimizer.dynamic_scale if optimizer.built else optimizer.initial_scale


def set_learning_rate(weight, name, learning_rate):
    """Sets the SGD learning rate of `weight`'s "score" or "scale"."""
    weight.state(f"{name}_learning_rate").assign(learning_rate)


@keras.saving.register_keras_serializable(package="tfsparse")
class ScoreSGD(SelfUpdatingSGD):
    """`StraightThroughScores` whose scores train themselves by SGD.

    Forward: the `mask` variable. Backward: the score receives g * kernel
    (straight-through, pruned entries included), or sign(score) * g * kernel
    with `absolute=True` (for masks chosen by |score|, as edge-popup's), and
    steps by SGD with momentum at its `score_learning_rate`. Used by OptG
    and EdgePopup.
    """

    def __init__(self, momentum=0.9, absolute=False):
        super().__init__(momentum)
        self.absolute = bool(absolute)

    def __call__(self, weight, training):
        return StraightThroughScores.__call__(self, weight, training)

    def score_path(self, weight):
        score = super().score_path(weight)
        return ops.abs(score) if self.absolute else score

    def get_config(self):
        return {"momentum": self.momentum, "absolute": self.absolute}


@keras.saving.register_keras_serializable(package="tfsparse")
class GumbelSoftmaxMask(SelfUpdatingSGD):
    """ASLP's mask: one straight-through Gumbel-softmax sample per tensor.

    The two classes are [logit, 0], so p_keep = sigmoid(logit). Training:
    with L ~ Logistic(0, 1) of the kernel's shape (one sample per forward
    pass, shared by the batch), hard = 1[logit + L > 0], soft =
    sigmoid((logit + L) / temperature), mask = hard + soft - stop(soft).
    Inference: 1[logit >= 0]. Logits and the scale train by SGD.
    """

    def __init__(self, temperature=1.0, momentum=0.9, seed=None):
        super().__init__(momentum)
        if temperature <= 0:
            raise ValueError(f"`temperature` must be > 0. Received: temperature={temperature}")
        self.temperature = float(temperature)
        self.seed = seed

    def build(self, layer, weight):
        super().build(layer, weight)
        generator = keras.random.SeedGenerator(self.seed, name=f"{weight._prefix}gumbel_seed")
        setattr(layer, f"{weight._prefix}gumbel_seed", generator)  # tracked by the layer

    def __call__(self, weight, training):
        logits = self.score_path(weight) if training else ops.convert_to_tensor(weight.score)
        if not training:
            return ops.cast(logits >= 0, "float32")
        uniform = keras.random.uniform(
            weight.shape, minval=1e-6, maxval=1.0 - 1e-6,
            seed=getattr(weight.layer, f"{weight._prefix}gumbel_seed"),
        )
        noisy = logits + ops.log(uniform) - ops.log1p(-uniform)  # logit + Logistic(0, 1)
        soft = ops.sigmoid(noisy / self.temperature)
        hard = ops.cast(noisy > 0, soft.dtype)
        return hard + (soft - ops.stop_gradient(soft))

    def get_config(self):
        return {"temperature": self.temperature, "momentum": self.momentum, "seed": self.seed}


@keras.saving.register_keras_serializable(package="tfsparse")
class BernoulliMask(SelfUpdatingSGD):
    """Zhou et al.'s supermask: a Bernoulli sample of sigmoid(score), rescaled.

    Training: p = sigmoid(score), hard ~ Bernoulli(p) (one sample per tensor
    and forward pass), mask = (hard + p - stop(p)) * N / sum(hard), the
    dynamic weight rescaling. Inference (our deterministic choice, the same
    rule as ASLP's): keep p >= 0.5, rescaled by N / (number kept).
    """

    def __init__(self, momentum=0.9, seed=None):
        super().__init__(momentum)
        self.seed = seed

    def build(self, layer, weight):
        super().build(layer, weight)
        generator = keras.random.SeedGenerator(self.seed, name=f"{weight._prefix}bernoulli_seed")
        setattr(layer, f"{weight._prefix}bernoulli_seed", generator)

    def __call__(self, weight, training):
        if not training:
            hard = ops.cast(ops.convert_to_tensor(weight.score) >= 0, "float32")
            return hard * _rescale(hard)
        probability = ops.sigmoid(self.score_path(weight))
        uniform = keras.random.uniform(weight.shape, seed=getattr(weight.layer, f"{weight._prefix}bernoulli_seed"))
        hard = ops.cast(uniform < probability, probability.dtype)
        return (hard + (probability - ops.stop_gradient(probability))) * ops.stop_gradient(_rescale(hard))

    def get_config(self):
        return {"momentum": self.momentum, "seed": self.seed}


def _rescale(hard):
    """N / sum(mask), 0 for an empty mask."""
    kept = ops.sum(hard)
    return ops.where(kept > 0, ops.cast(ops.size(hard), hard.dtype) / ops.maximum(kept, 1.0), 0.0)
