"""Model surgery: `prune` puts masks in, `strip` takes them out.

`prune` masks layers IN PLACE on a copy of the model (or on the model itself
with `inplace=True`): every layer of the model's tree is reached, including
layers nested in other layers (MultiHeadAttention's projections, RNN cells,
the Dense layers of a custom block, KerasHub blocks) and the sublayers of a
subclassed model. The copy is Keras's own serialization round trip
(`serialize_keras_object` -> `deserialize_keras_object`) plus the weights,
which handles operation nodes (`x + y`, `x[:, 0]`, `keras.ops` calls),
shared layers, nested models and subclassed models with a config.

`strip` builds the plain model from the same config with the masked classes
replaced by their Keras bases, and copies the weights with the effective
kernels baked in. It never compiles the result: the stripped model carries
no optimizer (its file is the size of its weights) and nothing to
deserialize from the user's training setup.

Coverage: every weight matrix (a variable of rank >= 2) that `prune` leaves
dense is listed with the reason (`coverage(model)`, `tfsparse.summary`), and
a warning names those left dense for a reason the user did not choose
(unsupported layer class, frozen layer). `strict=True` raises instead for
unsupported ones, as tfmot does.
"""

import collections
import contextlib
import fnmatch
import inspect
import warnings

import keras
import numpy as np

from tfsparse import layers as masked_layers
from tfsparse import masked_tree

FROZEN = "frozen (trainable=False)"
EXCLUDED = "excluded by `exclude`"
NOT_SELECTED = "not selected by `layers`"


class PruningCoverageWarning(UserWarning):
    """Weight matrices left dense for a reason the user did not state."""


def prune(model, layers=None, exclude=None, strict=False, inplace=False, **layer_kwargs):
    """Returns a copy of `model` whose prunable weights are masked.

    The masks start at all ones, so the new model computes exactly what the
    old one did. Train it with a method from `tfsparse.methods`.

    Prunable: the kernels of Dense, EinsumDense, Conv*, Conv*Transpose,
    DepthwiseConv*, SeparableConv* (both kernels), Embedding, and the
    `kernel` and `recurrent_kernel` of SimpleRNN / GRU / LSTM cells, wherever
    they sit in the model (nested in MultiHeadAttention, Bidirectional,
    TimeDistributed, custom layers, KerasHub blocks), subclasses of those
    classes, and the weights a custom layer declares with
    `get_prunable_weights()`. Frozen layers (`trainable=False`, e.g. a
    transfer-learning backbone) are left dense unless `layers` selects them:
    their pruned weights could not recover.

    Args:
        model: a built Keras model: Sequential, functional (operation
            nodes, nested models) or subclassed.
        layers: which layers to prune. `None` (all), or one or a list of: a
            layer name pattern (`fnmatch`, e.g. `"dense*"`), a layer class,
            or a callable `layer -> bool`. Selecting a layer selects the
            prunable layers inside it (`layers=keras.layers.MultiHeadAttention`).
        exclude: layers to leave dense, same forms as `layers`.
        strict: raise if a weight matrix cannot be pruned (unsupported layer
            class) instead of leaving it dense with a warning.
        inplace: mask `model` itself instead of a copy (for subclassed models
            whose config cannot rebuild them). On an error the model is left
            unchanged.
        **layer_kwargs: passed to every masked layer (`with_score`,
            `with_scale`, `state_names`, `mask_function`).

    Returns:
        The pruned model (a new one unless `inplace`).

    Example:

    >>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    >>> pruned = tfsparse.prune(model)
    >>> type(pruned.layers[0]).__name__
    'MaskedDense'
    """
    _check_model(model, "model")
    already = [layer.name for layer in all_layers(model) if masked_layers.is_masked(layer)]
    if already:
        raise ValueError(
            "`model` is already pruned: its layers "
            f"{already} are masked. Call tfsparse.strip(model) first to get a "
            "plain model, or keep training the pruned one."
        )
    _check_layer_kwargs(layer_kwargs)
    plan = _plan(model, layers, exclude)
    unsupported = [row for row in plan["rows"] if row["reason"] and row["reason"].startswith("unsupported")]
    if strict and unsupported:
        raise ValueError(
            "strict=True and tfsparse cannot prune these weight matrices: "
            + "; ".join(f"{row['weight']} {row['shape']} ({row['reason']})" for row in unsupported)
            + ". Exclude their layers (`exclude=[...]`), declare their prunable weights "
            "with get_prunable_weights(), or pass strict=False to leave them dense."
        )
    target = model if inplace else _copy(model, keep_compile=True)
    target_layers = all_layers(target)
    for index in plan["selected"]:
        masked_layers.mask_layer(target_layers[index], **layer_kwargs)
    if not inplace:  # in place, the model's first call checks it
        _check_custom_layers_read_their_weights(target, [target_layers[i] for i in plan["selected"]])
    _carry_nested_masks(target)
    target._tfsparse_coverage = plan["rows"]
    _warn_left_dense(plan["rows"])
    return target


def _check_custom_layers_read_their_weights(model, masked):
    """Runs the model once on a zero batch when masked layers of classes
    other than Keras's own are present: their first call checks that call()
    reads every masked weight (else the mask would apply in name only).
    Subclassed models without `inputs` check at their first call instead."""
    custom = [l for l in masked if masked_layers.plain_base(type(l)) not in masked_layers.PRUNABLE_ATTRIBUTES]
    if not custom or not getattr(model, "inputs", None):
        return
    zeros = keras.tree.map_structure(
        lambda t: np.zeros([1 if d is None else d for d in t.shape], dtype=t.dtype), model._inputs_struct)
    model(zeros, training=False)


def _carry_nested_masks(model):
    """Lets the model save masks that its layers' configs do not describe
    (see `tfsparse.masked_tree`)."""
    if type(model) not in (keras.Sequential, _functional_class()):
        if masked_tree.needs_carrier(model):
            masked_tree.carry_masks(model)
        return
    for layer in model.layers:
        if type(layer) in (keras.Sequential, _functional_class()):
            _carry_nested_masks(layer)
        elif masked_tree.needs_carrier(layer):
            masked_tree.carry_masks(layer)


def strip(model):
    """Returns a plain Keras model with the masks baked into the kernels.

    The architecture is the original one (Dense stays Dense, an LSTM keeps
    its plain cell), the kernels are the effective inference kernels
    `scale * kernel * mask`, so the outputs equal the masked model's in
    inference. This is the model to save, ship and convert. It is not
    compiled: compile it to evaluate or fine-tune (fine-tuning a stripped
    model lets the zeros grow back; keep training the masked model instead,
    see docs/real-models.md). A model without masked layers is returned as a copy.
    """
    _check_model(model, "model")
    folded = {}  # id(variable) -> value in the plain model, or None to drop it
    for layer in all_layers(model):
        if masked_layers.is_masked(layer):
            for variable in layer.masking_variables + _lora_variables(layer):
                folded[id(variable)] = None
            for weight in layer.masked_weights:
                folded[id(weight.kernel)] = weight.effective_value()
    values = []
    for variable in model.weights:
        value = folded.get(id(variable), variable)
        if value is not None:
            values.append(keras.ops.convert_to_numpy(value))
    plain = _copy(model, plain=True, weights=values)
    return plain


def masked_weights(model):
    """All `MaskedWeight` handles of a model, in layer order, each once.

    Names are `<layer name>/<attr>`; where two nested layers share a name
    (the `query` of two attention blocks) their full paths are used.
    """
    handles = []
    for layer in all_layers(model):
        if masked_layers.is_masked(layer):
            handles.extend(layer.masked_weights)
    counts = collections.Counter(handle.name for handle in handles)
    for handle in handles:
        if counts[handle.name] > 1:
            handle.name = f"{handle.layer.path}/{handle.attr}"
    return handles


def coverage(model):
    """One row per weight matrix (rank >= 2) of `model`: weight, layer,
    class, shape, params, masked (bool) and, when not masked, the reason.

    For a model returned by `prune` the reasons are the ones `prune` found
    (frozen, excluded, not selected, unsupported); otherwise they are
    recomputed as if the model were pruned with default arguments.
    """
    recorded = getattr(model, "_tfsparse_coverage", None)
    if recorded is not None and is_pruned(model):
        return [dict(row) for row in recorded]
    return _plan(model, None, None)["rows"]


def _check_model(model, argument):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a keras.Model. Received: "
            f"{argument}={model!r} of type {type(model).__name__}"
        )
    if not model.built:
        raise ValueError(
            f"`{argument}` is not built yet. Give it an input shape "
            "(keras.Input(...) as first layer, call model.build(shape), or call "
            "the model on a batch) before pruning."
        )


def _check_layer_kwargs(layer_kwargs):
    if "quantizer" in layer_kwargs:
        raise TypeError(
            "`quantizer` is not a pruning argument: prune first, then make the pruned model "
            "quantization-aware with tfsparse.quantize_aware(model). Received: "
            f"quantizer={layer_kwargs['quantizer']!r}"
        )
    unknown = sorted(set(layer_kwargs) - set(masked_layers.MASKING_CONFIG_KEYS))
    if unknown:
        raise TypeError(
            f"Unknown masking arguments {unknown}. Allowed: "
            f"{list(masked_layers.MASKING_CONFIG_KEYS)}. Received: {layer_kwargs!r}"
        )
    function = layer_kwargs.get("mask_function")
    if function is not None and not isinstance(function, masked_layers.MaskFunction):
        raise TypeError(
            "`mask_function` must be a tfsparse.mask_functions.MaskFunction "
            f"or None. Received: mask_function={function!r}"
        )


def all_layers(model):
    """Every layer in the model's tree (sublayers of layers included, nested
    models walked into but not listed), in a fixed order, each once."""
    return [
        layer for layer in model._flatten_layers(include_self=False, recursive=True)
        if not isinstance(layer, keras.Model)
    ]


def is_pruned(model):
    """True when any layer of the model's tree is masked (a model from
    `prune`, before `strip`)."""
    return any(masked_layers.is_masked(layer) for layer in all_layers(model))


def _ancestors(model):
    """id(layer) -> the layers that contain it (outermost first)."""
    chains = {}

    def visit(layer, chain):
        for sub in layer._layers:
            if id(sub) not in chains:
                chains[id(sub)] = chain
                visit(sub, chain + [sub])

    visit(model, [])
    return chains


def _matches(layer, selectors):
    for selector in selectors:
        if isinstance(selector, str):
            if fnmatch.fnmatchcase(layer.name, selector):
                return True
        elif isinstance(selector, type):
            if isinstance(layer, selector):
                return True
        elif callable(selector):
            if selector(layer):
                return True
        else:
            raise TypeError(
                "Layer selectors must be name patterns (str), layer classes "
                f"or callables. Received: {selector!r}"
            )
    return False


def _as_list(selection):
    if selection is None:
        return []
    if isinstance(selection, (list, tuple, set)):
        return list(selection)
    return [selection]


def _weight_matrices(layer):
    """The layer's own variables of rank >= 2 (not its sublayers', not
    biases: EinsumDense's are 2-D), masking variables left out."""
    inner = {id(v) for sub in layer._layers for v in sub.variables}
    if masked_layers.is_masked(layer):
        inner.update(id(v) for v in layer.masking_variables)
    return [
        v for v in layer.variables
        if len(v.shape) >= 2 and id(v) not in inner and "bias" not in v.name
    ]


def _has_own_variables(layer):
    inner = {id(v) for sub in layer._layers for v in sub.variables}
    return any(id(v) not in inner for v in layer.variables)


def _plan(model, layers, exclude):
    """Which layers to mask (indices into `all_layers`) and one coverage
    row per weight matrix; raises when the selection is unusable."""
    include, excluded = _as_list(layers), _as_list(exclude)
    chains = _ancestors(model)
    tree = all_layers(model)
    selected, rows, prunable_seen = [], [], []
    matched_by_include = set()
    for index, layer in enumerate(tree):
        chain = [l for l in chains.get(id(layer), []) if not isinstance(l, keras.Model)] + [layer]
        attrs = masked_layers.prunable_attributes(layer)
        in_include = not include or any(_matches(l, include) for l in chain)
        if include and _matches(layer, include):
            matched_by_include.add(id(layer))
        if attrs:
            prunable_seen.append(layer)
            if not in_include:
                reason = NOT_SELECTED
            elif any(_matches(l, excluded) for l in chain):
                reason = EXCLUDED
            elif not layer.trainable and not include:
                reason = FROZEN
            else:
                reason = None
                selected.append(index)
        prunable_variables = {id(_raw_variable(layer, a)) for a in attrs}
        user_excluded = any(_matches(l, excluded) for l in chain)
        for variable in _weight_matrices(layer):
            if id(variable) in prunable_variables:
                row_reason = reason
            elif user_excluded:
                row_reason = EXCLUDED
            elif attrs:
                row_reason = f"unsupported: not a prunable weight of {type(layer).__name__}"
            else:
                row_reason = f"unsupported layer class {type(layer).__name__}"
            rows.append({
                "weight": variable.path, "layer": layer.name, "class": type(layer).__name__,
                "shape": tuple(int(d) for d in variable.shape),
                "params": int(keras.ops.size(variable)), "masked": row_reason is None,
                "reason": row_reason,
            })
    _check_selection(model, layers, exclude, include, tree, matched_by_include, prunable_seen, selected)
    return {"selected": selected, "rows": rows}


def _raw_variable(layer, attr):
    slot = "_" + attr if ("_" + attr) in layer.__dict__ else attr
    return layer.__dict__.get(slot)


def _check_selection(model, layers, exclude, include, tree, matched, prunable, selected):
    if include:
        unusable = [
            f"{layer.name} ({type(layer).__name__})"
            for layer in tree
            if id(layer) in matched and _has_own_variables(layer)
            and not masked_layers.prunable_attributes(layer)
        ]
        if unusable:
            raise ValueError(
                f"`layers` selects layers that tfsparse cannot prune: {unusable}. "
                "Prunable: Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, "
                "Embedding, SimpleRNN/GRU/LSTM cells, their subclasses, and custom "
                f"layers with get_prunable_weights(). Received: layers={layers!r}"
            )
    if not selected:
        if not prunable:
            raise ValueError(
                f"`model` ({model.name}) has no layer that tfsparse can prune. "
                "Prunable: Dense, EinsumDense, Conv*, DepthwiseConv*, SeparableConv*, "
                "Embedding, SimpleRNN/GRU/LSTM cells (anywhere in the model), their "
                "subclasses, and custom layers with get_prunable_weights(); the model "
                f"has {sorted({type(l).__name__ for l in tree})}."
            )
        raise ValueError(
            "The layer selection matches no prunable layer that is trainable. "
            f"Received: layers={layers!r}, exclude={exclude!r}. "
            f"Prunable layers in the model: {[layer.name for layer in prunable]}"
            + ("; frozen layers (trainable=False) are pruned only when `layers` selects them"
               if any(not layer.trainable for layer in prunable) else "")
        )


def _warn_left_dense(rows):
    unchosen = [row for row in rows if not row["masked"] and row["reason"] not in (EXCLUDED, NOT_SELECTED)]
    if not unchosen:
        return
    total = sum(row["params"] for row in rows)
    dense = sum(row["params"] for row in unchosen)
    listing = "; ".join(f"{row['weight']} {row['shape']}: {row['reason']}" for row in unchosen[:20])
    more = f"; and {len(unchosen) - 20} more" if len(unchosen) > 20 else ""
    warnings.warn(
        f"tfsparse.prune left {len(unchosen)} weight matrices dense ({dense:,} of "
        f"{total:,} weight-matrix parameters, {dense / total:.1%}): {listing}{more}. "
        "tfsparse.summary(model) lists them; strict=True raises instead.",
        PruningCoverageWarning,
        stacklevel=3,
    )


def _lora_variables(layer):
    if not getattr(layer, "lora_enabled", False):
        return []
    return [layer.lora_kernel_a, layer.lora_kernel_b]


def _classes_in(model):
    """Class name -> class for every layer and operation in the model's
    tree, so that deserialization finds unregistered user classes: their
    plain classes (a carrier of nested masks shares its class's name)."""
    classes = {}
    for layer in [model, *model._flatten_layers(include_self=False, recursive=True),
                  *getattr(model, "operations", [])]:
        plain = masked_layers.base_class(layer)
        classes.setdefault(plain.__name__, plain)
    return classes


def _copy(model, plain=False, weights=None, keep_compile=False):
    """A new model from `model`'s config and its weights (or `weights`).

    Sequential and functional models are cloned layer by layer
    (`keras.models.clone_model`, which also clones operation nodes; Keras's
    whole-model deserialization fails on MobileNetV3's `x + 3.0`); other
    models (subclassed, KerasHub's functional subclasses) go through
    `serialize_keras_object` and back.

    `plain`: masked classes become their bases. `keep_compile`: compile the
    copy as the model was, when its compile config can be rebuilt (a user's
    unregistered learning-rate schedule cannot): else it is left uncompiled,
    with a warning.
    """
    compile_config = _compile_config(model) if keep_compile else None
    try:
        with keras.saving.custom_object_scope(_classes_in(model)), warnings.catch_warnings():
            # Keras warns about custom layers without build() (the keras.io
            # transformer block); they were built the same way before.
            warnings.filterwarnings("ignore", message="`build\\(\\)` was called on layer")
            if type(model) in (keras.Sequential, _functional_class()):
                clone = _plain_clone_function(_masked_classes_in(model)) if plain else _clone
                with _compile_hidden(model):  # clone_model would rebuild the optimizer
                    copy = keras.models.clone_model(model, clone_function=clone, recursive=True)
            else:
                config = keras.saving.serialize_keras_object(model)
                config.pop("compile_config", None)
                if plain:
                    config = _plain_config(config, _masked_classes_in(model))
                copy = _deserialize(config, type(model))
    except Exception as error:  # any failure of a user's get_config / from_config
        raise ValueError(
            f"tfsparse could not rebuild '{model.name}' ({type(model).__name__}) from its "
            f"config: {type(error).__name__}: {_first_line(error)}. Give the model (and its "
            "custom layers) a get_config() that from_config() accepts, or, to prune, pass "
            "inplace=True to mask the model itself."
        ) from error
    if not copy.built:
        raise ValueError(
            f"tfsparse rebuilt '{model.name}' from its config but could not build it "
            "(no build config). Call the model on a batch before pruning, or pass inplace=True."
        )
    old_layers, new_layers = all_layers(model), all_layers(copy)
    if [_base_name(l) for l in old_layers] != [_base_name(l) for l in new_layers]:
        raise ValueError(
            f"Rebuilding '{model.name}' from its config gave a different layer tree. "
            "Pass inplace=True to mask the model itself."
        )
    for old, new in zip(old_layers, new_layers):
        if new.name != old.name:  # subclassed models name their sublayers anew
            new.name = old.name
    values = model.get_weights() if weights is None else weights
    if len(values) != len(copy.weights):
        raise ValueError(
            f"Rebuilding '{model.name}' from its config gave {len(copy.weights)} variables "
            f"where {len(values)} were expected."
        )
    copy.set_weights(values)
    if keep_compile and compile_config:
        try:
            with keras.saving.custom_object_scope(_classes_in(model)):
                copy.compile_from_config(compile_config)
        except Exception as error:  # the user's optimizer or schedule
            warnings.warn(
                f"The copy of '{model.name}' could not be compiled like the model "
                f"({type(error).__name__}: {_first_line(error)}); compile it again before fit.",
                stacklevel=3,
            )
    return copy


@contextlib.contextmanager
def _compile_hidden(model):
    compiled = model.compiled
    model.compiled = False
    try:
        yield
    finally:
        model.compiled = compiled


def _compile_config(model):
    if not model.compiled:
        return None
    try:
        return model.get_compile_config()
    except Exception as error:  # an optimizer or schedule without get_config
        warnings.warn(
            f"The copy of '{model.name}' is not compiled: its compile config cannot be "
            f"serialized ({type(error).__name__}: {_first_line(error)}); compile it again before fit.",
            stacklevel=4,
        )
        return None


def _first_line(error):
    return (str(error).strip().splitlines() or [""])[0][:200]


def _functional_class():
    from keras.src.models.functional import Functional

    return Functional


def _clone(layer):
    return _from_config(layer.__class__, layer.get_config())


def _from_config(cls, config):
    """`cls.from_config(config)`, retried for a class whose `__init__` takes
    no `name`/`trainable`/`dtype` (Keras's automatic config passes them; the
    keras.io TokenAndPositionEmbedding is one): then with only the arguments
    `__init__` accepts, and the name set afterwards."""
    try:
        return cls.from_config(config)
    except TypeError:
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise
        instance = cls.from_config({k: v for k, v in config.items() if k in parameters})
        if "name" in config:
            instance.name = config["name"]
        return instance


def _plain_clone_function(masked):
    """A clone function for `clone_model` that gives plain layers: masked
    classes become their bases, carriers their own class, and wrappers
    (TimeDistributed, Bidirectional) whose config holds a masked layer get
    it plain too."""

    def clone(layer):
        tree = layer._flatten_layers(include_self=True) if hasattr(layer, "_flatten_layers") else [layer]
        if not any(masked_layers.is_masked(l) or isinstance(l, masked_tree.MaskedTree) for l in tree):
            return _clone(layer)
        config = _plain_config(keras.saving.serialize_keras_object(layer), masked)
        return _from_config(masked_layers.base_class(layer), config["config"])

    return clone


def _deserialize(config, cls):
    """`deserialize_keras_object`, retried for a subclassed model whose
    `__init__` takes no `name`/`trainable`/`dtype` (Keras's automatic config
    passes them): then with only the arguments `__init__` accepts."""
    try:
        return keras.saving.deserialize_keras_object(config)
    except TypeError:
        parameters = inspect.signature(cls.__init__).parameters
        if any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            raise
        config = dict(config, config={k: v for k, v in config["config"].items() if k in parameters})
        return keras.saving.deserialize_keras_object(config)


def _base_name(layer):
    return masked_layers.base_class(layer).__name__


def _masked_classes_in(model):
    return {
        type(layer).__name__: type(layer)
        for layer in all_layers(model)
        if masked_layers.is_masked(layer)
    }


def _plain_config(config, masked):
    """The serialized config with every masked layer's entry turned into
    its Keras base class's entry (masking arguments and LoRA dropped: LoRA
    is folded into the stripped kernel)."""
    if isinstance(config, list):
        return [_plain_config(item, masked) for item in config]
    if not isinstance(config, dict):
        return config
    if config.get("registered_name") == masked_tree.REGISTERED_NAME:
        return _plain_config(config["config"]["layer"], masked)
    config = {key: _plain_config(value, masked) for key, value in config.items()}
    cls = masked.get(config.get("class_name"))
    if cls is not None and isinstance(config.get("config"), dict):
        base = masked_layers.plain_base(cls)
        inner = {
            key: value for key, value in config["config"].items()
            if key not in masked_layers.MASKING_CONFIG_KEYS and key not in ("lora_rank", "lora_alpha")
        }
        config.update(
            module=base.__module__, class_name=base.__name__, config=inner,
            registered_name=keras.saving.get_registered_name(base),
        )
    return config
