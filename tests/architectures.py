"""Tiny versions of real architectures for the surgery tests (functional Keras models)."""

import keras
from keras import layers


def _conv_bn(x, filters, kernel=3, strides=1, relu=True, name=None):
    x = layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                      name=name)(x)
    x = layers.BatchNormalization()(x)
    return layers.ReLU()(x) if relu else x


def resnet(input_shape=(16, 16, 3), widths=(4, 8, 16), blocks=3, classes=10):
    """ResNet-20-style CIFAR network (3 stages x `blocks` basic blocks), with
    1x1 projection shortcuts where the width or resolution changes."""
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, widths[0], name="stem")
    for stage, width in enumerate(widths):
        for block in range(blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv_bn(x, width, strides=strides, name=f"s{stage}b{block}_a")
            y = _conv_bn(y, width, relu=False, name=f"s{stage}b{block}_b")
            if strides != 1 or x.shape[-1] != width:
                x = _conv_bn(x, width, kernel=1, strides=strides, relu=False,
                             name=f"s{stage}b{block}_proj")
            x = layers.ReLU()(layers.Add()([x, y]))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="resnet")


def densenet_block(input_shape=(8, 8, 3), growth=4, depth=3, classes=5):
    """A DenseNet-style block (BN-ReLU-Conv layers feeding Concatenates) and a transition."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    for i in range(depth):
        y = layers.BatchNormalization()(x)
        y = layers.ReLU()(y)
        y = layers.Conv2D(growth, 3, padding="same", name=f"grow{i}")(y)
        x = layers.Concatenate()([x, y])
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(8, 1, name="transition")(x)
    x = layers.AveragePooling2D(2)(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="densenet")


def mobilenet_block(input_shape=(8, 8, 3), classes=5):
    """MobileNet-style: depthwise + pointwise, an inverted residual, a SeparableConv."""
    inputs = keras.Input(input_shape)
    x = _conv_bn(inputs, 8, name="stem")
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU(6.0)(x)
    x = _conv_bn(x, 8, kernel=1, relu=False, name="pw1")
    y = _conv_bn(x, 16, kernel=1, name="expand")
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
    y = layers.BatchNormalization()(y)
    y = layers.ReLU(6.0)(y)
    y = _conv_bn(y, 8, kernel=1, relu=False, name="project")
    x = layers.Add()([x, y])
    x = layers.SeparableConv2D(12, 3, padding="same", activation="relu", name="sep")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="mobilenet")


def cnn_flatten(input_shape=(8, 8, 2), classes=3):
    """Conv-BN-ReLU-pool, Flatten (channels-last strided rows), Dense head."""
    inputs = keras.Input(input_shape)
    x = layers.Conv2D(6, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(10, activation="relu", name="hidden")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="cnn_flatten")


def mlp(inputs=12, hidden=(16, 10), classes=4):
    model_inputs = keras.Input((inputs,))
    x = model_inputs
    for i, width in enumerate(hidden):
        x = layers.Dense(width, activation="relu", name=f"hidden{i}")(x)
    outputs = layers.Dense(classes, name="logits")(x)
    return keras.Model(model_inputs, outputs, name="mlp")


def mobilenet_v3_block(input_shape=(16, 16, 3), classes=10):
    """MobileNetV3-style: hard-swish written with `keras.ops` (graph operations that are not
    layers), an inverted residual with a depthwise conv and squeeze-and-excite."""

    def hard_swish(x):
        return x * keras.ops.hard_sigmoid(x)

    inputs = keras.Input(input_shape)
    x = hard_swish(_conv_bn(inputs, 8, strides=2, relu=False, name="stem"))
    y = hard_swish(_conv_bn(x, 16, kernel=1, relu=False, name="expand"))
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False)(y)
    y = hard_swish(layers.BatchNormalization()(y))
    s = layers.GlobalAveragePooling2D(keepdims=True)(y)
    s = layers.Conv2D(4, 1, activation="relu", name="se_reduce")(s)
    s = layers.Conv2D(16, 1, activation="hard_sigmoid", name="se_expand")(s)
    y = layers.Multiply()([y, s])
    y = _conv_bn(y, 8, kernel=1, relu=False, name="project")
    x = layers.Add()([x, y])
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(classes, name="logits")(x), name="mobilenet_v3")
