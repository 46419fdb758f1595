"""Models a tinykd user might write, none from the zoo: factories `(input_shape, num_classes) -> keras.Model`.

tests/test_own_models.py copies this file beside the recipes it writes, so the recipe's folder is where the
factories are found.
"""

import tf_keras as keras

layers = keras.layers


def functional_student(input_shape, num_classes):
    """A Functional CNN: a residual add (structured pruning leaves its two convolutions whole), a third
    convolution structured pruning can thin, and a dense classifier."""
    inputs = keras.Input(shape=input_shape, name="pixels")
    x = layers.Conv2D(6, 3, strides=2, padding="same", use_bias=False, name="conv_a")(inputs)
    x = layers.BatchNormalization(name="conv_a_bn")(x)
    x = layers.ReLU(name="conv_a_relu")(x)
    y = layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv_b")(x)
    y = layers.BatchNormalization(name="conv_b_bn")(y)
    x = layers.ReLU(name="merged")(layers.Add(name="add")([x, y]))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_c")(x)
    # The classifier as a convolution over the whole map: a Dense one converts to FULLY_CONNECTED, whose int8
    # rounding differs between TFLite Micro and TFLite's reference kernels (verify would stop on a near-tie).
    x = layers.Conv2D(num_classes, tuple(x.shape[1:3]), name="classifier")(x)
    return keras.Model(inputs, layers.Flatten(name="scores")(x), name="functional_student")


def sequential_student(input_shape, num_classes):
    """A Sequential CNN with no Input layer: tinykd builds it on the data's shape."""
    return keras.Sequential([
        layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="seq_conv"),
        layers.MaxPooling2D(2, name="seq_pool"),
        layers.Conv2D(16, 1, activation="relu", name="seq_mix"),
        layers.Conv2D(num_classes, (input_shape[0] // 4, input_shape[1] // 4), name="seq_classifier"),
        layers.Flatten(name="seq_logits"),
    ], name="sequential_student")


def teacher(input_shape, num_classes):
    """A Functional teacher, trained by tinykd on the labels."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="t_conv1")(inputs)
    x = layers.MaxPooling2D(2, name="t_pool1")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu", name="t_conv2")(x)
    x = layers.MaxPooling2D(2, name="t_pool2")(x)
    x = layers.Flatten()(x)
    x = layers.Dense(32, activation="relu", name="t_hidden")(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="t_logits")(x), name="my_teacher")


def nested_student(input_shape, num_classes):
    """A Sequential backbone used as a layer of a Sequential model: tinykd flattens it."""
    backbone = keras.Sequential([
        layers.Conv2D(8, 3, strides=2, padding="same", name="bb_conv"),
        layers.ReLU(name="bb_relu"),
        layers.MaxPooling2D(2, name="bb_pool"),
    ], name="backbone")
    return keras.Sequential([keras.Input(shape=input_shape), backbone, layers.Flatten(name="head_flat"),
                             layers.Dense(num_classes, name="head_logits")], name="nested_student")


def nested_clashing_student(input_shape, num_classes):
    """A nested model whose layer names clash with the outer model's: it cannot be flattened."""
    backbone = keras.Sequential([layers.Conv2D(8, 3, strides=2, name="conv")], name="backbone")
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(4, 3, padding="same", name="conv")(backbone(inputs))
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def layer_norm_student(input_shape, num_classes):
    """LayerNormalization has no TFMOT quantization: QAT cannot take this model."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    x = layers.LayerNormalization(name="norm")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x))


def upsampling_student(input_shape, num_classes):
    """A convolution whose channels pass through UpSampling2D, which structured pruning cannot cut through."""
    inputs = keras.Input(shape=input_shape)
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv")(inputs)
    x = layers.UpSampling2D(name="upsample")(x)
    x = layers.MaxPooling2D(4, name="pool")(x)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(num_classes, name="logits")(x))


def wrong_classes_student(input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), layers.Flatten(), layers.Dense(num_classes + 1)])


def softmax_student(input_shape, num_classes):
    return keras.Sequential([keras.Input(shape=input_shape), layers.Flatten(),
                             layers.Dense(num_classes, activation="softmax", name="probabilities")])
