"""Model surgery: `prune` puts masked layers in, `strip` takes them out.

Both return new models (the input model is never changed) built with
`keras.models.clone_model`, which keeps shared layers shared and, with
`recursive=True`, walks into nested models. Weights are copied by variable
name after cloning.
"""

import fnmatch

import keras

from tfsparse import layers as masked_layers


def prune(model, layers=None, exclude=None, **layer_kwargs):
    """Returns a copy of `model` whose prunable layers are masked.

    The masks start at all ones, so the new model computes exactly what the
    old one did. Train it with a method from `tfsparse.methods`.

    Args:
        model: a built Sequential or functional Keras model (nested models
            are pruned too).
        layers: which layers to prune. `None` (all supported layers), or one
            or a list of: a layer name pattern (`fnmatch`, e.g. `"dense*"`),
            a layer class, or a callable `layer -> bool`.
        exclude: layers to leave dense, same forms as `layers`.
        **layer_kwargs: passed to every masked layer (`with_score`,
            `with_scale`, `state_names`, `mask_function`).

    Returns:
        A new Keras model with masked layers.

    Example:

    >>> model = keras.Sequential([keras.Input((784,)), keras.layers.Dense(10)])
    >>> pruned = tfsparse.prune(model)
    >>> type(pruned.layers[0]).__name__
    'MaskedDense'
    """
    _check_model(model, "model")
    already = [layer.name for layer in _all_layers(model) if masked_layers.is_masked(layer)]
    if already:
        raise ValueError(
            "`model` is already pruned: its layers "
            f"{already} are masked. Call tfsparse.strip(model) first to get a "
            "plain model, or keep training the pruned one."
        )
    selected = _select_layers(model, layers, exclude)

    def to_masked(layer):
        if id(layer) in selected:
            masked_class = masked_layers.MASKED_CLASSES[type(layer)]
            return masked_class(**layer.get_config(), **layer_kwargs)
        return _default_clone(layer)

    return _clone_and_copy(model, to_masked, _copy_into_masked)


def strip(model):
    """Returns a plain Keras model with the masks baked into the kernels.

    The architecture is the original one (Dense stays Dense), the kernels are
    the effective inference kernels `scale * kernel * mask`, so the outputs
    equal the masked model's in inference. This is the model to save, ship
    and convert. A model without masked layers is returned as a copy.
    """
    _check_model(model, "model")

    def to_plain(layer):
        if masked_layers.is_masked(layer):
            base = masked_layers.base_class(layer)
            return base.from_config(masked_layers.base_config(layer))
        return _default_clone(layer)

    return _clone_and_copy(model, to_plain, _copy_from_masked)


def masked_weights(model):
    """All `MaskedWeight` handles of a model, in layer order, each once."""
    handles = []
    for layer in _all_layers(model):
        if masked_layers.is_masked(layer):
            handles.extend(layer.masked_weights)
    return handles


def _check_model(model, argument):
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`{argument}` must be a keras.Model. Received: "
            f"{argument}={model!r} of type {type(model).__name__}"
        )
    if not isinstance(model, (keras.Sequential,)) and not _is_functional(model):
        raise TypeError(
            f"`{argument}` is a subclassed model ({type(model).__name__}); "
            "tfsparse can only rewrite Sequential and functional models, whose "
            "layer graph is known. Either build the subclassed model with "
            "masked layers directly (e.g. tfsparse.layers.MaskedDense instead "
            "of keras.layers.Dense), or express it as a functional model."
        )
    if not model.built:
        raise ValueError(
            f"`{argument}` is not built yet. Give it an input shape "
            "(keras.Input(...) as first layer, or call model.build(shape)) "
            "before pruning."
        )


def _is_functional(model):
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def _all_layers(model):
    """Layers of the model and its nested models, depth first, each once."""
    seen, ordered = set(), []

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
        else:
            ordered.append(layer)

    for layer in model.layers:
        visit(layer)
    return ordered


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


def _select_layers(model, layers, exclude):
    """Ids of the layers to mask; raises when the selection is unusable."""
    candidates = _all_layers(model)
    supported = [layer for layer in candidates if type(layer) in masked_layers.MASKED_CLASSES]
    include = _as_list(layers)
    excluded = _as_list(exclude)
    if include:
        chosen = [layer for layer in candidates if _matches(layer, include)]
        unsupported = [
            f"{layer.name} ({type(layer).__name__})"
            for layer in chosen
            if type(layer) not in masked_layers.MASKED_CLASSES
            and layer.weights  # weightless layers matched by a broad pattern are fine
        ]
        if unsupported:
            raise ValueError(
                f"`layers` selects layers that tfsparse cannot prune: {unsupported}. "
                "Supported layer classes: "
                f"{sorted(cls.__name__ for cls in masked_layers.MASKED_CLASSES)}. "
                f"Received: layers={layers!r}"
            )
        chosen = [layer for layer in chosen if type(layer) in masked_layers.MASKED_CLASSES]
    else:
        chosen = supported
    chosen = [layer for layer in chosen if not _matches(layer, excluded)]
    if not chosen:
        if not supported:
            raise ValueError(
                f"`model` ({model.name}) has no layer that tfsparse can prune. "
                "Supported layer classes: "
                f"{sorted(cls.__name__ for cls in masked_layers.MASKED_CLASSES)}; "
                f"the model has {sorted({type(l).__name__ for l in candidates})}."
            )
        raise ValueError(
            "The layer selection matches no prunable layer. "
            f"Received: layers={layers!r}, exclude={exclude!r}. "
            f"Prunable layers in the model: {[layer.name for layer in supported]}"
        )
    return {id(layer) for layer in chosen}


def _default_clone(layer):
    if isinstance(layer, keras.Model):
        # clone_model(recursive=True) clones nested Sequential and functional
        # models itself; only a nested subclassed model ends up here.
        _check_model(layer, "model (nested)")
    return layer.__class__.from_config(layer.get_config())


def _clone_and_copy(model, clone_layer, copy_masked):
    pairs = []

    def clone_function(layer):
        new_layer = clone_layer(layer)
        pairs.append((layer, new_layer))
        return new_layer

    new_model = keras.models.clone_model(
        model, clone_function=clone_function, recursive=True
    )
    for old_layer, new_layer in pairs:
        if masked_layers.is_masked(old_layer) or masked_layers.is_masked(new_layer):
            copy_masked(old_layer, new_layer)
        else:
            new_layer.set_weights(old_layer.get_weights())
    return new_model


def _copy_into_masked(plain, masked):
    """plain Keras layer -> masked layer: copy its variables by name."""
    by_name = {variable.name: variable for variable in masked.weights}
    for variable in plain.weights:
        by_name[variable.name].assign(variable)


def _copy_from_masked(masked, plain):
    """masked layer -> plain layer: kernels become the effective kernels."""
    by_name = {variable.name: variable for variable in masked.weights}
    for variable in plain.weights:
        if variable.name in masked.masked_attrs:
            variable.assign(keras.ops.convert_to_numpy(masked.effective_kernel(variable.name, training=False)))
        else:
            variable.assign(by_name[variable.name])
