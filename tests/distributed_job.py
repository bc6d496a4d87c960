"""Trains methods of `method_cases` inside a tf.distribute strategy and saves
their inference kernels; run as a separate process by test_distributed.py,
because the devices of a process are fixed when TensorFlow starts.

    python tests/distributed_job.py MODE OUT_DIR METHOD [METHOD ...]

MODE: `single` (the default strategy), `mirrored` (MirroredStrategy over two
logical CPU devices) or `multi_worker` (MultiWorkerMirroredStrategy; the
cluster comes from TF_CONFIG). Writes OUT_DIR/<method>.npz with the kernels
and the per-epoch losses.

Multi-worker runs use a custom loop, because Keras 3's `fit` does not run
under MultiWorkerMirroredStrategy (keras-team/keras#20585: it reduces the
first batch and the scalar logs with collective ops that reject them). The
loop is the one TensorFlow documents for that strategy, with the method as a
callback in a `keras.callbacks.CallbackList`.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def strategy_for(mode):
    if mode == "single":
        return tf.distribute.get_strategy()
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    if mode == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown mode {mode!r}")


def main(mode, out, names):
    strategy = strategy_for(mode)  # before Keras touches a device
    sys.path.insert(0, str(Path(__file__).parent))
    import method_cases

    x, y = method_cases.data()
    for name in names:
        with strategy.scope():
            model, method = method_cases.build(name, x, y)
        if mode == "multi_worker":
            losses = custom_loop(strategy, model, method, x, y, method_cases.BATCH_SIZE, method_cases.EPOCHS)
        else:
            history = model.fit(x, y, batch_size=method_cases.BATCH_SIZE, epochs=method_cases.EPOCHS,
                                shuffle=False, verbose=0, callbacks=[method])
            losses = history.history["loss"]
        np.savez(Path(out) / f"{name}.npz", loss=np.array(losses),
                 replicas=strategy.num_replicas_in_sync, **method_cases.inference_kernels(model))


def custom_loop(strategy, model, method, x, y, batch_size, epochs):
    """`fit` for MultiWorkerMirroredStrategy: Keras's train step under
    `strategy.run`, the method driven by a CallbackList. Returns the mean
    loss of each epoch."""
    import keras

    dataset = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))
    steps = len(x) // batch_size
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    callbacks = keras.callbacks.CallbackList([method], model=model, epochs=epochs, steps=steps, verbose=0)

    @tf.function
    def train_step(batch):
        logs = strategy.run(model.train_step, args=(batch,))
        return strategy.reduce("MEAN", logs["loss"], axis=None)

    losses = []
    callbacks.on_train_begin()
    for epoch in range(epochs):
        model.reset_metrics()
        callbacks.on_epoch_begin(epoch)
        for step, batch in enumerate(dataset):
            callbacks.on_train_batch_begin(step)
            loss = float(train_step(batch))
            callbacks.on_train_batch_end(step, {"loss": loss})
        losses.append(loss)
        callbacks.on_epoch_end(epoch, {"loss": loss})
    callbacks.on_train_end()
    return losses


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
