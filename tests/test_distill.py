"""The Distiller: frozen teacher, learning student, the loss it claims, and hints between named layers; stored
teacher layers give the loss of running the teacher, and a second student with hints never runs it."""

import json
from dataclasses import replace

import numpy as np
import pytest

from tinykd import artifacts, models
from tinykd import distill as distill_stage
from tinykd import teacher as teacher_stage
from tinykd.artifacts import Run
from tinykd.config import AttentionConfig, DistillConfig, HintConfig, ModelConfig
from tinykd.data import shards
from tinykd.distill import Distiller, Schedule, Teaching, _dataset, distill, teacher_features, teacher_logits
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


HINT = HintConfig(teacher_layer="block2_conv1_relu", student_layer="block2_conv1_relu", weight=0.5)
ATTENTION = AttentionConfig(teacher_layer="block1_conv1_relu", student_layer="block1_conv1_relu")


def test_stored_teacher_layers_give_the_loss_of_running_the_teacher(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    distiller = Distiller(student, tiny_teacher, temperature=4.0, alpha=0.9, hints=(HINT,), attention=(ATTENTION,))
    split = smoke_data.train.head(48)
    logits = teacher_logits(tiny_teacher, split.x)
    stored = tuple(teacher_features(tiny_teacher, pair.teacher_layer, "key", split.x) for pair in (HINT, ATTENTION))
    # The batch as the input pipeline gives it: (x, {"labels", "logits", "features"}).
    x, targets = next(iter(_dataset(split, logits, Schedule(epochs=1, batch_size=48, learning_rate=1e-3, seed=0),
                                    training=False, features=stored)))
    assert set(targets) == {"labels", "logits", "features"}
    predicted = distiller(x)
    online = float(distiller.compute_loss(x, (targets["labels"], targets["logits"]), predicted))
    fed = float(distiller.compute_loss(x, targets, predicted))
    assert fed == pytest.approx(online, rel=1e-5)
    # The stored layers are what the loss reads: other values give another loss.
    zeros = targets | {"features": tuple(tf.zeros_like(f) for f in targets["features"])}
    assert float(distiller.compute_loss(x, zeros, predicted)) != pytest.approx(online, rel=1e-3)


@pytest.fixture
def teacher_runs(monkeypatch):
    """The names of the models that run, by `predict` or by being called (a spy: the real methods still run)."""
    names = []
    for method in ("predict", "__call__"):
        original = getattr(keras.Model, method)

        def spy(self, *args, original=original, **kwargs):
            names.append(self.name)
            return original(self, *args, **kwargs)

        monkeypatch.setattr(keras.Model, method, spy)
    return names


def test_a_second_student_with_hints_never_runs_the_teacher(tmp_path, smoke_cfg, smoke_data, tiny_teacher,
                                                              teacher_runs):
    artifacts.save_model(tiny_teacher, tmp_path / "teacher.keras")
    cfg = replace(smoke_cfg, teacher=replace(smoke_cfg.teacher, path=str(tmp_path / "teacher.keras")),
                  distill=replace(smoke_cfg.distill, hints=(HINT,), epochs=1))
    runs = tmp_path / "runs"
    teacher_stage.stage(Run(runs / "first"), cfg, smoke_data)
    assert "teacher_features" in teacher_runs  # the hint's layer, computed once and stored
    folder = next((runs / ".teacher_cache").glob("teacher-*.features-block2_conv1_relu"))
    index = json.loads((folder / shards.INDEX).read_text())
    assert index["arrays"]["train"]["rows"] == len(smoke_data.train)
    np.testing.assert_allclose(shards.read(folder)["train"],
                               teacher_features(tiny_teacher, HINT.teacher_layer, "key", smoke_data.train.x),
                               rtol=1e-6, atol=1e-6)
    teacher_runs.clear()
    second = replace(cfg, seed=1, distill=replace(cfg.distill, temperature=2.0))
    teachers = teacher_stage.stage(Run(runs / "second"), second, smoke_data)
    trained = distill_stage.stage(Run(runs / "second"), second, smoke_data, teachers)
    assert "student_with_features" in teacher_runs  # the spy sees the hint training
    assert not [name for name in teacher_runs if name.startswith("teacher")], teacher_runs
    assert trained.model.name == "student"
