"""Masked versions of the Keras layers that carry prunable kernels.

Every masked layer is the Keras layer itself plus, for each of its prunable
kernels, extra variables that live next to the dense kernel:

- `mask` (non-trainable, 0/1, same shape as the kernel),
- `score` (optional, trainable, same shape): importance scores for the
  score-based methods (OptG, ASLP, supermask, edge-popup),
- `scale` (optional, trainable scalar): a learned per-layer rescale (ASLP),
- named `state` variables (optional, non-trainable, same shape), e.g. the
  activity counters of DST-EE.

The kernel itself is never overwritten by the mask. The forward pass computes
the *effective* kernel `scale * kernel * mask` and hands it to the unchanged
Keras `call`, the way Keras itself hands over `kernel + lora` for LoRA: the
public attribute (`kernel`, `embeddings`, `depthwise_kernel`, ...) becomes a
property that returns the effective kernel. Which mask is applied in training
is the business of an optional `mask_function` (see
`tfsparse.mask_functions`); without one the `mask` variable is used.
"""

import inspect

import keras
from keras import ops

from tfsparse.mask_functions import MaskFunction

_MASKING_CONFIG_KEYS = ("with_score", "with_scale", "state_names", "mask_function")


class MaskedWeight:
    """Handle on one prunable kernel of a masked layer and its variables.

    Methods work on these handles instead of on layers, so that a layer with
    two kernels (SeparableConv) is simply two handles.

    Attributes:
        layer: the masked layer.
        attr: the public attribute name of the kernel (`"kernel"`,
            `"embeddings"`, `"depthwise_kernel"`, `"pointwise_kernel"`).
        name: `"<layer name>/<attr>"`, unique within a model.
    """

    def __init__(self, layer, attr):
        self.layer = layer
        self.attr = attr
        self.name = f"{layer.name}/{attr}"
        self._prefix = _variable_prefix(attr)

    @property
    def kernel(self):
        """The raw (dense, unmasked) kernel variable."""
        return getattr(self.layer, _raw_name(self.attr))

    @property
    def mask(self):
        return getattr(self.layer, self._prefix + "mask")

    @property
    def score(self):
        return getattr(self.layer, self._prefix + "score", None)

    @property
    def scale(self):
        return getattr(self.layer, self._prefix + "scale", None)

    def state(self, name):
        """A method-owned state variable declared with `state_names`."""
        return getattr(self.layer, self._prefix + name)

    @property
    def shape(self):
        return tuple(self.kernel.shape)

    @property
    def size(self):
        size = 1
        for dim in self.shape:
            size *= int(dim)
        return size

    def effective_value(self):
        """The kernel used in inference (scale * kernel * mask), as numpy."""
        return keras.ops.convert_to_numpy(
            self.layer.effective_kernel(self.attr, training=False)
        )

    def __repr__(self):
        return f"<MaskedWeight {self.name} shape={self.shape}>"


def _variable_prefix(attr):
    """`kernel` -> `""`, `depthwise_kernel` -> `"depthwise_"`."""
    if attr in ("kernel", "embeddings"):
        return ""
    return attr[: -len("kernel")]


def _raw_name(attr):
    return "_" + attr


class _EffectiveKernel:
    """Data descriptor that replaces a layer's kernel attribute.

    Reading returns the effective (masked) kernel; assigning (as the parent's
    `build` does with `self.kernel = self.add_weight(...)`) stores the raw
    variable under `_<attr>`.
    """

    def __init__(self, attr):
        self.attr = attr

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        if not layer.built:
            raise AttributeError(
                f"You must build the layer before accessing `{self.attr}`."
            )
        cached = layer.__dict__.get("_effective_kernels")
        if cached is not None and self.attr in cached:
            return cached[self.attr]
        return layer.effective_kernel(self.attr, training=False)

    def __set__(self, layer, value):
        object.__setattr__(layer, _raw_name(self.attr), value)


class MaskedLayerMixin:
    """Adds masks (and optional scores, scales, state) to a Keras layer.

    Subclasses list their prunable kernel attributes in `masked_attrs` and
    put this mixin first in their bases, before the Keras layer.

    Args:
        with_score: add a trainable `score` variable per kernel (zeros).
        with_scale: add a trainable scalar `scale` per kernel (ones).
        state_names: names of extra non-trainable per-weight float32
            variables (zeros) that a method keeps as state, e.g. counters.
        mask_function: a `tfsparse.mask_functions.MaskFunction` that computes
            the mask used in the forward pass; `None` uses the `mask`
            variable as it is.
    """

    masked_attrs = ("kernel",)

    def __init__(
        self,
        *args,
        with_score=False,
        with_scale=False,
        state_names=(),
        mask_function=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.with_score = bool(with_score)
        self.with_scale = bool(with_scale)
        self.state_names = tuple(state_names)
        if isinstance(mask_function, dict):
            mask_function = keras.saving.deserialize_keras_object(mask_function)
        if mask_function is not None and not isinstance(mask_function, MaskFunction):
            raise TypeError(
                "`mask_function` must be a tfsparse.mask_functions.MaskFunction "
                f"or None. Received: mask_function={mask_function!r}"
            )
        self.mask_function = mask_function
        self._gradient_probes = None

    def build(self, input_shape=None):
        super().build(input_shape)
        for attr in self.masked_attrs:
            prefix = _variable_prefix(attr)
            shape = getattr(self, _raw_name(attr)).shape
            self._add_masking_weight(prefix + "mask", shape, "ones", trainable=False)
            if self.with_score:
                self._add_masking_weight(prefix + "score", shape, "zeros", trainable=True)
            if self.with_scale:
                self._add_masking_weight(prefix + "scale", (), "ones", trainable=True)
            for name in self.state_names:
                self._add_masking_weight(prefix + name, shape, "zeros", trainable=False)
            if self.mask_function is not None:
                self.mask_function.build(self, MaskedWeight(self, attr))

    def add_masking_weight(self, weight, name, shape, initializer="zeros", trainable=False):
        """Adds a float32 variable `<prefix><name>` for `weight` (a
        `MaskedWeight` of this layer), reachable as `weight.state(name)`."""
        return self._add_masking_weight(weight._prefix + name, shape, initializer, trainable)

    def _add_masking_weight(self, name, shape, initializer, trainable):
        # autocast=False: under mixed_float16, masks, scores, scales and their
        # optimizer state are read and updated in float32.
        variable = self.add_weight(
            name=name,
            shape=shape,
            initializer=initializer,
            trainable=trainable,
            dtype="float32",
            autocast=False,
        )
        object.__setattr__(self, name, variable)
        return variable

    @property
    def masked_weights(self):
        """One `MaskedWeight` handle per prunable kernel of this layer."""
        return [MaskedWeight(self, attr) for attr in self.masked_attrs]

    def effective_kernel(self, attr, training=False):
        """Computes `scale * kernel * mask` (+ a gradient probe, if set)."""
        handle = MaskedWeight(self, attr)
        kernel = getattr(self, _raw_name(attr))
        if self.mask_function is None:
            mask = handle.mask
        else:
            mask = self.mask_function(handle, training=training)
        dtype = self.compute_dtype
        effective = ops.multiply(_cast(kernel, dtype), _cast(mask, dtype))
        if handle.scale is not None:
            scale = handle.scale if self.mask_function is None else self.mask_function.scale_tensor(handle)
            effective = ops.multiply(effective, _cast(scale, dtype))
        if self._gradient_probes is not None and attr in self._gradient_probes:
            effective = ops.add(effective, _cast(self._gradient_probes[attr], dtype))
        return effective

    def call(self, inputs, training=None, **kwargs):
        effective = {
            attr: self.effective_kernel(attr, training=bool(training))
            for attr in self.masked_attrs
        }
        object.__setattr__(self, "_effective_kernels", effective)
        try:
            if _accepts_training(super().call):
                kwargs["training"] = training
            return super().call(inputs, **kwargs)
        finally:
            object.__setattr__(self, "_effective_kernels", None)

    # Variables are saved by name, not by position: Keras' Dense/Conv/
    # Embedding serialize a fixed list (kernel, bias) and would drop masks.
    # The states of random generators (Gumbel and Bernoulli masks) are saved
    # too, so that a run resumed from a checkpoint draws the same samples as
    # the uninterrupted run.
    def _saved_variables(self):
        """Key in the file -> variable: the path below this layer, with "_"
        for "/" (a "/" would open a group in the weights file)."""
        prefix = self.path + "/"
        return {
            (variable.path[len(prefix):] if variable.path.startswith(prefix) else variable.name).replace("/", "_"): variable
            for variable in self.variables
        }

    def save_own_variables(self, store):
        for key, variable in self._saved_variables().items():
            store[key] = variable

    def load_own_variables(self, store):
        variables = self._saved_variables()
        expected, received = sorted(variables), sorted(store.keys())
        if expected != received:
            raise ValueError(
                f"Layer '{self.name}' expected the variables {expected} but the "
                f"file holds {received}. The file was not written by this "
                "version of the layer, or it is corrupted."
            )
        for key, variable in variables.items():
            variable.assign(store[key])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "with_score": self.with_score,
                "with_scale": self.with_scale,
                "state_names": list(self.state_names),
                "mask_function": (
                    None
                    if self.mask_function is None
                    else keras.saving.serialize_keras_object(self.mask_function)
                ),
            }
        )
        return config


def _cast(value, dtype):
    """Casts only when needed: on small models every extra op shows in step time."""
    return value if keras.backend.standardize_dtype(value.dtype) == dtype else ops.cast(value, dtype)


def _accepts_training(method):
    return "training" in inspect.signature(method).parameters


def _masked_class(base, masked_attrs=("kernel",)):
    """Creates and registers `Masked<Base>`."""
    namespace = {
        "masked_attrs": masked_attrs,
        "__doc__": (
            f"`keras.layers.{base.__name__}` with a mask on "
            f"{', '.join(masked_attrs)}. See `MaskedLayerMixin` for the extra "
            "arguments; all others are those of the Keras layer."
        ),
        "__module__": __name__,
    }
    for attr in masked_attrs:
        namespace[attr] = _EffectiveKernel(attr)
    cls = type(f"Masked{base.__name__}", (MaskedLayerMixin, base), namespace)
    return keras.saving.register_keras_serializable(package="tfsparse")(cls)


_layers = keras.layers
MaskedDense = _masked_class(_layers.Dense)
MaskedEinsumDense = _masked_class(_layers.EinsumDense)
MaskedConv1D = _masked_class(_layers.Conv1D)
MaskedConv2D = _masked_class(_layers.Conv2D)
MaskedConv3D = _masked_class(_layers.Conv3D)
MaskedConv1DTranspose = _masked_class(_layers.Conv1DTranspose)
MaskedConv2DTranspose = _masked_class(_layers.Conv2DTranspose)
MaskedConv3DTranspose = _masked_class(_layers.Conv3DTranspose)
MaskedDepthwiseConv1D = _masked_class(_layers.DepthwiseConv1D)
MaskedDepthwiseConv2D = _masked_class(_layers.DepthwiseConv2D)
MaskedSeparableConv1D = _masked_class(
    _layers.SeparableConv1D, ("depthwise_kernel", "pointwise_kernel")
)
MaskedSeparableConv2D = _masked_class(
    _layers.SeparableConv2D, ("depthwise_kernel", "pointwise_kernel")
)
MaskedEmbedding = _masked_class(_layers.Embedding, ("embeddings",))

#: Keras layer class -> its masked class. Exact classes only: a user subclass
#: of Dense may change `call`, so it is not pruned silently.
MASKED_CLASSES = {
    cls.__mro__[2]: cls
    for cls in (
        MaskedDense,
        MaskedEinsumDense,
        MaskedConv1D,
        MaskedConv2D,
        MaskedConv3D,
        MaskedConv1DTranspose,
        MaskedConv2DTranspose,
        MaskedConv3DTranspose,
        MaskedDepthwiseConv1D,
        MaskedDepthwiseConv2D,
        MaskedSeparableConv1D,
        MaskedSeparableConv2D,
        MaskedEmbedding,
    )
}


def is_masked(layer):
    return isinstance(layer, MaskedLayerMixin)


def base_class(masked_layer):
    """The Keras class a masked layer extends (MaskedDense -> Dense)."""
    return type(masked_layer).__mro__[2]


def base_config(masked_layer):
    """The masked layer's config without the masking arguments."""
    config = masked_layer.get_config()
    for key in _MASKING_CONFIG_KEYS:
        config.pop(key, None)
    return config
