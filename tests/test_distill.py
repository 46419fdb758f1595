"""The Distiller: frozen teacher, learning student, the loss it claims, and hints between named layers."""

import numpy as np
import pytest

from tinykd import models
from tinykd.config import DistillConfig, HintConfig, ModelConfig
from tinykd.distill import Distiller, Schedule, Teaching, distill
from tinykd.errors import ConfigError
from tinykd.keras_shim import keras, tf

STUDENT = ModelConfig(filters=(8, 16), head="pool_flatten")


def fresh_student(data, name="student"):
    keras.utils.set_random_seed(1)
    return models.build(STUDENT, data.input_shape, data.num_classes, name)


def test_teacher_frozen_student_learns(tiny_teacher, smoke_data):
    teacher_before = [w.copy() for w in tiny_teacher.get_weights()]
    student = fresh_student(smoke_data)
    student_before = [w.copy() for w in student.get_weights()]
    cfg = DistillConfig(student=STUDENT, alpha=0.9, temperature=4.0)
    loss_before = training_loss(student, tiny_teacher, smoke_data, cfg)
    distill(Teaching(teacher=tiny_teacher, config=cfg), student, smoke_data,
            Schedule(epochs=3, batch_size=64, learning_rate=5e-3, seed=0))
    for before, after in zip(teacher_before, tiny_teacher.get_weights()):
        np.testing.assert_array_equal(before, after)  # batch-norm statistics included
    changed = [not np.array_equal(b, a) for b, a in zip(student_before, student.get_weights())]
    assert all(changed), "every student weight should have been updated"
    assert training_loss(student, tiny_teacher, smoke_data, cfg) < 0.8 * loss_before


def training_loss(student, teacher, data, cfg):
    distiller = Distiller(student, teacher, temperature=cfg.temperature, alpha=cfg.alpha)
    x, y = data.train.x[:512], data.train.y[:512]
    return float(distiller.compute_loss(x, tf.constant(y), student(x, training=False)))


def test_loss_is_the_documented_formula(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    temperature, alpha = 3.0, 0.7
    distiller = Distiller(student, tiny_teacher, temperature=temperature, alpha=alpha)
    x, labels = smoke_data.train.x[:16], smoke_data.train.y[:16]
    teacher_logits = tiny_teacher(x).numpy().astype(np.float64)
    student_logits = student(x).numpy().astype(np.float64)
    loss = float(distiller.compute_loss(x, (tf.constant(labels), tf.constant(teacher_logits, tf.float32)),
                                        tf.constant(student_logits, tf.float32)))

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_teacher, p_student = softmax(teacher_logits / temperature), softmax(student_logits / temperature)
    kl = np.sum(p_teacher * (np.log(p_teacher) - np.log(p_student)), axis=-1).mean()
    ce = -np.log(softmax(student_logits)[np.arange(16), labels]).mean()
    assert loss == pytest.approx(alpha * temperature ** 2 * kl + (1 - alpha) * ce, rel=1e-4)
    # Without precomputed logits the teacher is run on x, and gives the same loss.
    online = float(distiller.compute_loss(x, tf.constant(labels), tf.constant(student_logits, tf.float32)))
    assert online == pytest.approx(loss, rel=1e-4)


def test_alpha_zero_is_plain_cross_entropy(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    distiller = Distiller(student, tiny_teacher, temperature=4.0, alpha=0.0)
    x, labels = smoke_data.train.x[:8], smoke_data.train.y[:8]
    logits = student(x)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    assert float(distiller.compute_loss(x, tf.constant(labels), logits)) == pytest.approx(float(expected), rel=1e-5)


def test_hint_distillation_trains_through_a_projection(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    hint = HintConfig(teacher_layer="block2_conv1_relu", student_layer="block2_conv1_relu", weight=0.5)
    cfg = DistillConfig(student=STUDENT, hints=(hint,))
    distill(Teaching(teacher=tiny_teacher, config=cfg), student, smoke_data,
            Schedule(epochs=1, batch_size=64, learning_rate=5e-3, seed=0))
    distiller = Distiller(student, tiny_teacher, temperature=4.0, alpha=0.9, hints=(hint,))
    # Student block2 has 16 channels, the teacher's 16 as well but a different space: a 1x1 conv maps them.
    projected = distiller.projections[0](distiller.student_features(smoke_data.train.x[:2])[1])
    assert projected.shape == distiller.teacher_features(smoke_data.train.x[:2])[1].shape


def test_hint_with_unknown_layer_names_the_key(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    with pytest.raises(ConfigError,
                       match=r"distill.hints\[0\].student_layer: no layer 'nope' in student; its layers are"):
        Distiller(student, tiny_teacher, temperature=4.0, alpha=0.9,
                  hints=(HintConfig(teacher_layer="features", student_layer="nope"),))
