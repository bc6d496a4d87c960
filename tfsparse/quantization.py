"""Quantization-aware training (QAT) of pruned models that keeps their zeros.

`quantize_aware(model)` is one more step of the pruning workflow: on a masked
model from `tfsparse.prune` (trained and pruned), it returns a copy whose
masked layers compute with fake-quantized int8 values, so that `fit` learns
weights that survive int8 rounding:

- kernels: the effective kernel (`kernel * mask`, as `strip` bakes it) is
  rounded per output channel (or, with `per_channel=False`, Dense kernels
  per tensor) to the symmetric int8 grid {-127..127} x scale, scale = max |w| / 127
  (Keras's `keras.quantizers.abs_max_quantize`), with
  straight-through gradients. A pruned weight is 0 before rounding and
  exactly 0 after it. The masks stay as they are (no method runs).
- activations: the input of a layer that reads a model input, and the output
  of every quantized layer (after its activation), are fake-quantized per
  tensor to 8 bits (`keras.quantizers.fake_quant_with_min_max_vars`: the
  TensorFlow FakeQuant op, whose ranges the TFLite converter reads). The
  ranges track each batch's min and max (0 included) by an exponential
  moving average in training and stay fixed in inference.

`tfsparse.export.to_tflite(qat_model, path, quantization="int8")` then
writes a full-integer file from the learned ranges, with no representative
data, whose int8 kernels are the ones the Keras model computed with.

Why the kernels are not TensorFlow FakeQuant ops (measured with TF 2.21): the
converter turns a per-channel FakeQuant on a Dense kernel into a quantized
tensor it must then transpose to FULLY_CONNECTED's (out, in) layout, and
fails ("'tfl.transpose' op has mismatched quantized axes"); the per-axis
QuantizeAndDequantizeV2 op crashes it, and its strict QDQ mode writes uint8
kernels without their zeros. A kernel already on the abs-max grid is the
one the converter's own per-channel quantization (scale = max |w| / 127)
maps to the same integers, so the file holds exactly the trained values.

What is covered: functional and Sequential models made of Dense, Conv1D,
Conv2D, DepthwiseConv1D and DepthwiseConv2D layers (masked, or left dense by
`prune`: those get an all-ones mask), layers that move values without
computing new ones (Flatten, Reshape, max pooling, dropout, padding,
cropping, Permute), and the layers of residual networks (ResNet, MobileNetV2):

- a BatchNormalization that is the only reader of such a layer's linear,
  channels-last output is folded into it with its moving statistics
  (kernel and bias scaled per output channel; a masked weight stays an
  exact zero), and a ReLU / ReLU6 after them is fused, as the converter
  does. The statistics are frozen from then on: fold a model whose moving
  statistics have settled (trained for a few hundred steps at least).
- Add, average and global average pooling, Activation and ReLU layers get a
  `FakeQuant` layer after them (their output range); any other activation
  of a quantized layer (softmax, sigmoid) becomes an Activation layer of
  its own, run on the quantized logits as TFLite does.

Concatenate, Multiply, LayerNormalization, a BatchNormalization that cannot
be folded, layers with a mask function and other layer kinds are refused by
name, before anything is copied.
"""

import keras
import numpy as np

from tfsparse import layers as masked_layers
from tfsparse import surgery
from tfsparse.fake_quant import PREFIX, QUANTIZABLE, FakeQuant, FakeQuantInt8  # noqa: F401 (public names)
from tfsparse.fake_quant import _channel_axes

#: Layers that only move, select or drop values: their output has their
#: input's range, and TFLite runs them in int8 with the input's scale.
PASS_THROUGH = (
    keras.layers.InputLayer, keras.layers.Flatten, keras.layers.Reshape, keras.layers.Permute,
    keras.layers.MaxPooling1D, keras.layers.MaxPooling2D, keras.layers.Dropout,
    keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
    keras.layers.ZeroPadding1D, keras.layers.ZeroPadding2D, keras.layers.Cropping1D,
    keras.layers.Cropping2D, keras.layers.Identity,
)

#: Layers that compute a new tensor without a kernel: a `FakeQuant` layer
#: after each gives it the range TFLite int8 needs.
RANGED = (
    keras.layers.Add, keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D, keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D, keras.layers.Activation, keras.layers.ReLU,
)


def quantize_aware(model, ema_decay=0.99, per_channel=True):
    """Returns a copy of a pruned model that trains with int8 fake quantization.

    Call it after pruning (or for the last phase of fine-tuning), compile the
    copy (a smaller learning rate than for pruning is usual) and `fit` it
    with no pruning method: the masks stay fixed and pruned weights stay
    exactly zero after quantization. Then export it with
    `tfsparse.export.to_tflite(qat_model, path, quantization="int8")` (no
    representative data needed: the ranges come from training), or `strip`
    it for a float model whose kernels lie on the int8 grid.

    Supported models: functional or Sequential, made of Dense, Conv1D,
    Conv2D, DepthwiseConv1D, DepthwiseConv2D and the value-moving layers of
    `PASS_THROUGH` (Flatten, Reshape, max pooling, dropout, ...). Layers of
    the quantizable classes that `prune` left dense get an all-ones mask
    (they stay dense; run no pruning method on the QAT model).

    Args:
        model: a model returned by `tfsparse.prune` (masked).
        ema_decay: weight of the old range in the moving averages of the
            activation ranges, in [0, 1). Default 0.99.
        per_channel: one int8 scale per output channel of each kernel
            (default, TFLite's own choice), or `False`: one scale per Dense
            kernel. The file is smaller (TFLite stores a float32 scale and
            an int64 zero point per channel, twice for a sparse-encoded
            kernel, and as many for the bias) at some cost in accuracy,
            which QAT trains for. Conv and depthwise kernels stay per
            channel: TF 2.21's converter offers per-tensor kernels of a
            quantization-aware model only for FULLY_CONNECTED, and the file
            must hold the trained integers. `to_tflite` follows the model.

    Returns:
        The QAT model: a new model, compiled like `model` when it was.

    Example:

    ```python
    pruned = tfsparse.prune(model)
    pruned.fit(x, y, epochs=10, callbacks=[tfsparse.methods.MagnitudePruning(0.9)])
    qat = tfsparse.quantize_aware(pruned)
    qat.compile(keras.optimizers.Adam(1e-4), loss, metrics=["accuracy"])
    qat.fit(x, y, epochs=2)
    tfsparse.export.to_tflite(qat, "model.tflite", quantization="int8")
    ```
    """
    surgery._check_model(model, "model")
    FakeQuantInt8(ema_decay=ema_decay, per_channel=per_channel)  # checks the arguments
    tree = surgery.all_layers(model)
    if not any(masked_layers.is_masked(layer) for layer in tree):
        raise ValueError(
            "`model` has no masked layers: quantize_aware keeps the zeros of a pruned model, so "
            "it takes a model from tfsparse.prune (for a dense model too: prune(model) masks it "
            f"with all-ones masks). Received: model '{model.name}' ({type(model).__name__}) "
            "without masks"
        )
    already = [layer.name for layer in tree if masked_layers.is_masked(layer) and layer.quantizer is not None]
    if already:
        raise ValueError(
            f"`model` is already quantization-aware (layers {already} have quantizers). "
            f"Received: model '{model.name}'"
        )
    _check_structure(model)
    copy = _rewritten(surgery._copy(model, keep_compile=True), ema_decay)
    copy._tfsparse_coverage = getattr(model, "_tfsparse_coverage", None)
    reads_input = _layers_reading_model_inputs(_graph(copy))
    for layer in _graph(copy).operations:
        if not _is_quantizable(layer):
            continue
        quantizer = FakeQuantInt8(quantize_inputs=id(layer) in reads_input, ema_decay=ema_decay,
                                  per_channel=per_channel or not isinstance(layer, keras.layers.Dense))
        if masked_layers.is_masked(layer):
            masked_layers.set_quantizer(layer, quantizer)
        else:
            masked_layers.mask_layer(layer, quantizer=quantizer)
    return copy


def is_quantize_aware(model):
    """Whether any layer of `model` has a quantizer (a `quantize_aware` model)."""
    return bool(quantizers(model))


def quantizers(model):
    """The layers of `model` that carry a `FakeQuantInt8`, in layer order."""
    return [layer for layer in surgery.all_layers(model)
            if masked_layers.is_masked(layer) and layer.quantizer is not None]


def per_channel_scales(model):
    """The `per_channel` that `quantize_aware` made `model` with: False when
    some kernel has one int8 scale for the whole tensor."""
    return all(layer.quantizer.per_channel for layer in quantizers(model))


def check_ranges(model, argument="model"):
    """Raises ValueError when an activation range of the QAT `model` never
    saw a training batch (the model was not trained after quantize_aware)."""
    unseen = []
    for layer in surgery.all_layers(model):
        for variable in _range_variables(layer):
            name = variable.path.split("/")[-1]
            if name.startswith(PREFIX) and name.endswith("_batches") and float(variable.numpy()) == 0:
                unseen.append(f"{layer.name} ({name[len(PREFIX):-len('_batches')]})")
    if unseen:
        raise ValueError(
            f"The activation ranges of `{argument}` never saw data: {', '.join(unseen)}. They are "
            "learned in training: fit the quantization-aware model (a few hundred batches) before "
            f"exporting it to int8. Received: {argument} '{model.name}' with 0 training batches "
            "seen by these ranges"
        )


def _range_variables(layer):
    if isinstance(layer, FakeQuant):
        return layer.weights
    return layer.masking_variables if masked_layers.is_masked(layer) and layer.quantizer is not None else []


def _graph(model):
    """The functional graph of a functional or Sequential model."""
    return model._functional if isinstance(model, keras.Sequential) else model


def _is_quantizable(layer):
    return any(klass in QUANTIZABLE for klass in type(layer).__mro__) and not _is_model(layer)


def _is_model(layer):
    return isinstance(layer, keras.Model)


def _check_structure(model):
    if type(model) is not keras.Sequential and type(model) is not surgery._functional_class():
        raise ValueError(
            "quantize_aware supports functional and Sequential models for now (it follows the "
            "graph to place the input quantization). Received: model "
            f"'{model.name}' of class {type(model).__name__}"
        )
    graph = _graph(model)
    unsupported = []
    for layer in graph.operations:
        if _is_model(layer):
            unsupported.append(f"{layer.name} (nested model {type(layer).__name__})")
        elif _is_quantizable(layer):
            if masked_layers.is_masked(layer) and layer.mask_function is not None:
                unsupported.append(f"{layer.name} (mask function {type(layer.mask_function).__name__})")
        elif isinstance(layer, keras.layers.BatchNormalization):
            if _folded_into(layer) is None:
                unsupported.append(
                    f"{layer.name} (BatchNormalization on channels-last output of a Dense/Conv/Depthwise layer "
                    "with a linear activation and no other consumer is folded; this one is not)")
        elif not isinstance(layer, PASS_THROUGH + RANGED):
            unsupported.append(f"{layer.name} ({masked_layers.base_class(layer).__name__})")
    if unsupported:
        raise ValueError(
            "quantize_aware cannot quantize these layers yet: " + ", ".join(unsupported) + ". "
            f"It quantizes {', '.join(k.__name__ for k in QUANTIZABLE)} (and folds a BatchNormalization "
            f"that follows them), ranges {', '.join(k.__name__ for k in RANGED)} and lets through "
            f"{', '.join(k.__name__ for k in PASS_THROUGH)}. Layers with a mask function (score-based "
            "methods: their training masks move) are not taken yet. "
            f"Received: model '{model.name}'"
        )


def _layers_reading_model_inputs(graph):
    """ids of the quantizable layers whose input comes from a model input,
    directly or through pass-through layers: they quantize their input."""
    found = set()
    for layer in graph.operations:
        if not _is_quantizable(layer):
            continue
        for node in layer._inbound_nodes:
            if any(_from_model_input(tensor) for tensor in node.input_tensors):
                found.add(id(layer))
    return found


def _from_model_input(tensor):
    operation, node_index, _ = tensor._keras_history
    if isinstance(operation, keras.layers.InputLayer):
        return True
    if _is_quantizable(operation) or isinstance(operation, FakeQuant):
        return False
    node = operation._inbound_nodes[node_index]
    return any(_from_model_input(t) for t in node.input_tensors)


def _rewritten(model, ema_decay):
    """`model` as TFLite int8 computes it: each BatchNormalization folded into
    the layer before it and a ReLU after them fused into it (`_folded`), and
    a `FakeQuant` after each `RANGED` layer. `model` itself when there is
    nothing to change; else a functional model, compiled like `model`."""
    graph = _graph(model)
    replaced, skipped, split = {}, set(), {}
    for layer in filter(_is_quantizable, graph.operations):
        chain = _fused_after(layer)
        if chain:
            batch_norm, activation = chain
            replaced[id(layer)] = _folded(layer, batch_norm, activation and _fused_name(activation))
            skipped.update(id(follower) for follower in chain if follower is not None)
        elif _activation_name(layer.activation) not in ("linear", "relu", "relu6"):
            # Softmax, sigmoid, ...: TFLite runs them as ops of their own, on the quantized logits.
            replaced[id(layer)] = _folded(layer, None, "linear")
            split[id(replaced[id(layer)])] = layer.activation
    if not replaced and not any(isinstance(layer, RANGED) for layer in graph.operations):
        return model

    def call(layer, *args, **kwargs):
        if id(layer) in skipped:
            return args[0]
        outputs = layer(*args, **kwargs)
        if id(layer) in split:
            layer = keras.layers.Activation(split[id(layer)], name=f"{layer.name}_activation")
            outputs = layer(outputs)
        return FakeQuant(ema_decay, name=f"{layer.name}_quant")(outputs) if isinstance(layer, RANGED) else outputs

    with surgery._compile_hidden(graph):
        copy = keras.models.clone_model(graph, clone_function=lambda layer: replaced.get(id(layer), layer),
                                        call_function=call)
    if model.compiled:
        copy.compile_from_config(model.get_compile_config())
    return copy


def _fused_after(layer):
    """(BatchNormalization or None, "relu"/"relu6" activation layer or None)
    that `layer` absorbs, or () when none."""
    batch_norm = _only_consumer(layer, keras.layers.BatchNormalization)
    if batch_norm is not None and _folded_into(batch_norm) is not layer:
        batch_norm = None
    last = batch_norm or layer
    activation = _only_consumer(last, (keras.layers.Activation, keras.layers.ReLU))
    if activation is not None and (_fused_name(activation) is None or not _linear(layer)):
        activation = None
    return (batch_norm, activation) if batch_norm or activation else ()


def _folded_into(batch_norm):
    """The quantizable layer whose output `batch_norm` normalizes per channel
    and that nothing else reads, or None."""
    if len(batch_norm._inbound_nodes) != 1:
        return None
    tensor = batch_norm._inbound_nodes[0].input_tensors[0]
    layer = tensor._keras_history[0]
    rank = len(tensor.shape)
    if not _is_quantizable(layer) or batch_norm.axis % rank != rank - 1 or not _linear(layer):
        return None
    return layer if _only_consumer(layer, keras.layers.BatchNormalization) is batch_norm else None


def _only_consumer(layer, classes):
    nodes = layer._outbound_nodes
    if len(layer._inbound_nodes) != 1 or len(nodes) != 1 or not isinstance(nodes[0].operation, classes):
        return None
    return nodes[0].operation


def _linear(layer):
    return _activation_name(layer.activation) == "linear"


def _activation_name(function):
    return keras.activations.serialize(function)


def _fused_name(activation):
    """"relu" or "relu6" for an activation layer TFLite fuses into the op before it, else None."""
    if isinstance(activation, keras.layers.Activation):
        name = _activation_name(activation.activation)
        return name if name in ("relu", "relu6") else None
    if activation.negative_slope or activation.threshold:
        return None
    return {None: "relu", 6.0: "relu6"}.get(activation.max_value)


def _folded(layer, batch_norm, activation):
    """A new `layer` that computes `layer`, then `batch_norm` with its
    inference statistics (when not None), with the activation named
    `activation` (when not None) in place of its own: kernel and bias scaled per
    output channel (a masked weight stays an exact zero), the layer the
    TFLite converter makes of them."""
    config = layer.get_config()
    if batch_norm is not None:
        config["use_bias"] = True
    if activation is not None:
        config["activation"] = activation
    folded = type(layer).from_config(config)
    folded.build(layer.input.shape)
    masked = masked_layers.is_masked(layer)
    kernel = keras.ops.convert_to_numpy(layer.effective_kernel("kernel") if masked else layer.kernel)
    channels = [kernel.shape[axis] for axis in _channel_axes(layer)]
    bias = layer.bias.numpy() if layer.use_bias else 0.0
    if batch_norm is not None:
        factor, shift = _affine(batch_norm)
        kernel = kernel * factor.reshape(channels)
        bias = (bias - batch_norm.moving_mean.numpy()) * factor + shift
    if masked:
        for old, new in zip(layer.masking_variables, folded.masking_variables):
            new.assign(old)
        if masked_layers.MaskedWeight(folded, "kernel").scale is not None:
            masked_layers.MaskedWeight(folded, "kernel").scale.assign(1.0)
    surgery._raw_variable(folded, "kernel").assign(kernel)
    if folded.use_bias:
        folded.bias.assign(bias * np.ones(folded.bias.shape))
    return folded


def _affine(batch_norm):
    """(gamma / sqrt(variance + epsilon), beta) of a BatchNormalization."""
    variance = batch_norm.moving_variance.numpy().astype("float64")
    gamma = batch_norm.gamma.numpy() if batch_norm.scale else 1.0
    beta = batch_norm.beta.numpy() if batch_norm.center else 0.0
    return gamma / np.sqrt(variance + batch_norm.epsilon), beta
