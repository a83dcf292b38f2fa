"""Benchmark models, defined once for Keras 3 and for its tf_keras twin.

Each builder takes the Keras module to build with (`keras` or `tf_keras`), so
the tfmot baseline trains exactly the same architecture as our methods.
"""


def lenet_300_100(K, l1=0.0):
    """LeNet-300-100 (GSM paper): 784-300-100-10 MLP, 266,200 prunable weights."""
    reg = K.regularizers.L1(l1) if l1 else None
    return K.Sequential(
        [
            K.Input((28, 28, 1)),
            K.layers.Flatten(),
            K.layers.Dense(300, activation="relu", kernel_regularizer=reg),
            K.layers.Dense(100, activation="relu", kernel_regularizer=reg),
            K.layers.Dense(10, kernel_regularizer=reg),
        ],
        name="lenet_300_100",
    )


def lenet5(K, l1=0.0):
    """LeNet-5 (GSM paper, Caffe version): conv 20 5x5, pool, conv 50 5x5, pool, dense 500, dense 10."""
    reg = K.regularizers.L1(l1) if l1 else None
    return K.Sequential(
        [
            K.Input((28, 28, 1)),
            K.layers.Conv2D(20, 5, kernel_regularizer=reg),
            K.layers.MaxPooling2D(2),
            K.layers.Conv2D(50, 5, kernel_regularizer=reg),
            K.layers.MaxPooling2D(2),
            K.layers.Flatten(),
            K.layers.Dense(500, activation="relu", kernel_regularizer=reg),
            K.layers.Dense(10, kernel_regularizer=reg),
        ],
        name="lenet5",
    )


def resnet20(K, input_shape=(32, 32, 3), classes=10, width=16, l1=0.0):
    """ResNet-20 (He et al. 2016, CIFAR form): 3 stages x 3 basic blocks, widths w, 2w, 4w.

    A 1x1 convolution + BatchNorm projects the shortcut where the shape changes.
    About 270k parameters at width 16.
    """
    reg = K.regularizers.L1(l1) if l1 else None

    def conv_bn(x, filters, kernel, stride=1, relu=True):
        x = K.layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False,
            kernel_regularizer=reg,
        )(x)
        x = K.layers.BatchNormalization()(x)
        return K.layers.ReLU()(x) if relu else x

    inputs = K.Input(input_shape)
    x = conv_bn(inputs, width, 3)
    for stage, filters in enumerate((width, 2 * width, 4 * width)):
        for block in range(3):
            stride = 2 if stage > 0 and block == 0 else 1
            y = conv_bn(x, filters, 3, stride)
            y = conv_bn(y, filters, 3, relu=False)
            if stride != 1 or x.shape[-1] != filters:
                x = conv_bn(x, filters, 1, stride, relu=False)
            x = K.layers.ReLU()(K.layers.Add()([x, y]))
    x = K.layers.GlobalAveragePooling2D()(x)
    outputs = K.layers.Dense(classes)(x)
    return K.Model(inputs, outputs, name="resnet20")


BUILDERS = {"lenet300": lenet_300_100, "lenet5": lenet5}
TITLES = {"lenet300": "LeNet-300-100", "lenet5": "LeNet-5", "resnet20": "ResNet-20 (CIFAR-shaped)"}


def build(K, name, l1=0.0):
    """Build benchmark model `name` ("lenet300" or "lenet5") with Keras module `K`."""
    if name not in BUILDERS:
        raise ValueError(f"Unknown model {name!r}; expected one of {sorted(BUILDERS)}")
    return BUILDERS[name](K, l1=l1)


def layer_densities(model):
    """[(label, size, nonzeros)] for every layer with a kernel, in model order.

    Labels are positional ("Conv2D 1", "Dense 3") so a Keras 3 model and its
    tf_keras twin line up; works with either Keras.
    """
    import numpy as np

    rows = []
    for index, layer in enumerate(model.layers):
        if getattr(layer, "kernel", None) is None:
            continue
        kernel = np.asarray(layer.get_weights()[0])
        rows.append((f"{type(layer).__name__} {index}", int(kernel.size), int(np.count_nonzero(kernel))))
    return rows
