"""Your own Keras models for pipelines/own_student_example.yaml: each function takes the data's input shape and
class count and returns an untrained tf-keras model that gives one logit per class (no softmax).

Build them with tf_keras (Keras 2), as TFMOT needs; layer names are yours and are what recipe hints name.
"""

import tf_keras as keras

layers = keras.layers


def student(input_shape, num_classes):
    """A small Functional CNN: two conv-BN-ReLU units, a residual add, max pooling and a conv classifier."""
    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    y = layers.Conv2D(8, 3, padding="same", use_bias=False, name="body")(x)
    y = layers.BatchNormalization(name="body_bn")(y)
    x = layers.ReLU(name="body_relu")(layers.Add(name="residual")([x, y]))
    x = layers.MaxPooling2D(2, name="pool")(x)
    x = layers.Conv2D(num_classes, tuple(x.shape[1:3]), name="classifier")(x)
    return keras.Model(inputs, layers.Flatten(name="logits")(x), name="my_student")
