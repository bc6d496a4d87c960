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
data descriptor that returns the effective kernel. Where the Keras class has
a property of its own (Dense's `kernel` adds LoRA), the mask multiplies what
that property returns, so LoRA composes with masking. Which mask is applied
in training is the business of an optional `mask_function` (see
`tfsparse.mask_functions`); without one the `mask` variable is used.
An optional `quantizer` (see `tfsparse.quantization`, set by
`tfsparse.quantize_aware`) fake-quantizes the effective kernel and the
layer's inputs and outputs for quantization-aware training; the zeros of the
mask stay exact zeros.

A layer is masked either by constructing a masked class (`MaskedDense(...)`)
or IN PLACE by `mask_layer(layer)`, which changes the class of a built layer
to its masked subclass and adds the variables. In place is what reaches
layers nested in other layers (the EinsumDense sublayers of
MultiHeadAttention, RNN cells, the Dense layers of a custom block, the
sublayers of a subclassed model): every reference to the layer stays valid.

Custom layers join by declaring their prunable weights, as in tfmot:

```python
class MyLayer(keras.layers.Layer):
    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 8))

    def call(self, x):
        return x @ self.w

    def get_prunable_weights(self):
        return [self.w]
```

A declared weight must be an attribute of the layer that `call` reads
(`self.w`); the first call of a masked layer checks that every masked
attribute was read, so masking never applies in name only.
"""

import contextlib
import inspect

import keras
from keras import ops

from tfsparse.fake_quant import FakeQuantInt8
from tfsparse.mask_functions import MaskFunction

MASKING_CONFIG_KEYS = ("with_score", "with_scale", "state_names", "mask_function", "quantizer")



class MaskedWeight:
    """Handle on one prunable kernel of a masked layer and its variables.

    Methods work on these handles instead of on layers, so that a layer with
    two kernels (SeparableConv, an LSTM cell) is simply two handles.

    Attributes:
        layer: the masked layer.
        attr: the public attribute name of the kernel (`"kernel"`,
            `"embeddings"`, `"depthwise_kernel"`, `"recurrent_kernel"`, ...).
        name: `"<layer name>/<attr>"`.
    """

    def __init__(self, layer, attr):
        self.layer = layer
        self.attr = attr
        self.name = f"{layer.name}/{attr}"
        self._prefix = _variable_prefix(attr)

    @property
    def kernel(self):
        """The raw (dense, unmasked) kernel variable."""
        return self.layer.__dict__[type(self.layer)._raw_slots[self.attr]]

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
    """`kernel` -> `""`, `depthwise_kernel` -> `"depthwise_"`, `w` -> `"w_"`."""
    if attr in ("kernel", "embeddings"):
        return ""
    if attr.endswith("kernel"):
        return attr[: -len("kernel")]
    return attr + "_"


class _EffectiveKernel:
    """Data descriptor that replaces a layer's kernel attribute.

    Reading returns the effective (masked) kernel; assigning (as the parent's
    `build` does with `self.kernel = self.add_weight(...)`) stores the raw
    variable in the instance dict under the layer class's raw slot. Being a
    data descriptor, it takes precedence over the instance dict, which is
    what lets `mask_layer` mask a layer whose class stores the kernel as a
    plain attribute.
    """

    def __init__(self, attr, slot, base_property):
        self.attr = attr
        self.slot = slot
        self.base_property = base_property

    def __get__(self, layer, owner=None):
        if layer is None:
            return self
        if not layer.built:
            raise AttributeError(
                f"You must build the layer before accessing `{self.attr}`."
            )
        cached = layer.__dict__.get("_effective_kernels")
        if cached is not None and self.attr in cached:
            layer.__dict__["_kernels_read"].add(self.attr)
            return cached[self.attr]
        return layer.effective_kernel(self.attr, training=False)

    def __set__(self, layer, value):
        layer.__dict__[self.slot] = value

    def unmasked_value(self, layer):
        """What the Keras class itself would return (e.g. kernel + LoRA)."""
        if self.base_property is not None:
            return self.base_property.fget(layer)
        return layer.__dict__[self.slot]


class MaskedLayerMixin:
    """Adds masks (and optional scores, scales, state) to a Keras layer.

    Subclasses list their prunable kernel attributes in `masked_attrs` and
    put this mixin first in their bases, before the Keras layer; use
    `masked_class(base)` to make one.

    Args:
        with_score: add a trainable `score` variable per kernel (zeros).
        with_scale: add a trainable scalar `scale` per kernel (ones).
        state_names: names of extra non-trainable per-weight float32
            variables (zeros) that a method keeps as state, e.g. counters.
        mask_function: a `tfsparse.mask_functions.MaskFunction` that computes
            the mask used in the forward pass; `None` uses the `mask`
            variable as it is.
        quantizer: a `tfsparse.fake_quant.FakeQuantInt8` for
            quantization-aware training (`tfsparse.quantize_aware` sets it),
            or None.
    """

    masked_attrs = ("kernel",)
    _raw_slots = {"kernel": "_kernel"}

    def __init__(
        self,
        *args,
        with_score=False,
        with_scale=False,
        state_names=(),
        mask_function=None,
        quantizer=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self._set_masking_options(with_score, with_scale, state_names, mask_function, quantizer)

    def _set_masking_options(self, with_score, with_scale, state_names, mask_function, quantizer=None):
        mask_function = _option(mask_function, MaskFunction, "mask_function", "tfsparse.mask_functions.MaskFunction")
        self.with_score = bool(with_score)
        self.with_scale = bool(with_scale)
        self.state_names = tuple(state_names)
        self.mask_function = mask_function
        self.quantizer = _option(quantizer, FakeQuantInt8, "quantizer", "tfsparse.fake_quant.FakeQuantInt8")
        self._gradient_probes = None
        self._checked_reads = False

    def build(self, input_shape=None):
        super().build(input_shape)
        self._build_masking_weights()

    def _build_masking_weights(self):
        for attr in self.masked_attrs:
            prefix = _variable_prefix(attr)
            shape = self.__dict__[self._raw_slots[attr]].shape
            self._add_masking_weight(prefix + "mask", shape, "ones", trainable=False)
            if self.with_score:
                self._add_masking_weight(prefix + "score", shape, "zeros", trainable=True)
            if self.with_scale:
                self._add_masking_weight(prefix + "scale", (), "ones", trainable=True)
            for name in self.state_names:
                self._add_masking_weight(prefix + name, shape, "zeros", trainable=False)
            if self.mask_function is not None:
                self.mask_function.build(self, MaskedWeight(self, attr))
        if self.quantizer is not None:
            self.quantizer.build(self)

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
        self.__dict__.setdefault("_masking_variables", []).append(variable)
        return variable

    @property
    def masked_weights(self):
        """One `MaskedWeight` handle per prunable kernel of this layer."""
        return [MaskedWeight(self, attr) for attr in self.masked_attrs]

    @property
    def masking_variables(self):
        """The variables masking added (masks, scores, scales, states)."""
        return list(self.__dict__.get("_masking_variables", ()))

    def effective_kernel(self, attr, training=False):
        """Computes `scale * kernel * mask` (+ a gradient probe, if set)."""
        handle = MaskedWeight(self, attr)
        kernel = _descriptor(type(self), attr).unmasked_value(self)
        if self.mask_function is None:
            mask = handle.mask
        else:
            mask = self.mask_function(handle, training=training)
        dtype = self.compute_dtype
        effective = ops.multiply(_cast(kernel, dtype), _cast(mask, dtype))
        if handle.scale is not None:
            scale = handle.scale if self.mask_function is None else self.mask_function.scale_tensor(handle)
            effective = ops.multiply(effective, _cast(scale, dtype))
        if self.quantizer is not None:
            effective = self.quantizer.fake_quant_kernel(self, attr, effective)
        if self._gradient_probes is not None and attr in self._gradient_probes:
            effective = ops.add(effective, _cast(self._gradient_probes[attr], dtype))
        return effective

    def _masked_call(self, *args, training=None, **kwargs):
        effective = {
            attr: self.effective_kernel(attr, training=bool(training))
            for attr in self.masked_attrs
        }
        self.__dict__["_effective_kernels"] = effective
        self.__dict__["_kernels_read"] = set()
        try:
            if _accepts_training(super().call):
                kwargs["training"] = training
            if self.quantizer is not None:
                args = (self.quantizer.fake_quant_inputs(self, args[0], training=bool(training)), *args[1:])
            outputs = super().call(*args, **kwargs)
            self._check_reads(kwargs)
            if self.quantizer is not None:
                outputs = self.quantizer.fake_quant_outputs(self, outputs, training=bool(training))
            return outputs
        finally:
            self.__dict__["_effective_kernels"] = None

    def _check_reads(self, kwargs):
        """The first call checks that `call` read every masked attribute:
        a layer that reaches its weights another way would be masked in
        name only."""
        if self._checked_reads or kwargs.get("reverse"):  # ReversibleEmbedding's reverse pass
            return
        unread = [attr for attr in self.masked_attrs if attr not in self.__dict__["_kernels_read"]]
        if unread:
            raise RuntimeError(
                f"Layer '{self.name}' ({base_class(self).__name__}) is masked on "
                f"{unread}, but its call() did not read them as `self.<attribute>`, so "
                "the masks would not apply. Declare as prunable (get_prunable_weights) "
                "only weights that call() reads through their attribute, or exclude "
                "the layer from pruning."
            )
        self._checked_reads = True

    def quantize(self, *args, **kwargs):
        self._refuse_quantize()

    def _refuse_quantize(self, *args, **kwargs):
        # ValueError, not NotImplementedError: Model.quantize turns the latter
        # into a warning and leaves the layer unquantized.
        raise ValueError(
            f"Layer '{self.name}' is masked: Keras's quantize() would replace its "
            "kernel and bypass the mask. Strip the model first "
            "(`plain = tfsparse.strip(model)`), then call `plain.quantize(...)`: "
            "int8 quantization maps the stripped zeros to exact zeros."
        )

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
            for variable in self._own_variables()
        }

    def _own_variables(self):
        """This layer's variables, without those of its sublayers (a masked
        custom layer saves its sublayers through their own save hooks)."""
        own = {id(v) for layer in self._layers for v in layer.variables}
        return [v for v in self.variables if id(v) not in own]

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

    def masking_config(self):
        """The masking arguments (`MASKING_CONFIG_KEYS`) as config values
        (`quantizer` only when there is one)."""
        config = {
            "with_score": self.with_score,
            "with_scale": self.with_scale,
            "state_names": list(self.state_names),
            "mask_function": (
                None
                if self.mask_function is None
                else keras.saving.serialize_keras_object(self.mask_function)
            ),
        }
        if self.quantizer is not None:
            config["quantizer"] = keras.saving.serialize_keras_object(self.quantizer)
        return config

    def get_config(self):
        return {**super().get_config(), **self.masking_config()}


def _option(value, cls, argument, cls_name):
    """A masking option object: deserialized from its config, then checked."""
    if isinstance(value, dict):
        value = keras.saving.deserialize_keras_object(value)
    if value is not None and not isinstance(value, cls):
        raise TypeError(f"`{argument}` must be a {cls_name} or None. Received: {argument}={value!r}")
    return value


def _descriptor(cls, attr):
    for klass in cls.__mro__:
        found = klass.__dict__.get(attr)
        if isinstance(found, _EffectiveKernel):
            return found
    raise AttributeError(f"{cls.__name__} has no masked attribute {attr!r}")


def _cast(value, dtype):
    """Casts only when needed: on small models every extra op shows in step time."""
    return value if keras.backend.standardize_dtype(value.dtype) == dtype else ops.cast(value, dtype)


def _accepts_training(method):
    return "training" in inspect.signature(method).parameters


#: Keras layer class -> its prunable attributes. RNN cells: tfmot prunes both
#: the input and the recurrent kernel.
PRUNABLE_ATTRIBUTES = {
    keras.layers.Dense: ("kernel",),
    keras.layers.EinsumDense: ("kernel",),
    keras.layers.Conv1D: ("kernel",),
    keras.layers.Conv2D: ("kernel",),
    keras.layers.Conv3D: ("kernel",),
    keras.layers.Conv1DTranspose: ("kernel",),
    keras.layers.Conv2DTranspose: ("kernel",),
    keras.layers.Conv3DTranspose: ("kernel",),
    keras.layers.DepthwiseConv1D: ("kernel",),
    keras.layers.DepthwiseConv2D: ("kernel",),
    keras.layers.SeparableConv1D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.SeparableConv2D: ("depthwise_kernel", "pointwise_kernel"),
    keras.layers.Embedding: ("embeddings",),
    keras.layers.SimpleRNNCell: ("kernel", "recurrent_kernel"),
    keras.layers.GRUCell: ("kernel", "recurrent_kernel"),
    keras.layers.LSTMCell: ("kernel", "recurrent_kernel"),
}

_MASKED_CLASS_CACHE = {}


def masked_class(base, masked_attrs=None):
    """The masked subclass of the Keras layer class `base` (cached).

    For the Keras classes of `PRUNABLE_ATTRIBUTES` it is the registered
    `tfsparse>Masked<Name>` class, so `.keras` files load it by name.
    """
    masked_attrs = tuple(masked_attrs or PRUNABLE_ATTRIBUTES[base])
    key = (base, masked_attrs)
    if key in _MASKED_CLASS_CACHE:
        return _MASKED_CLASS_CACHE[key]
    namespace = {
        "masked_attrs": masked_attrs,
        "_raw_slots": {},
        "__doc__": (
            f"`{base.__name__}` with a mask on {', '.join(masked_attrs)}. See "
            "`MaskedLayerMixin` for the extra arguments; all others are those "
            f"of `{base.__name__}`."
        ),
        "__module__": __name__,
    }
    for attr in masked_attrs:
        base_property = inspect.getattr_static(base, attr, None)
        base_property = base_property if isinstance(base_property, property) else None
        slot = "_" + attr if base_property is not None else attr
        namespace["_raw_slots"][attr] = slot
        namespace[attr] = _EffectiveKernel(attr, slot, base_property)

    def call(self, *args, **kwargs):
        return self._masked_call(*args, **kwargs)

    # Keras passes `training` and `mask` according to the signature of call:
    # the base's, plus `training` where it has none (Embedding, EinsumDense),
    # since the mask function needs it.
    signature = inspect.signature(base.call)
    if "training" not in signature.parameters:
        parameters = list(signature.parameters.values())
        training = inspect.Parameter("training", inspect.Parameter.KEYWORD_ONLY, default=None)
        variadic = [i for i, p in enumerate(parameters) if p.kind is p.VAR_KEYWORD]
        parameters.insert(variadic[0] if variadic else len(parameters), training)
        signature = signature.replace(parameters=parameters)
    call.__signature__ = signature
    namespace["call"] = call
    cls = type(f"Masked{base.__name__}", (MaskedLayerMixin, base), namespace)
    if base in PRUNABLE_ATTRIBUTES and masked_attrs == PRUNABLE_ATTRIBUTES[base]:
        cls = keras.saving.register_keras_serializable(package="tfsparse")(cls)
    _MASKED_CLASS_CACHE[key] = cls
    return cls


_layers = keras.layers
MaskedDense = masked_class(_layers.Dense)
MaskedEinsumDense = masked_class(_layers.EinsumDense)
MaskedConv1D = masked_class(_layers.Conv1D)
MaskedConv2D = masked_class(_layers.Conv2D)
MaskedConv3D = masked_class(_layers.Conv3D)
MaskedConv1DTranspose = masked_class(_layers.Conv1DTranspose)
MaskedConv2DTranspose = masked_class(_layers.Conv2DTranspose)
MaskedConv3DTranspose = masked_class(_layers.Conv3DTranspose)
MaskedDepthwiseConv1D = masked_class(_layers.DepthwiseConv1D)
MaskedDepthwiseConv2D = masked_class(_layers.DepthwiseConv2D)
MaskedSeparableConv1D = masked_class(_layers.SeparableConv1D)
MaskedSeparableConv2D = masked_class(_layers.SeparableConv2D)
MaskedEmbedding = masked_class(_layers.Embedding)
MaskedSimpleRNNCell = masked_class(_layers.SimpleRNNCell)
MaskedGRUCell = masked_class(_layers.GRUCell)
MaskedLSTMCell = masked_class(_layers.LSTMCell)

#: Keras layer class -> its registered masked class.
MASKED_CLASSES = {base: masked_class(base) for base in PRUNABLE_ATTRIBUTES}


def prunable_attributes(layer):
    """The attributes `mask_layer` would mask on `layer`, or `()`.

    A layer that defines `get_prunable_weights()` (tfmot's protocol) gets
    the attributes holding those variables; raises ValueError when a
    declared variable is no attribute of the layer. Otherwise the Keras
    class (or the nearest Keras base of a subclass, e.g. KerasHub's
    ReversibleEmbedding -> Embedding) decides.
    """
    if is_masked(layer):
        return tuple(layer.masked_attrs)
    declared = getattr(layer, "get_prunable_weights", None)
    if callable(declared):
        return _attributes_holding(layer, declared())
    for klass in type(layer).__mro__:
        if klass in PRUNABLE_ATTRIBUTES:
            return PRUNABLE_ATTRIBUTES[klass]
    return ()


def _attributes_holding(layer, variables):
    attributes = []
    for variable in variables:
        names = [
            name for name, value in vars(layer).items()
            if value is variable and not name.startswith("__")
        ]
        if not names:
            raise ValueError(
                f"Layer '{layer.name}' ({type(layer).__name__}) declares in "
                f"get_prunable_weights() a variable that is none of its attributes: "
                f"{getattr(variable, 'path', variable)!r}. Return variables stored "
                "as attributes of the layer (`self.w = self.add_weight(...)`), "
                "which call() reads as `self.w`."
            )
        name = names[0]
        public = name.lstrip("_")
        if name.startswith("_") and isinstance(inspect.getattr_static(type(layer), public, None), property):
            name = public
        attributes.append(name)
    return tuple(dict.fromkeys(attributes))


def mask_layer(layer, with_score=False, with_scale=False, state_names=(), mask_function=None, quantizer=None):
    """Masks a built layer IN PLACE: its class becomes the masked subclass
    and the masking variables are added (masks all ones, so the layer
    computes what it did). Returns the layer."""
    attrs = prunable_attributes(layer)
    if not attrs:
        raise ValueError(f"Layer '{layer.name}' ({type(layer).__name__}) has no prunable weight.")
    if not layer.built:
        raise ValueError(f"Layer '{layer.name}' is not built; build the model before pruning it.")
    layer.__class__ = masked_class(type(layer), attrs)
    layer._set_masking_options(with_score, with_scale, state_names, mask_function, quantizer)
    # Keras binds `quantize` to each instance when it is created, and reads
    # the signature of `call` there (to pass `training`): redo both.
    object.__setattr__(layer, "quantize", layer._refuse_quantize)
    _refresh_call_signature(layer)
    with _adding_variables(layer):
        layer._build_masking_weights()
    return layer


def set_quantizer(layer, quantizer):
    """Gives a built masked layer a `quantizer` (IN PLACE) and creates its
    variables, named as when a layer with that quantizer is built (so that
    `.keras` files load). Used by `tfsparse.quantize_aware`."""
    if not is_masked(layer):
        raise ValueError(f"Layer '{layer.name}' is not masked. Received: {type(layer).__name__}")
    if layer.quantizer is not None:
        raise ValueError(f"Layer '{layer.name}' already has a quantizer: {layer.quantizer!r}")
    layer.quantizer = _option(quantizer, FakeQuantInt8, "quantizer", "tfsparse.fake_quant.FakeQuantInt8")
    with _adding_variables(layer):
        layer.quantizer.build(layer)
    return layer


@contextlib.contextmanager
def _adding_variables(layer):
    """Lets a built layer get new variables, with its full path as in build()."""
    locked = layer._tracker.locked
    layer._tracker.unlock()
    try:
        with contextlib.ExitStack() as scopes:
            for name in layer.path.split("/")[:-1]:
                scopes.enter_context(keras.name_scope(name))
            # The layer's own scope (`add_weight` reuses it for the same caller),
            # so that variables a mask function makes directly get the layer's
            # path too, as when a masked class builds.
            scopes.enter_context(keras.name_scope(layer.name, caller=layer))
            yield
    finally:
        if locked:
            layer._tracker.lock()


def _refresh_call_signature(layer):
    """What `keras.layers.Layer.__init__` derives from `call`'s signature."""
    signature = inspect.signature(layer.call)
    names = list(signature.parameters)
    object.__setattr__(layer, "_call_signature", signature)
    object.__setattr__(layer, "call_signature_parameters", names)
    object.__setattr__(layer, "_call_has_training_arg", "training" in names)
    object.__setattr__(layer, "_call_has_mask_arg", "mask" in names)
    object.__setattr__(layer, "_call_has_context_arg", {arg: arg in names for arg in layer._call_context_args})


def is_masked(layer):
    return isinstance(layer, MaskedLayerMixin)


def base_class(layer):
    """The class a layer had before tfsparse changed it (MaskedDense ->
    Dense; a layer that carries nested masks -> its own class)."""
    return plain_base(type(layer))


def plain_base(cls):
    """`base_class` for a class."""
    for klass in cls.__mro__:
        if not issubclass(klass, MaskedLayerMixin) and not getattr(klass, "_tfsparse_wrapper", False):
            return klass
    raise TypeError(f"{cls.__name__} has no plain base class")


def base_config(masked_layer):
    """The masked layer's config without the masking arguments."""
    config = masked_layer.get_config()
    for key in MASKING_CONFIG_KEYS:
        config.pop(key, None)
    return config
