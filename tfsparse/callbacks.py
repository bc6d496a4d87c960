"""Callbacks that observe pruning (TensorFlow only: they write tf.summary)."""

import keras
import tensorflow as tf

from tfsparse._utils import require
from tfsparse.stats import layer_rows


class SparsitySummaries(keras.callbacks.Callback):
    """Logs per-layer and overall sparsity to TensorBoard at each epoch end.

    The step of each point is the optimizer's iteration count, so it lines up
    with the loss curves of `keras.callbacks.TensorBoard` in the same log_dir.

    Needs TensorBoard (`pip install 'tfsparse[tensorboard]'`): TensorFlow's
    `tf.summary.scalar` comes from it.

    Args:
        log_dir: directory of the TensorBoard event files.
    """

    def __init__(self, log_dir):
        super().__init__()
        require("tensorboard", "tensorboard", "SparsitySummaries")
        self.log_dir = str(log_dir)
        self._writer = None

    def on_train_begin(self, logs=None):
        self._writer = tf.summary.create_file_writer(self.log_dir)

    def on_epoch_end(self, epoch, logs=None):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        rows = layer_rows(self.model)
        params = sum(r["params"] for r in rows)
        nonzeros = sum(r["nonzeros"] for r in rows)
        with self._writer.as_default():
            for row in rows:
                tf.summary.scalar(f"sparsity/{row['name']}", row["sparsity"], step=step)
            tf.summary.scalar("sparsity/total", 1.0 - nonzeros / max(params, 1), step=step)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()


class SparsityLogger(keras.callbacks.Callback):
    """Adds the overall sparsity of the prunable kernels to each epoch's logs.

    Put it after the method in the callback list; `model.fit(...).history`
    then has a "sparsity" entry per epoch next to the loss and metrics.
    """

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            rows = layer_rows(self.model)
            params = sum(r["params"] for r in rows)
            logs["sparsity"] = 1.0 - sum(r["nonzeros"] for r in rows) / max(params, 1)
