"""Saving masks that sit inside other layers.

A masked Dense at the top of a functional model saves as
`tfsparse>MaskedDense` and loads by that name. A mask inside another layer
(an LSTM's cell, MultiHeadAttention's projections, a KerasHub transformer
block, a subclassed model's sublayer) would be lost: the outer layer's
config does not describe its sublayers, so loading builds them plain and
the weights file no longer fits.

`carry_masks(layer)` therefore gives such an outer layer (or the whole
subclassed model) a subclass whose config is the outer layer's own
serialized config plus the masking options of each masked layer in its tree,
registered for serialization as `tfsparse>MaskedTree`. Loading deserializes
the outer layer as it was, masks the same sublayers again, and the weights
file then fits: `keras.saving.load_model` needs no custom_objects beyond
those the plain model needs.
"""

import keras
from keras.src.saving import object_registration

from tfsparse import layers as masked_layers

REGISTERED_NAME = "tfsparse>MaskedTree"
_CARRIERS = {}


@keras.saving.register_keras_serializable(package="tfsparse", name="MaskedTree")
class MaskedTree:
    """Mixin of the outer layers that carry nested masks (see module doc)."""

    _tfsparse_wrapper = True

    def get_config(self):
        masks = []
        for index, layer in enumerate(self._flatten_layers(include_self=True)):
            if masked_layers.is_masked(layer):
                masks.append({"index": index, "attrs": list(layer.masked_attrs),
                              "options": layer.masking_config()})
        names = [layer.name for layer in self._flatten_layers(include_self=False)]
        return {"layer": self.original_config(), "masks": masks, "names": names}

    def original_config(self):
        """The serialized config of this layer as its own (unmasked) class."""
        carrier = type(self)
        self.__class__ = masked_layers.base_class(self)
        try:
            return keras.saving.serialize_keras_object(self)
        finally:
            self.__class__ = carrier

    @classmethod
    def from_config(cls, config):
        layer = carry_masks(keras.saving.deserialize_keras_object(config["layer"]))
        layer._pending_masks = list(config["masks"])
        layer._saved_names = list(config.get("names", ()))
        if all(sub.built for sub in layer._flatten_layers(include_self=True)):
            layer._apply_pending_masks()
        return layer

    def __call__(self, *args, **kwargs):
        # A custom layer without build() builds its sublayers in its first
        # call (Functional.from_config makes it right after from_config).
        outputs = super().__call__(*args, **kwargs)
        if getattr(self, "_pending_masks", None):
            self._apply_pending_masks()
        return outputs

    def _apply_pending_masks(self):
        tree = self._flatten_layers(include_self=True)
        for entry in self._pending_masks:
            target = tree[entry["index"]] if entry["index"] < len(tree) else None
            if target is None or list(masked_layers.prunable_attributes(target)) != entry["attrs"]:
                raise ValueError(
                    f"The saved masks of '{self.name}' do not fit the rebuilt layer: its "
                    f"sublayer number {entry['index']} was masked on {entry['attrs']} when saved, "
                    f"and is {target!r} now. Was the file written by another version of this "
                    "model's code?"
                )
            if not masked_layers.is_masked(target):
                masked_layers.mask_layer(target, **entry["options"])
        # Sublayers built by __init__ are numbered anew on loading (dense_6
        # for dense_1); the saved names keep reports and overrides stable.
        inner = tree[1:]
        if len(inner) == len(self._saved_names):
            for sublayer, name in zip(inner, self._saved_names):
                sublayer.name = name
        self._pending_masks = None


def carry_masks(layer):
    """Makes `layer` save the masks of its tree (in place); returns it."""
    if isinstance(layer, MaskedTree):
        return layer
    base = type(layer)
    if base not in _CARRIERS:
        carrier = type(base.__name__, (MaskedTree, base), {"__module__": base.__module__})
        # Saved under the loader's name; no public API registers a name alone.
        object_registration.GLOBAL_CUSTOM_NAMES[carrier] = REGISTERED_NAME
        _CARRIERS[base] = carrier
    layer.__class__ = _CARRIERS[base]
    return layer


def needs_carrier(layer):
    """Whether saving `layer` by its own class would lose masks."""
    if masked_layers.is_masked(layer) and type(layer) in masked_layers.MASKED_CLASSES.values():
        inner = layer._flatten_layers(include_self=False)
    else:
        inner = layer._flatten_layers(include_self=True)
    return any(masked_layers.is_masked(sub) for sub in inner)
