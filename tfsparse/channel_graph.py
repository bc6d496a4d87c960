"""Channel dependency groups: which channels of a functional model must be
removed together.

Removing output channel c of a Conv2D also removes channel c of the
BatchNormalization after it, of the depthwise convolution that follows, of
every tensor added to it by a residual `Add`, and the input rows that read
it in the next Conv or Dense (shifted by a `Concatenate`, repeated for every
position after a `Flatten`). A *channel group* is such a set of channels
that stand or fall together: one index c names a channel in every tensor and
a slice in every kernel of the group.

The analysis walks the model's graph once. Each layer that makes new
channels (Dense, Conv, SeparableConv, Embedding: a *producer*) opens a group
for its output; channel-wise layers and operations (normalization per
channel, activations, pooling, padding, dropout, depthwise convolution,
`x + 3.0`) carry the group to their output; merges (`Add`, `Multiply`, ...)
join the groups of their inputs into one; `Concatenate` lays them side by
side; layers that read the channels into new ones (Dense, Conv: a *reader*)
close them. A group whose channels reach anything else (a model output, a
LayerNormalization that mixes channels, a softmax, a reshape of the channel
axis, a custom layer, a shared layer) is *blocked*: it is kept whole and
the reason is listed.

Removing channel c of an unblocked group is exact when every reader's input
slice for c is zero: the channel's values (a bias, a BatchNorm shift, an
activation of them) then reach nothing. `tfsparse.shrink` relies on that.
"""

import dataclasses

import keras
import numpy as np

from tfsparse.layers import base_class

L = keras.layers

_CONV = (L.Conv1D, L.Conv2D, L.Conv3D)
_SEPARABLE = (L.SeparableConv1D, L.SeparableConv2D)
_DEPTHWISE = (L.DepthwiseConv1D, L.DepthwiseConv2D)
_CHANNELWISE_LAYERS = (
    L.ReLU, L.LeakyReLU, L.ELU, L.Dropout, L.SpatialDropout1D, L.SpatialDropout2D,
    L.SpatialDropout3D, L.GaussianNoise, L.GaussianDropout, L.AlphaDropout, L.Identity,
    L.ActivityRegularization, L.ZeroPadding1D, L.ZeroPadding2D, L.ZeroPadding3D,
    L.Cropping1D, L.Cropping2D, L.Cropping3D, L.UpSampling1D, L.UpSampling2D, L.UpSampling3D,
    L.MaxPooling1D, L.MaxPooling2D, L.MaxPooling3D, L.AveragePooling1D, L.AveragePooling2D,
    L.AveragePooling3D, L.GlobalAveragePooling1D, L.GlobalAveragePooling2D,
    L.GlobalAveragePooling3D, L.GlobalMaxPooling1D, L.GlobalMaxPooling2D, L.GlobalMaxPooling3D,
)
_MERGES = (L.Add, L.Subtract, L.Multiply, L.Average, L.Maximum, L.Minimum)
#: Activations that mix channels (the others act on each value alone).
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")
#: keras.ops operations (functional graphs record `x + 3.0`, `x * y`) that act
#: on each value alone.
_ELEMENTWISE_OPS = frozenset((
    "Add", "Subtract", "Multiply", "Divide", "TrueDivide", "Maximum", "Minimum", "Power",
    "Negative", "Abs", "Absolute", "Square", "Sqrt", "Exp", "Log", "Clip", "Tanh", "Sign",
    "Relu", "Relu6", "Sigmoid", "HardSigmoid", "HardSilu", "HardSwish", "Silu", "Swish",
    "Gelu", "Elu", "Selu", "Celu", "LeakyRelu", "Softplus", "Softsign", "Cast",
))


@dataclasses.dataclass
class KernelSlice:
    """Where channel c of a group lives in one kernel: along `axis`, at
    `offset + c + p * stride` for p in range(repeat) (`repeat` > 1 for a
    Dense reading a flattened feature map)."""

    layer: object
    attr: str
    axis: int
    offset: int = 0
    stride: int = 0
    repeat: int = 1

    def positions(self, channels):
        """Indices along `axis` of the given group channels (sorted by p, c)."""
        channels = np.asarray(channels, dtype=np.int64)
        return (self.offset + channels[None, :] + self.stride * np.arange(self.repeat)[:, None]).ravel()

    def value(self):
        """The kernel as the layer computes with it (masks applied)."""
        return keras.ops.convert_to_numpy(getattr(self.layer, self.attr))

    def channel_norms(self, array, size, order):
        """Per group channel: the `order`-norm (1 or 2) of its entries of
        `array` (an array of the kernel's shape), or with `order=0` whether
        any of them is nonzero."""
        moved = np.moveaxis(np.asarray(array), self.axis, 0)
        rows = moved.reshape(moved.shape[0], -1)[self.positions(np.arange(size))]
        rows = rows.reshape(self.repeat, size, -1)
        if order == 0:
            return np.any(rows != 0, axis=(0, 2))
        return np.sum(np.abs(rows) ** order, axis=(0, 2))

    def zero_channels(self, array, channels):
        """`array` (of the kernel's shape) with the channels' entries set to 0."""
        moved = np.moveaxis(np.array(array), self.axis, 0)
        moved[self.positions(channels)] = 0
        return np.moveaxis(moved, 0, self.axis)


class ChannelGroup:
    """Channels that are removed together.

    Attributes:
        size: number of channels.
        producers: `KernelSlice`s of the kernels whose output channels these
            are (output axis).
        readers: `KernelSlice`s of the kernels that read them (input axis).
        carriers: `KernelSlice`s of depthwise kernels on the way (channel axis).
        batch_norms: BatchNormalization layers on the way.
        unit: what one index names: "channels", or "heads" for the heads of
            a MultiHeadAttention.
        blocked: reasons the group cannot be removed (empty if it can).
    """

    def __init__(self, size, unit="channels"):
        self.size = size
        self.unit = unit
        self.producers, self.readers, self.carriers = [], [], []
        self.batch_norms = []
        self.blocked = []

    @property
    def prunable(self):
        return not self.blocked and self.size > 1 and bool(self.producers)

    @property
    def reason(self):
        """Why the group is kept whole ("" if it is prunable)."""
        if self.prunable:
            return ""
        return "; ".join(dict.fromkeys(self.blocked)) or "a single channel"

    @property
    def kernel_slices(self):
        return self.producers + self.carriers + self.readers

    def describe(self):
        names = ", ".join(dict.fromkeys(s.layer.name for s in self.producers)) or "no producer"
        return f"{self.size} {self.unit} of {names}"

    def __repr__(self):
        state = "prunable" if self.prunable else f"kept: {self.reason}"
        return f"<ChannelGroup {self.describe()} ({state})>"


@dataclasses.dataclass
class _Segment:
    group: int  # a union-find node
    length: int


class ChannelGroups:
    """The channel groups of a model (see the module docstring).

    Attributes:
        groups: every `ChannelGroup`, prunable or blocked.
        tensor_segments: id(KerasTensor) -> list of (ChannelGroup, length)
            laying out the tensor's last axis; a flattened tensor repeats it
            `tensor_repeats[id]` times.
        heads: id(MultiHeadAttention layer) -> the group of its heads.
    """

    def __init__(self, model):
        self.model = model
        self._parent, self._groups = [], {}
        self._segments, self._repeats = {}, {}
        self.heads = {}  # id(MultiHeadAttention) -> its head group
        self._analyze(model)
        roots = sorted({self._find(i) for i in range(len(self._parent))})
        self.groups = [self._groups[root] for root in roots]
        self._group_of = {root: self._groups[root] for root in roots}
        self.tensor_segments = {
            key: [(self._group_of[self._find(s.group)], s.length) for s in segments]
            for key, segments in self._segments.items()
        }
        self.tensor_repeats = dict(self._repeats)
        self.heads = {key: self._group_of[self._find(index)] for key, index in self.heads.items()}

    @property
    def prunable(self):
        return [group for group in self.groups if group.prunable]

    @property
    def blocked(self):
        return [group for group in self.groups if group.blocked and group.producers]

    def summary(self):
        """A text table: one line per group of a producer."""
        lines = [f"Channel groups of '{self.model.name}': {len(self.prunable)} prunable, "
                 f"{len(self.blocked)} blocked"]
        for group in self.groups:
            if group.producers:
                state = "prunable" if group.prunable else f"kept: {group.reason}"
                lines.append(f"  {group.describe()}: {state}")
        return "\n".join(lines)

    # -- union-find over groups ------------------------------------------------

    def _new(self, size, reason=None):
        index = len(self._parent)
        self._parent.append(index)
        self._groups[index] = ChannelGroup(size)
        if reason:
            self._groups[index].blocked.append(reason)
        return index

    def _find(self, index):
        while self._parent[index] != index:
            self._parent[index] = self._parent[self._parent[index]]
            index = self._parent[index]
        return index

    def _union(self, a, b):
        a, b = self._find(a), self._find(b)
        if a == b:
            return
        keep, gone = self._groups[a], self._groups.pop(b)
        self._parent[b] = a
        for field in ("producers", "readers", "carriers", "batch_norms", "blocked"):
            getattr(keep, field).extend(getattr(gone, field))

    def _group(self, index):
        return self._groups[self._find(index)]

    # -- the walk ----------------------------------------------------------------

    def _analyze(self, model):
        nodes = _model_nodes(model)
        uses = {}
        for node in nodes:
            uses[id(node.operation)] = uses.get(id(node.operation), 0) + 1
        for node in nodes:
            operation = node.operation
            inputs = list(node.input_tensors)
            if isinstance(operation, L.InputLayer) or node.is_input:
                for tensor in node.output_tensors:
                    self._fresh(tensor, "a model input")
                continue
            name = f"'{operation.name}' ({type(operation).__name__})"
            if uses[id(operation)] > 1:
                self._block_all(inputs, node.output_tensors, f"{name} is used more than once")
            else:
                self._visit(operation, node, inputs, name)
        for tensor in _flat(_functional_of(model).outputs):
            for segment in self._segments.get(id(tensor), ()):
                self._group(segment.group).blocked.append("reaches a model output")

    def _visit(self, layer, node, inputs, name):
        outputs = node.output_tensors
        if isinstance(layer, keras.Model):
            return self._block_all(inputs, outputs, f"read by the nested model {name}")
        kind = base_class(layer)  # exact Keras classes only: a subclass may compute anything
        config = layer.get_config() if isinstance(layer, L.Layer) else {}
        if config.get("data_format", "channels_last") != "channels_last":
            return self._block_all(inputs, outputs, f"read by {name} with data_format channels_first")
        activation = config.get("activation")
        if kind in (L.Dense, *_CONV, *_SEPARABLE) and not _one_known_input(inputs):
            return self._block_all(inputs, outputs, f"read by {name} with several or unknown inputs")
        if kind is L.Dense:
            self._read(inputs[0], layer, "kernel", 0)
            self._produce(outputs[0], layer, "kernel", 1, activation, name)
        elif kind in _CONV:
            if layer.groups != 1:
                return self._block_all(inputs, outputs, f"read by {name} with groups={layer.groups}")
            self._read(inputs[0], layer, "kernel", layer.rank)
            self._produce(outputs[0], layer, "kernel", layer.rank + 1, activation, name)
        elif kind in _SEPARABLE:
            if layer.depth_multiplier != 1:
                return self._block_all(inputs, outputs, f"read by {name} with depth_multiplier > 1")
            self._read(inputs[0], layer, "depthwise_kernel", layer.rank, carrier=True)
            self._read(inputs[0], layer, "pointwise_kernel", layer.rank)
            self._produce(outputs[0], layer, "pointwise_kernel", layer.rank + 1, activation, name)
        elif kind is L.MultiHeadAttention:
            self._attention_heads(layer, inputs, outputs, name)
        elif kind is L.Embedding:
            self._produce(outputs[0], layer, "embeddings", 1, None, name)
        elif kind in _DEPTHWISE:
            if layer.depth_multiplier != 1:
                return self._block_all(inputs, outputs, f"read by {name} with depth_multiplier > 1")
            self._read(inputs[0], layer, "depthwise_kernel", layer.rank, carrier=True)
            self._carry(inputs[0], outputs[0], activation, name)
        elif kind is L.BatchNormalization:
            axis = config["axis"]
            if axis not in (-1, len(inputs[0].shape) - 1):
                return self._block_all(inputs, outputs, f"normalized by {name} along axis {axis}")
            for segment in self._segments.get(id(inputs[0]), ()):
                self._group(segment.group).batch_norms.append(layer)
            self._carry(inputs[0], outputs[0], None, name)
        elif kind is L.Activation:
            self._carry(inputs[0], outputs[0], activation, name)
        elif kind in _CHANNELWISE_LAYERS or (kind is L.Rescaling and _scalar_rescaling(config)):
            self._carry(inputs[0], outputs[0], None, name)
        elif kind in _MERGES:
            self._merge(inputs, outputs[0], name)
        elif kind is L.Concatenate:
            self._concatenate(inputs, outputs[0], config["axis"], name)
        elif kind is L.Flatten:
            self._flatten(inputs[0], outputs[0], name)
        elif kind is L.Reshape:
            self._reshape(inputs[0], outputs[0], name)
        elif not isinstance(layer, L.Layer) and type(layer).__name__ in _ELEMENTWISE_OPS:
            if not all(_is_scalar(a) for a in _flat(node.arguments.args) + _flat(node.arguments.kwargs)
                       if not isinstance(a, keras.KerasTensor)):
                return self._block_all(inputs, outputs, f"{name} with a constant that is not a scalar")
            self._merge(inputs, outputs[0], name)
        elif not isinstance(layer, L.Layer) and type(layer).__name__ == "GetItem":
            self._get_item(inputs, outputs[0], name)
        else:
            self._block_all(inputs, outputs, f"read by {name}, which tfsparse cannot follow")

    def _attention_heads(self, layer, inputs, outputs, name):
        """The heads of a MultiHeadAttention are a group of their own: head h
        is made by slice h of the query, key and value projections and read
        by slice h of the output projection. The layer's inputs and outputs
        are not followed (in a transformer a LayerNormalization blocks them)."""
        self._block_all(inputs, outputs, f"read by {name} (its input and output projections)")
        index = self._new(layer.num_heads)
        group = self._group(index)
        group.unit = "heads"
        for projection in (layer._query_dense, layer._key_dense, layer._value_dense):
            group.producers.append(KernelSlice(projection, "kernel", 1))
        group.readers.append(KernelSlice(layer._output_dense, "kernel", 0))
        self.heads[id(layer)] = index

    def _fresh(self, tensor, reason=None):
        size = tensor.shape[-1] if tensor.shape else None
        if size is None:
            self._segments[id(tensor)] = []
            return
        self._segments[id(tensor)] = [_Segment(self._new(size, reason), size)]
        self._repeats[id(tensor)] = 1

    def _block_all(self, inputs, outputs, reason):
        for tensor in inputs:
            for segment in self._segments.get(id(tensor), ()):
                self._group(segment.group).blocked.append(reason)
        for tensor in outputs:
            self._fresh(tensor, f"made by {reason.split(' ', 2)[-1]}")

    def _produce(self, tensor, layer, attr, axis, activation, name):
        self._fresh(tensor)
        group = self._group(self._segments[id(tensor)][0].group)
        group.producers.append(KernelSlice(layer, attr, axis))
        if activation in _MIXING_ACTIVATIONS:
            group.blocked.append(f"mixed by the {activation} of {name}")

    def _read(self, tensor, layer, attr, axis, carrier=False):
        total = sum(s.length for s in self._segments.get(id(tensor), ()))
        offset = 0
        for segment in self._segments.get(id(tensor), ()):
            kernel_slice = KernelSlice(layer, attr, axis, offset, total, self._repeats.get(id(tensor), 1))
            group = self._group(segment.group)
            (group.carriers if carrier else group.readers).append(kernel_slice)
            offset += segment.length

    def _carry(self, source, tensor, activation, name):
        if activation in _MIXING_ACTIVATIONS:
            return self._block_all([source], [tensor], f"mixed by the {activation} of {name}")
        self._segments[id(tensor)] = list(self._segments.get(id(source), ()))
        self._repeats[id(tensor)] = self._repeats.get(id(source), 1)

    def _merge(self, inputs, tensor, name):
        """Elementwise merge: channel c of every input meets channel c of the
        others. Inputs broadcast along the channel axis (size 1) carry none."""
        width = tensor.shape[-1] if tensor.shape else None
        full = [t for t in inputs if t.shape and t.shape[-1] == width and width != 1]
        layouts = [self._layout(t) for t in full]
        if not full or any(layout != layouts[0] for layout in layouts):
            return self._block_all(inputs, [tensor], f"merged by {name} with channels laid out differently")
        for t in full[1:]:
            for a, b in zip(self._segments[id(full[0])], self._segments[id(t)]):
                self._union(a.group, b.group)
        self._carry(full[0], tensor, None, name)

    def _concatenate(self, inputs, tensor, axis, name):
        rank = len(tensor.shape)
        if axis not in (-1, rank - 1):
            return self._merge(inputs, tensor, name)
        if any(self._repeats.get(id(t), 1) != 1 or not self._segments.get(id(t)) for t in inputs):
            return self._block_all(inputs, [tensor], f"concatenated by {name} after a flatten")
        self._segments[id(tensor)] = [s for t in inputs for s in self._segments[id(t)]]
        self._repeats[id(tensor)] = 1

    def _flatten(self, source, tensor, name):
        if len(source.shape) <= 2:
            return self._carry(source, tensor, None, name)
        positions = int(np.prod(source.shape[1:-1]))
        if self._repeats.get(id(source), 1) != 1 or None in source.shape[1:]:
            return self._block_all([source], [tensor], f"flattened by {name} with an unknown size")
        self._segments[id(tensor)] = list(self._segments.get(id(source), ()))
        self._repeats[id(tensor)] = positions

    def _reshape(self, source, tensor, name):
        if source.shape[-1] == tensor.shape[-1] and self._repeats.get(id(source), 1) == 1:
            return self._carry(source, tensor, None, name)
        self._block_all([source], [tensor], f"reshaped by {name} across the channel axis")

    def _get_item(self, inputs, tensor, name):
        source = inputs[0]
        if (len(inputs) == 1 and len(tensor.shape) >= 2 and len(source.shape) >= 2
                and tensor.shape[-1] == source.shape[-1] and self._repeats.get(id(source), 1) == 1):
            return self._carry(source, tensor, None, name)
        self._block_all(inputs, [tensor], f"indexed by {name} along the channel axis")

    def _layout(self, tensor):
        return ([s.length for s in self._segments.get(id(tensor), ())], self._repeats.get(id(tensor), 1))


def channel_groups(model):
    """The channel dependency groups of a functional or Sequential model.

    Works on plain and on masked models (`tfsparse.prune`'s output). See
    the module docstring for what a group is and what blocks one.

    Example:

    ```python
    groups = tfsparse.channel_groups(keras.applications.MobileNetV2(
        input_shape=(96, 96, 3), weights=None))
    print(groups.summary())
    ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: model={model!r}")
    if not model.built or not hasattr(_functional_of(model), "_nodes_by_depth"):
        raise ValueError(
            f"Channel groups need a functional or Sequential model with known inputs; "
            f"'{model.name}' ({type(model).__name__}) is "
            + ("not built." if not model.built else "subclassed (its graph is not recorded).")
            + " Build it from keras.Input, or prune its weights without removing channels."
        )
    return ChannelGroups(model)


def _functional_of(model):
    return getattr(model, "_functional", None) or model


def _model_nodes(model):
    """The model's graph nodes, inputs first, in topological order."""
    functional = _functional_of(model)
    by_depth = functional._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def _one_known_input(inputs):
    return len(inputs) == 1 and bool(inputs[0].shape) and inputs[0].shape[-1] is not None


def _scalar_rescaling(config):
    return all(np.ndim(config.get(key, 0.0)) == 0 for key in ("scale", "offset"))


def _is_scalar(value):
    return value is None or isinstance(value, (bool, int, float, str)) or np.ndim(value) == 0


def _flat(structure):
    return list(keras.tree.flatten(structure)) if structure is not None else []
