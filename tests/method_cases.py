"""Every method that trains inside `model.fit`, set up for a short run.

Shared by the distribution, precision and resume tests (and the
`distributed_job.py` script they start), so that a new method is tested in
all of them by adding one line here. The runs are short: `EPOCHS` epochs of
`STEPS_PER_EPOCH` steps, and every schedule reaches its target within them.
Directed Evolution is absent: it runs after training, outside `fit`.
"""

import keras
import numpy as np

import tfsparse
from tfsparse import methods
from tfsparse_app import zoo

EPOCHS = 4
BATCH_SIZE = 64
STEPS_PER_EPOCH = 8
EXAMPLES = BATCH_SIZE * STEPS_PER_EPOCH
INPUT_SHAPE = (8, 8, 1)


def data(seed=0):
    """A learnable 10-class problem: the label is the argmax of 10 pixels."""
    x = np.random.default_rng(seed).normal(size=(EXAMPLES, *INPUT_SHAPE)).astype("float32")
    y = x.reshape(EXAMPLES, -1)[:, :10].argmax(axis=1).astype("int64")
    return x, y


#: name -> build(x, y) -> the method.
CASES = {
    "magnitude": lambda x, y: methods.MagnitudePruning(0.8, frequency=4),
    "magnitude-global": lambda x, y: methods.MagnitudePruning(0.8, frequency=4, allocation="global"),
    "asni": lambda x, y: methods.ASNI(magnitude=0.9, scale=1.0),
    "dst-ee": lambda x, y: methods.DSTEE(0.8, update_every=4, gradient_data=(x, y)),
    "rigl": lambda x, y: methods.RigL(0.8, update_every=4, gradient_data=(x, y)),
    "set": lambda x, y: methods.SET(0.8, update_every=4),
    "optg": lambda x, y: methods.OptG(0.8),
    "aslp": lambda x, y: methods.ASLP(),
    "supermask": lambda x, y: methods.Supermask(),
    "edge-popup": lambda x, y: methods.EdgePopup(keep_fraction=0.3),
    "channel": lambda x, y: methods.ChannelPruning(0.5, frequency=4, penalty="group_lasso"),
}


def build(name, x, y, optimizer=None, jit_compile="auto"):
    """The method and a compiled LeNet-300-100 pruned for it (seeded)."""
    keras.utils.set_random_seed(0)
    method = CASES[name](x, y)
    model = tfsparse.prune(zoo.lenet_300_100(INPUT_SHAPE, 10), **method.layer_options)
    model.compile(
        optimizer or keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    return model, method


def inference_kernels(model):
    """name -> the kernel as `tfsparse.strip` would bake it (mask, scale)."""
    return {weight.name: weight.effective_value() for weight in tfsparse.masked_weights(model)}


class InterruptAtEpoch(keras.callbacks.Callback):
    """Stands for a crash at the start of `epoch` (resume tests)."""

    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")
