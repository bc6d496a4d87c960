"""The int8 fake quantization of one masked layer (`FakeQuantInt8`).

`tfsparse.quantize_aware` (in `tfsparse.quantization`, which explains the
choices) sets one on each quantized layer; the masked layer calls its three
hooks: `fake_quant_kernel` on the effective kernel, `fake_quant_inputs` on
its input and `fake_quant_outputs` on its output. `FakeQuant` is the same activation
quantization as a layer of its own, for the outputs of the layers that
compute without a kernel (Add, Concatenate, average pooling, Activation).
They live apart from `tfsparse.quantization` so that `tfsparse.layers` can
deserialize them without an import cycle.
"""

import keras
from keras import ops

#: Layers whose kernels `quantize_aware` quantizes, and the axes of the kernel
#: that hold its output channels (one int8 scale per output channel).
QUANTIZABLE = {
    keras.layers.Dense: (-1,),
    keras.layers.Conv1D: (-1,),
    keras.layers.Conv2D: (-1,),
    keras.layers.DepthwiseConv1D: (-2, -1),  # (..., in, multiplier): in * multiplier channels
    keras.layers.DepthwiseConv2D: (-2, -1),
}

#: Prefix of the names of the variables a `FakeQuantInt8` adds to its layer.
PREFIX = "quant_"


@keras.saving.register_keras_serializable(package="tfsparse")
class FakeQuantInt8:
    """The int8 fake quantization of one masked layer (see the module doc).

    Set on masked layers by `quantize_aware`, serialized with them (a QAT
    model saves and loads as `.keras`). Per layer it keeps non-trainable
    float32 variables: `quant_output_min`, `quant_output_max` and
    `quant_output_batches` (the number of training batches the range has
    seen), and the same for `quant_input_*` when `quantize_inputs`.

    Args:
        quantize_inputs: also fake-quantize the layer's input (for layers
            that read a model input: the file's input quantization).
        ema_decay: weight of the old range in the moving average, in
            [0, 1). The first training batch sets the range.
        per_channel: one int8 scale per output channel of the kernel
            (TFLite's default), or one for the whole kernel.
    """

    def __init__(self, quantize_inputs=False, ema_decay=0.99, per_channel=True):
        self.quantize_inputs = bool(quantize_inputs)
        self.ema_decay = _checked_decay(ema_decay)
        self.per_channel = _checked_per_channel(per_channel)

    def build(self, layer):
        for tensor in ("input",) * self.quantize_inputs + ("output",):
            for name in ("min", "max", "batches"):
                layer._add_masking_weight(f"{PREFIX}{tensor}_{name}", (), "zeros", trainable=False)

    def fake_quant_kernel(self, layer, attr, kernel):
        """`kernel` rounded per output channel (or per tensor) to the int8
        grid; the gradient passes straight through. Zeros stay exact zeros;
        a surviving weight below half a step rounds to zero too, as it would
        in the converter's own quantization."""
        channel_axes = _channel_axes(layer) if self.per_channel else ()
        return _straight_through(kernel, _kernel_grid(kernel, channel_axes))

    def fake_quant_inputs(self, layer, inputs, training):
        return self._fake_quant(layer, "input", inputs, training) if self.quantize_inputs else inputs

    def fake_quant_outputs(self, layer, outputs, training):
        return self._fake_quant(layer, "output", outputs, training)

    def _fake_quant(self, layer, tensor, values, training):
        low, high, batches = (getattr(layer, f"{PREFIX}{tensor}_{name}") for name in ("min", "max", "batches"))
        return _fake_quant(values, low, high, batches, self.ema_decay, training)

    def get_config(self):
        return {"quantize_inputs": self.quantize_inputs, "ema_decay": self.ema_decay, "per_channel": self.per_channel}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return (f"FakeQuantInt8(quantize_inputs={self.quantize_inputs}, ema_decay={self.ema_decay}, "
                f"per_channel={self.per_channel})")


@keras.saving.register_keras_serializable(package="tfsparse")
class FakeQuant(keras.layers.Layer):
    """Fake-quantizes its input per tensor to 8 bits over a tracked range.

    `quantize_aware` puts one after each layer that computes a new tensor
    without a kernel (Add, Concatenate, average pooling, Activation), whose
    range the TFLite int8 file needs. Its non-trainable float32 variables
    are `quant_output_min`, `quant_output_max` and `quant_output_batches`,
    as on a quantized masked layer.

    Args:
        ema_decay: weight of the old range in the moving average, in [0, 1).
    """

    def __init__(self, ema_decay=0.99, **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = _checked_decay(ema_decay)

    def build(self, input_shape):
        for name in ("min", "max", "batches"):
            variable = self.add_weight(name=f"{PREFIX}output_{name}", shape=(), initializer="zeros",
                                       trainable=False, dtype="float32", autocast=False)
            setattr(self, f"{PREFIX}output_{name}", variable)

    def call(self, inputs, training=False):
        return _fake_quant(inputs, self.quant_output_min, self.quant_output_max, self.quant_output_batches,
                           self.ema_decay, bool(training))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "ema_decay": self.ema_decay}


def _checked_decay(ema_decay):
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must be a number in [0, 1). Received: ema_decay={ema_decay!r}")
    return float(ema_decay)


def _checked_per_channel(per_channel):
    if not isinstance(per_channel, bool):
        raise ValueError(f"`per_channel` must be True or False. Received: per_channel={per_channel!r}")
    return per_channel


def _fake_quant(values, low, high, batches, decay, training):
    if training:
        _track_range(values, low, high, batches, decay)
    low = ops.convert_to_tensor(low)
    high = ops.maximum(ops.convert_to_tensor(high), low + 1e-6)  # a range of width 0 has no step
    return keras.quantizers.fake_quant_with_min_max_vars(values, low, high, num_bits=8, narrow_range=False)


def _channel_axes(layer):
    for klass in type(layer).__mro__:
        if klass in QUANTIZABLE:
            return QUANTIZABLE[klass]
    raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) has no int8 kernel quantization.")


def _kernel_grid(kernel, channel_axes):
    """The kernel on the symmetric int8 grid, one scale per index of
    `channel_axes` (one for the whole kernel when there are none), in its dtype."""
    rank = len(kernel.shape)
    keep = {axis % rank for axis in channel_axes}
    reduce = tuple(axis for axis in range(rank) if axis not in keep)
    values = ops.cast(kernel, "float32")
    integers, scale = keras.quantizers.abs_max_quantize(values, axis=reduce, value_range=(-127, 127), dtype="float32")
    return ops.cast(ops.divide(integers, scale), kernel.dtype)


def _straight_through(value, quantized):
    return ops.add(value, ops.stop_gradient(ops.subtract(quantized, value)))


def _track_range(values, low, high, batches, decay):
    values = ops.cast(ops.stop_gradient(values), "float32")
    batch_low = ops.minimum(ops.min(values), 0.0)
    batch_high = ops.maximum(ops.max(values), 0.0)
    first = ops.equal(ops.convert_to_tensor(batches), 0.0)
    low.assign(ops.where(first, batch_low, decay * low + (1.0 - decay) * batch_low))
    high.assign(ops.where(first, batch_high, decay * high + (1.0 - decay) * batch_high))
    batches.assign_add(1.0)
