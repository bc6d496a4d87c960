"""Physical channel removal: a smaller plain Keras model with the same outputs."""

import warnings

import keras
import numpy as np

from tfsparse import channel_graph as groups_lib
from tfsparse import surgery

L = keras.layers

#: Relative tolerance of the check that the shrunk model computes what the
#: model did (float32 rounding of a different summation order).
TOLERANCE = 1e-5


class ShrinkWarning(UserWarning):
    """Channels that look removable but that `shrink` had to keep."""


def shrink(model, check=True):
    """Removes the channels that nothing reads any more.

    A channel of a prunable channel group (`tfsparse.channel_groups`) is
    removed when every kernel that reads it has an all-zero input slice for
    it (after masking): its producer's output filter, its bias, its
    BatchNormalization entries, its depthwise filter and its reader rows go,
    and the layers get smaller (`filters`, `units`, a Reshape's last size).
    `tfsparse.methods.ChannelPruning` prunes in exactly these units.

    Args:
        model: a functional or Sequential model, masked (`tfsparse.prune`)
            or plain (`tfsparse.strip`'s output).
        check: run a batch through both models and raise if their outputs
            differ by more than 1e-5 of the largest output.

    Returns:
        A plain, uncompiled Keras model of the same layer names and classes,
        with fewer channels. Channels of blocked groups stay; when some of
        them look removable (their readers are all zero) a `ShrinkWarning`
        lists the groups and why they are kept.

    Raises:
        ValueError: no channel can be removed (for instance masks that are
            not aligned to channels: unstructured or block masks).
    """
    surgery._check_model(model, "model")
    plain = surgery.strip(model) if surgery.is_pruned(model) else model
    groups = groups_lib.channel_groups(plain)
    keep = {id(group): _kept_channels(group) for group in groups.groups}
    removed = sum(g.size - len(keep[id(g)]) for g in groups.prunable)
    if removed == 0:
        raise ValueError(
            f"No channel of '{model.name}' can be removed: in every prunable channel group "
            "each channel is still read by some kernel (masks that are not aligned to channels, "
            "such as unstructured or block masks, remove none). Prune channels with "
            "tfsparse.methods.ChannelPruning. " + groups.summary().splitlines()[0]
        )
    _warn_kept(groups)
    layout = _Layout(groups, keep)
    small = _rebuild(plain, layout)
    if check:
        _check_same_outputs(plain, small)
    return small


def _kept_channels(group):
    """Indices of the channels to keep: all of a blocked group; otherwise the
    channels some reader still reads (at least one)."""
    if not group.prunable:
        return np.arange(group.size)
    read = _read_channels(group)
    if not read.any():
        read[0] = True  # a layer needs one channel; it reads zeros
    return np.flatnonzero(read)


def _read_channels(group):
    """Per channel: does some reader still read it (a nonzero input slice)?"""
    read = np.zeros(group.size, dtype=bool)
    for kernel_slice in group.readers:
        read |= kernel_slice.channel_norms(kernel_slice.value(), group.size, order=0)
    return read


def _warn_kept(groups):
    looks_removable = [
        group for group in groups.blocked
        if group.readers and not _read_channels(group).all()
    ]
    if looks_removable:
        lines = "\n".join(f"  {g.describe()}: {g.reason}" for g in looks_removable)
        warnings.warn(
            "shrink kept channels that no kernel reads any more, because their groups "
            f"cannot be removed:\n{lines}", ShrinkWarning, stacklevel=3)


class _Layout:
    """Kept indices of every tensor's last axis, and per layer its input
    and output indices."""

    def __init__(self, groups, keep):
        self.groups, self.keep = groups, keep

    def indices(self, tensor):
        """Kept positions along the tensor's last axis (None: all)."""
        segments = self.groups.tensor_segments.get(id(tensor))
        if not segments:
            return None
        parts, offset = [], 0
        for group, length in segments:
            parts.append(offset + self.keep[id(group)])
            offset += length
        channels = np.concatenate(parts)
        repeat = self.groups.tensor_repeats.get(id(tensor), 1)
        if len(channels) == offset:
            return None
        return (channels[None, :] + offset * np.arange(repeat)[:, None]).ravel()


def _rebuild(plain, layout):
    nodes = {id(node.operation): node for node in groups_lib._model_nodes(plain)}
    plans = {}
    for layer in plain.layers:
        node = nodes.get(id(layer))
        if node is None or node.is_input:
            continue
        inputs = [layout.indices(t) for t in node.input_tensors]
        output = layout.indices(node.output_tensors[0]) if node.output_tensors else None
        if id(layer) in layout.groups.heads:
            plan = _plan_attention(layer, layout.keep[id(layout.groups.heads[id(layer)])])
        else:
            plan = _plan_layer(layer, inputs[0] if len(inputs) == 1 else None, output)
        if plan is not None:
            plans[layer.name] = plan

    def clone(layer):
        if layer.name not in plans:
            return layer.__class__.from_config(layer.get_config())
        return layer.__class__.from_config(plans[layer.name][0])

    with surgery._compile_hidden(plain):
        small = keras.models.clone_model(plain, clone_function=clone)
    for layer in plain.layers:
        if not layer.weights:
            continue
        values = [keras.ops.convert_to_numpy(w) for w in layer.weights]
        if layer.name in plans:
            values = plans[layer.name][1](values)
        small.get_layer(layer.name).set_weights(values)
    return small


def _plan_layer(layer, inputs, output):
    """(new config, function old weights -> new weights) for a layer whose
    channels change, or None."""
    if inputs is None and output is None:
        return None
    config = layer.get_config()
    take = lambda values, index, axis: values if index is None else np.take(values, index, axis=axis)
    if isinstance(layer, L.Dense):
        config["units"] = _size(output, config["units"])
        return config, lambda w: [take(take(w[0], inputs, 0), output, 1), *[take(b, output, 0) for b in w[1:]]]
    if isinstance(layer, (*groups_lib._CONV,)):
        config["filters"] = _size(output, config["filters"])
        rank = layer.rank
        return config, lambda w: [take(take(w[0], inputs, rank), output, rank + 1),
                                  *[take(b, output, 0) for b in w[1:]]]
    if isinstance(layer, groups_lib._SEPARABLE):
        config["filters"] = _size(output, config["filters"])
        rank = layer.rank
        return config, lambda w: [take(w[0], inputs, rank), take(take(w[1], inputs, rank), output, rank + 1),
                                  *[take(b, output, 0) for b in w[2:]]]
    if isinstance(layer, groups_lib._DEPTHWISE):
        rank = layer.rank
        return config, lambda w: [take(w[0], inputs, rank), *[take(b, inputs, 0) for b in w[1:]]]
    if isinstance(layer, L.BatchNormalization):
        return config, lambda w: [take(v, inputs, 0) for v in w]
    if isinstance(layer, L.Embedding):
        config["output_dim"] = _size(output, config["output_dim"])
        return config, lambda w: [take(w[0], output, 1)]
    if isinstance(layer, L.Reshape) and output is not None:
        config["target_shape"] = (*config["target_shape"][:-1], len(output))
        return config, lambda w: w
    if layer.weights and (inputs is not None or output is not None):
        raise ValueError(f"shrink cannot resize layer '{layer.name}' ({type(layer).__name__}).")
    return None


def _plan_attention(layer, heads):
    """A MultiHeadAttention with only the kept heads (None: all kept)."""
    if len(heads) == layer.num_heads:
        return None
    config = dict(layer.get_config(), num_heads=len(heads))
    head_axis = {}
    for projection in (layer._query_dense, layer._key_dense, layer._value_dense):
        head_axis[id(projection.kernel)] = 1
        if projection.bias is not None:
            head_axis[id(projection.bias)] = 0
    head_axis[id(layer._output_dense.kernel)] = 0
    axes = [head_axis.get(id(variable)) for variable in layer.weights]
    return config, lambda w: [v if a is None else np.take(v, heads, axis=a) for v, a in zip(w, axes)]


def _size(indices, default):
    return default if indices is None else len(indices)


def _check_same_outputs(plain, small):
    batch = [np.random.default_rng(0).normal(size=(2, *t.shape[1:])).astype(t.dtype)
             if "float" in str(t.dtype) else np.zeros((2, *t.shape[1:]), t.dtype)
             for t in plain.inputs]
    batch = batch[0] if len(batch) == 1 else batch
    expected = [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(plain(batch, training=False))]
    got = [np.asarray(keras.ops.convert_to_numpy(o)) for o in keras.tree.flatten(small(batch, training=False))]
    for e, g in zip(expected, got):
        scale = max(float(np.abs(e).max()), 1e-12)
        error = float(np.abs(e - g).max()) / scale
        if not error <= TOLERANCE:
            raise ValueError(
                f"shrink built a model whose outputs differ from '{plain.name}''s by {error:.2e} "
                f"of the largest output (tolerance {TOLERANCE}); nothing was returned. "
                "Please report this model."
            )
