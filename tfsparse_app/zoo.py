"""Reference networks of the pruning literature, as functional Keras models.

- `lenet_300_100`: 784-300-100-classes MLP, ReLU (LeCun et al. 1998).
- `lenet5`: conv 6@5x5 - pool - conv 16@5x5 - pool - 120 - 84 - classes.
- `conv2`, `conv4`, `conv6`: the lottery-ticket convnets (Frankle & Carbin
  2019): 3x3 "same" convs 64-64-pool [128-128-pool] [256-256-pool], then
  dense 256-256-classes, ReLU, no BatchNorm.
- `vgg_cifar`: a VGG-style CIFAR net with BatchNorm (VGG-11 layout by default).
- `resnet20`: He et al. 2016's CIFAR ResNet-20 (3 stages x 3 basic blocks).

Every builder takes `input_shape` and `num_classes` and returns logits
(no softmax), so compile with `from_logits=True`.
"""

import keras
from keras import layers

_CONV_SPECS = {"conv2": (64,), "conv4": (64, 128), "conv6": (64, 128, 256)}


def lenet_300_100(input_shape=(28, 28, 1), num_classes=10):
    inputs = keras.Input(input_shape)
    x = layers.Flatten()(inputs)
    x = layers.Dense(300, activation="relu", name="fc1")(x)
    x = layers.Dense(100, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet_300_100")


def lenet5(input_shape=(28, 28, 1), num_classes=10):
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(6, 5, padding="same", activation="relu", name="conv1")(inputs)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(16, 5, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(120, activation="relu", name="fc1")(x)
    x = layers.Dense(84, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="lenet5")


def _lottery_convnet(name, input_shape, num_classes):
    inputs = keras.Input(input_shape)
    x = inputs
    for stage, filters in enumerate(_CONV_SPECS[name], start=1):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{stage}a")(x)
        x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{stage}b")(x)
        x = layers.MaxPooling2D(name=f"pool{stage}")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(256, activation="relu", name="fc1")(x)
    x = layers.Dense(256, activation="relu", name="fc2")(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def conv2(input_shape=(28, 28, 1), num_classes=10):
    return _lottery_convnet("conv2", input_shape, num_classes)


def conv4(input_shape=(28, 28, 1), num_classes=10):
    return _lottery_convnet("conv4", input_shape, num_classes)


def conv6(input_shape=(28, 28, 1), num_classes=10):
    return _lottery_convnet("conv6", input_shape, num_classes)


def vgg_cifar(input_shape=(32, 32, 3), num_classes=10, config=(64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")):
    """VGG with BatchNorm; `config` lists filters and "M" for max-pooling."""
    inputs = keras.Input(input_shape)
    x = inputs
    for index, item in enumerate(config):
        if item == "M":
            x = layers.MaxPooling2D()(x)
            continue
        x = layers.Conv2D(item, 3, padding="same", use_bias=False, name=f"conv{index}")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="vgg_cifar")


def resnet20(input_shape=(32, 32, 3), num_classes=10):
    inputs = keras.Input(input_shape)
    x = _conv_bn_relu(inputs, 16, 1, "stem")
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(3):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(x, filters, strides, f"s{stage}b{block}")
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet20")


def _conv_bn_relu(x, filters, strides, name, relu=True):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU()(x) if relu else x


def _basic_block(x, filters, strides, name):
    shortcut = x
    y = _conv_bn_relu(x, filters, strides, f"{name}_a")
    y = _conv_bn_relu(y, filters, 1, f"{name}_b", relu=False)
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=strides, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    return layers.ReLU()(layers.Add()([y, shortcut]))


BUILDERS = {
    "lenet_300_100": lenet_300_100,
    "lenet5": lenet5,
    "conv2": conv2,
    "conv4": conv4,
    "conv6": conv6,
    "vgg_cifar": vgg_cifar,
    "resnet20": resnet20,
}


def get(name, input_shape, num_classes=10):
    """Builds a zoo model by name."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown model {name!r}. Available models: {sorted(BUILDERS)}")
    return BUILDERS[name](input_shape=input_shape, num_classes=num_classes)
