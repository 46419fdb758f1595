"""Knowledge distillation: a `Distiller` wraps a frozen teacher and a student, and overrides `compute_loss`.

loss = alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * CE(labels, student)
       [+ hint.weight * MSE(projection(student_layer), teacher_layer)]

The same Distiller fine-tunes the pruned and the quantization-aware student, so every stage keeps learning from
the teacher. When no hint is used, teacher logits are computed once per split and fed in with the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinykd.config import AugmentConfig, DistillConfig, HintConfig
from tinykd.data import Dataset, Split
from tinykd.errors import ConfigError
from tinykd.keras_shim import keras, tf


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """How one fine-tuning run trains: shared by distill, prune and quantize."""

    epochs: int
    batch_size: int
    learning_rate: float
    seed: int
    verbose: int = 0
    augment: AugmentConfig | None = None

    @classmethod
    def of(cls, section, *, seed: int, verbose: int = 0, augment: AugmentConfig | None = None) -> "Schedule":
        """The schedule a recipe section (teacher, distill, prune, quantize) describes."""
        return cls(epochs=section.epochs, batch_size=section.batch_size, learning_rate=section.learning_rate,
                   seed=seed, verbose=verbose, augment=augment)

    @property
    def augmenting(self) -> bool:
        return self.augment is not None and self.augment.active


class Distiller(keras.Model):
    """Trains `student` on the teacher's softened outputs and the labels; the teacher never changes."""

    def __init__(self, student, teacher, *, temperature: float, alpha: float, hint: HintConfig | None = None):
        super().__init__(name="distiller")
        self.student = student
        self.teacher = teacher
        self.teacher.trainable = False
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.hint_weight = hint.weight if hint else 0.0
        if hint:
            self.student_features = _with_features(student, hint.student_layer, "distill.hint.student_layer")
            self.teacher_features = _with_features(teacher, hint.teacher_layer, "distill.hint.teacher_layer")
            self.projection = _projection(self.student_features.outputs[1].shape,
                                          self.teacher_features.outputs[1].shape)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    @property
    def metrics(self):
        return [self.loss_tracker, self.accuracy]

    def call(self, x, training=False):
        if self.hint_weight:
            return self.student_features(x, training=training)
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None):
        labels, teacher_logits = _unpack(y)
        student_logits, student_hint = y_pred if self.hint_weight else (y_pred, None)
        loss = (1.0 - self.alpha) * tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
            labels, student_logits, from_logits=True))
        if self.alpha > 0.0 or self.hint_weight:
            teacher_hint = None
            if teacher_logits is None or self.hint_weight:
                teacher_logits, teacher_hint = self._teacher_outputs(x)
            soft_teacher = tf.nn.softmax(teacher_logits / self.temperature)
            soft_student = tf.nn.log_softmax(student_logits / self.temperature)
            kl = tf.reduce_sum(soft_teacher * (tf.math.log(soft_teacher + 1e-12) - soft_student), axis=-1)
            # Soft-target gradients shrink as 1/T^2; scaling by T^2 keeps their weight independent of T (Hinton 2015).
            loss += self.alpha * self.temperature ** 2 * tf.reduce_mean(kl)
            if self.hint_weight:
                projected = self.projection(student_hint)
                loss += self.hint_weight * tf.reduce_mean(tf.square(projected - teacher_hint))
        self.loss_tracker.update_state(loss)
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight):
        labels, _ = _unpack(y)
        self.accuracy.update_state(labels, y_pred[0] if self.hint_weight else y_pred)
        return {metric.name: metric.result() for metric in self.metrics}

    def _teacher_outputs(self, x):
        if self.hint_weight:
            logits, features = self.teacher_features(x, training=False)
            return tf.stop_gradient(logits), tf.stop_gradient(features)
        return tf.stop_gradient(self.teacher(x, training=False)), None


def distill(teacher, student, data: Dataset, cfg: DistillConfig, schedule: Schedule, callbacks=()):
    """Train `student` (a fresh or a TFMOT-wrapped model) against `teacher`; returns the trained student.

    The teacher is not modified. `student` is trained in place, as Keras does; callers pass a clone
    (TFMOT's prune and quantize wrappers already are clones).
    """
    keras.utils.set_random_seed(schedule.seed)
    distiller = Distiller(student, teacher, temperature=cfg.temperature, alpha=cfg.alpha, hint=cfg.hint)
    distiller.compile(optimizer=keras.optimizers.Adam(_cosine(schedule, len(data.train))))
    # Precomputed logits would describe the un-augmented images; with augmentation the teacher runs per batch.
    use_teacher_logits = cfg.alpha > 0.0 and cfg.hint is None and not schedule.augmenting
    train = _dataset(data.train, teacher if use_teacher_logits else None, schedule, training=True)
    val = _dataset(data.val, teacher if use_teacher_logits else None, schedule, training=False)
    distiller.fit(train, validation_data=val, epochs=schedule.epochs, verbose=schedule.verbose,
                  callbacks=list(callbacks))
    return student


def train_on_labels(model, data: Dataset, schedule: Schedule):
    """Plain supervised training with cross-entropy (teachers, and students when alpha is 0)."""
    keras.utils.set_random_seed(schedule.seed)
    model.compile(optimizer=keras.optimizers.Adam(_cosine(schedule, len(data.train))),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    model.fit(_dataset(data.train, None, schedule, training=True),
              validation_data=_dataset(data.val, None, schedule, training=False),
              epochs=schedule.epochs, verbose=schedule.verbose)
    return model


def accuracy(model, split: Split, batch_size: int = 256) -> float:
    """Top-1 accuracy of a Keras model that outputs logits."""
    logits = model.predict(split.x, batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(logits, axis=-1) == split.y))


def _dataset(split: Split, teacher, schedule: Schedule, training: bool):
    """Batches of (x, labels) or, with a teacher, (x, (labels, teacher logits)) computed once up front.

    Training batches are shuffled and, when the recipe asks, augmented; evaluation batches never are.
    """
    if teacher is not None:
        targets = (split.y, teacher_logits(teacher, split.x))
    else:
        targets = split.y
    dataset = tf.data.Dataset.from_tensor_slices((split.x, targets))
    if training:
        dataset = dataset.shuffle(len(split), seed=schedule.seed, reshuffle_each_iteration=True)
        if schedule.augmenting:
            augment = _augmenter(schedule.augment, tuple(split.x.shape[1:]), schedule.seed)
            dataset = dataset.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(schedule.batch_size).prefetch(tf.data.AUTOTUNE)


_LOGITS_CACHE: list[tuple[object, np.ndarray, np.ndarray]] = []


def teacher_logits(teacher, x: np.ndarray) -> np.ndarray:
    """The teacher's logits on `x`, computed once per (teacher, array) and reused by distill, prune and quantize.

    Entries hold the teacher and the array themselves, so an identity match can never be a recycled id.
    """
    for cached_teacher, cached_x, logits in _LOGITS_CACHE:
        if cached_teacher is teacher and cached_x is x:
            return logits
    return remember_logits(teacher, x, teacher.predict(x, batch_size=512, verbose=0))


def remember_logits(teacher, x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Use `logits` as the teacher's output on `x` (logits the build saved with its cached teacher)."""
    if logits.shape != (len(x), teacher.output_shape[-1]):
        raise ValueError(f"teacher logits of shape {logits.shape} cannot belong to {len(x)} samples")
    _LOGITS_CACHE.append((teacher, x, logits))
    del _LOGITS_CACHE[:-4]  # train and validation of the current build, plus one earlier teacher
    return logits


def _augmenter(augment: AugmentConfig, shape: tuple[int, int, int], seed: int):
    """Random flip, crop-and-resize and shift (reflect-pad, then crop back) of one HxWxC image."""
    height, width, channels = shape

    def apply(x):
        if augment.flip_horizontal:
            x = tf.image.random_flip_left_right(x, seed=seed)
        if augment.crop_fraction:
            crop = (max(1, round(height * (1 - augment.crop_fraction))),
                    max(1, round(width * (1 - augment.crop_fraction))), channels)
            x = tf.image.resize(tf.image.random_crop(x, crop, seed=seed + 1), (height, width))
        if augment.shift_fraction:
            pad_h, pad_w = round(height * augment.shift_fraction), round(width * augment.shift_fraction)
            padded = tf.pad(x, [[pad_h, pad_h], [pad_w, pad_w], [0, 0]], mode="REFLECT")
            x = tf.image.random_crop(padded, (height, width, channels), seed=seed + 2)
        return x

    return apply


def _cosine(schedule: Schedule, train_samples: int):
    steps = schedule.epochs * -(-train_samples // schedule.batch_size)
    return keras.optimizers.schedules.CosineDecay(schedule.learning_rate, decay_steps=max(1, steps), alpha=0.02)


def _unpack(y):
    if isinstance(y, (tuple, list)):
        return y[0], y[1]
    return y, None


def _with_features(model, layer_name: str, key: str):
    """The model with a second output: the named layer's activations."""
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers)
        raise ConfigError(f"{key}: no layer {layer_name!r} in {model.name}; its layers are: {names}") from None
    return keras.Model(model.inputs, [model.outputs[0], layer.output], name=f"{model.name}_with_{layer_name}")


def _projection(student_shape, teacher_shape):
    """A learned map from student features to teacher features: 1x1 conv (+ resize) for maps, dense for vectors."""
    if len(student_shape) != len(teacher_shape):
        raise ConfigError(f"distill.hint: student features {tuple(student_shape)[1:]} and teacher features "
                          f"{tuple(teacher_shape)[1:]} differ in rank; pick layers of the same kind (both conv)")
    if len(teacher_shape) == 2:
        return keras.layers.Dense(teacher_shape[-1], name="hint_projection")
    projection = keras.Sequential([keras.layers.Conv2D(teacher_shape[-1], 1, name="hint_projection")])
    if tuple(student_shape[1:3]) != tuple(teacher_shape[1:3]):
        projection.add(keras.layers.Resizing(teacher_shape[1], teacher_shape[2], interpolation="bilinear"))
    return projection
