"""Dense gradients with respect to the effective kernels (TensorFlow only).

The forward pass uses `kernel * mask`, so the gradient with respect to the
kernel is zero wherever the mask is zero. Regrowth criteria (RigL, DST-EE)
need the gradient with respect to the effective kernel `W_eff = kernel * mask`
instead, which is nonzero at pruned positions. `dense_gradients` gets it
without any cost in the ordinary train step: it adds a zero tensor `P` to
every effective kernel for one extra forward/backward pass and differentiates
with respect to `P` (d loss / d P = d loss / d W_eff).
"""

import tensorflow as tf

from tfsparse.surgery import masked_weights


def dense_gradients(model, x, y, sample_weight=None):
    """d loss / d (effective kernel) for every masked weight, on one batch.

    Args:
        model: a compiled model with masked layers.
        x, y, sample_weight: one batch, as for `model.train_on_batch`.

    Returns:
        dict weight name -> gradient tensor of the kernel's shape (float32).
    """
    if not getattr(model, "compiled", False):
        raise ValueError("dense_gradients needs a compiled model (it uses the model's loss).")
    weights = masked_weights(model)
    probes = {w.name: tf.zeros(w.shape, dtype="float32") for w in weights}
    for layer in {id(w.layer): w.layer for w in weights}.values():
        object.__setattr__(
            layer,
            "_gradient_probes",
            {w.attr: probes[w.name] for w in weights if w.layer is layer},
        )
    try:
        with tf.GradientTape() as tape:
            tape.watch(list(probes.values()))
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
        gradients = tape.gradient(loss, probes)
    finally:
        for w in weights:
            object.__setattr__(w.layer, "_gradient_probes", None)
    return gradients
