"""Distillation beyond logits: hints, attention transfer, teacher ensembles, born-again rounds, unlabelled data."""

import numpy as np
import pytest

from conftest import SMOKE_RECIPE
from tinykd import config, models
from tinykd.config import AttentionConfig, DistillConfig, HintConfig, ModelConfig
from tinykd.distill import Distiller, Schedule, Teaching, attention_map, distill, ensemble, find_layer
from tinykd.errors import ConfigError
from tinykd.keras_shim import keras, tf, tfmot
from tinykd.pipeline import BuildOptions, build
from tinykd.prune import clone

STUDENT = ModelConfig(filters=(8, 16), head="pool_flatten")
SCHEDULE = Schedule(epochs=1, batch_size=64, learning_rate=5e-3, seed=0)


def fresh_student(data, seed=1):
    keras.utils.set_random_seed(seed)
    return models.build(STUDENT, data.input_shape, data.num_classes, "student")


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_attention_map_of_a_known_tensor():
    # One sample, 2x2 positions, 2 channels. Channel mean of squares: [[(1+9)/2, (4+0)/2], [(0+16)/2, (4+4)/2]].
    features = np.array([[[[1, 3], [2, 0]], [[0, 4], [-2, 2]]]], dtype=np.float32)
    means = np.array([5.0, 2.0, 8.0, 4.0])
    expected = means / np.sqrt(np.sum(means ** 2))
    np.testing.assert_allclose(attention_map(tf.constant(features)).numpy(), [expected], rtol=1e-6)


def test_attention_map_is_resized_before_normalising():
    # A constant 2x2 map stays constant when resized to 4x4: sixteen equal values, each 1/4 after normalising.
    features = np.full((1, 2, 2, 3), 2.0, dtype=np.float32)
    np.testing.assert_allclose(attention_map(tf.constant(features), (4, 4)).numpy(), np.full((1, 16), 0.25),
                               rtol=1e-6)


def test_attention_loss_is_the_documented_formula(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    pair = AttentionConfig(teacher_layer="block1_conv1_relu", student_layer="block2_conv1_relu", weight=100.0)
    distiller = Distiller(student, tiny_teacher, temperature=4.0, alpha=0.0, attention=(pair,))
    x, labels = smoke_data.train.x[:8], smoke_data.train.y[:8]
    logits, student_map = distiller(x)
    teacher_map = distiller.teacher_features(x)[1]
    assert student_map.shape[1:3] != teacher_map.shape[1:3], "the pair must need resizing to test it"
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(labels, logits)
    difference = attention_map(student_map, tuple(teacher_map.shape[1:3])) - attention_map(teacher_map)
    expected = float(ce) + 100.0 / 2 * float(tf.reduce_mean(tf.square(difference)))
    assert float(distiller.compute_loss(x, tf.constant(labels), (logits, student_map))) == pytest.approx(expected,
                                                                                                          rel=1e-5)


def test_attention_on_a_dense_layer_names_the_key(tiny_teacher, smoke_data):
    with pytest.raises(ConfigError, match=r"distill.attention\[0\]: attention maps need convolutional layers"):
        Distiller(fresh_student(smoke_data), tiny_teacher, temperature=4.0, alpha=0.9,
                  attention=(AttentionConfig(teacher_layer="hidden", student_layer="block2_conv1_relu"),))


def test_ensemble_soft_targets_are_the_weighted_mean(tiny_teacher, smoke_data):
    other = fresh_student(smoke_data, seed=5)
    temperature, weights = 3.0, (1.0, 3.0)
    combined = ensemble([tiny_teacher, other], weights, temperature)
    x = smoke_data.test.x[:16]
    z1, z2 = tiny_teacher(x).numpy().astype(np.float64), other(x).numpy().astype(np.float64)
    by_hand = (1.0 * softmax(z1 / temperature) + 3.0 * softmax(z2 / temperature)) / 4.0
    np.testing.assert_allclose(softmax(combined(x).numpy() / temperature), by_hand, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.argmax(combined(x).numpy(), -1), np.argmax(by_hand, -1))


def test_only_student_and_projection_weights_change(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    other = fresh_student(smoke_data, seed=7)
    teachers = ensemble([tiny_teacher, other], (1.0, 1.0), 4.0)
    frozen = [w.copy() for w in tiny_teacher.get_weights() + other.get_weights()]
    before = [w.copy() for w in student.get_weights()]
    cfg = DistillConfig(student=STUDENT, hints=(HintConfig(teacher_layer="block2_conv1_relu",
                                                           student_layer="block2_conv1_relu"),),
                        attention=(AttentionConfig(teacher_layer="block1_conv1_relu",
                                                   student_layer="block1_conv1_relu"),))
    distiller = Distiller(student, teachers, temperature=4.0, alpha=0.9, hints=cfg.hints, attention=cfg.attention,
                          feature_teacher=tiny_teacher)
    trainable = {id(v) for v in distiller.trainable_variables}
    assert trainable == {id(v) for v in student.trainable_variables + distiller.projections[0].trainable_variables}
    distill(Teaching(teacher=teachers, config=cfg, feature_teacher=tiny_teacher), student, smoke_data, SCHEDULE)
    for a, b in zip(frozen, tiny_teacher.get_weights() + other.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert all(not np.array_equal(a, b) for a, b in zip(before, student.get_weights()))


def test_unlabelled_samples_add_only_to_the_teacher_terms(tiny_teacher, smoke_data):
    student = fresh_student(smoke_data)
    distiller = Distiller(student, tiny_teacher, temperature=2.0, alpha=0.5)
    x = smoke_data.train.x[:8]
    labels = np.array(list(smoke_data.train.y[:4]) + [-1] * 4)
    teacher_logits = tiny_teacher(x).numpy().astype(np.float64)
    student_logits = student(x).numpy().astype(np.float64)
    loss = float(distiller.compute_loss(x, (tf.constant(labels), tf.constant(teacher_logits, tf.float32)),
                                        tf.constant(student_logits, tf.float32)))
    p_t, p_s = softmax(teacher_logits / 2.0), softmax(student_logits / 2.0)
    kl = np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=-1).mean()  # all eight samples
    ce = -np.log(softmax(student_logits)[np.arange(4), labels[:4]]).mean()  # the four labelled ones
    assert loss == pytest.approx(0.5 * 4.0 * kl + 0.5 * ce, rel=1e-4)


def test_layers_are_found_through_pruning_and_qat_wrappers(smoke_data):
    student = fresh_student(smoke_data)
    pruned = tfmot.sparsity.keras.prune_low_magnitude(clone(student))
    annotated = tfmot.quantization.keras.quantize_annotate_model(clone(student))
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated)
    for wrapped in (pruned, qat):
        layer = find_layer(wrapped, "block2_conv1")
        assert layer is not None and layer.name != "block2_conv1" and layer.layer.name == "block2_conv1"
    assert find_layer(qat, "no_such_layer") is None


def test_every_method_runs_through_pruning_and_qat_and_never_reaches_the_tflite(tmp_path):
    """The smoke build with hints, attention, a two-teacher ensemble, two born-again rounds and unlabelled data."""
    overrides = {
        "distill.hints": "[{teacher_layer: block2_conv1_relu, student_layer: block2_conv1_relu, weight: 0.5}]",
        "distill.attention": "[{teacher_layer: block1_conv1_relu, student_layer: block1_conv1_relu}]",
        "distill.ensemble": "[{model: {arch: cnn, filters: [8, 8], head: flatten}, epochs: 1, seed: 3, weight: 0.5}]",
        "distill.rounds": "2",
        "data.labeled_samples": "400",
        "data.unlabeled": "rest",
    }
    cfg = config.load(SMOKE_RECIPE, overrides)
    log = []
    report = build(cfg, tmp_path, BuildOptions(log=log.append)).report
    for stage in ("ensemble", "distill", "prune", "quantize"):
        assert any(line.startswith(f"[{stage}] done") for line in log), stage
    assert report["ensemble"]["teachers"] == 2 and report["ensemble"]["weights"] == [1.0, 0.5]
    assert report["ensemble"]["extra_teachers_training_seconds"] > 0
    assert [r["round"] for r in report["distill_rounds"]] == [1, 2]
    assert report["data"]["train"] == 400
    tflite = (tmp_path / cfg.name / "convert" / "model.tflite").read_bytes()
    assert b"projection" not in tflite and b"ensemble" not in tflite and b"teacher" not in tflite
    assert report["int8"]["tflm_tflite_top1_agreement"] == 1.0


def test_labeled_samples_keeps_a_stratified_part_and_the_rest_is_unlabelled():
    from tinykd.data import load

    full = load(config.load(SMOKE_RECIPE).data, 0)
    labelled_only = load(config.load(SMOKE_RECIPE, {"data.labeled_samples": "300"}).data, 0)
    data = load(config.load(SMOKE_RECIPE, {"data.labeled_samples": "300", "data.unlabeled": "rest"}).data, 0)
    assert len(labelled_only.train) == 300 and labelled_only.unlabeled is None
    assert len(data.train) == 300 and len(data.unlabeled) == len(full.train) - 300
    np.testing.assert_array_equal(data.train.x, labelled_only.train.x)
    assert len({full.fingerprint, labelled_only.fingerprint, data.fingerprint}) == 3
    assert set(np.unique(data.train.y)) == set(np.unique(full.train.y))  # every class keeps some labels
    with pytest.raises(ConfigError, match="data.labeled_samples: 5000 is not fewer than the 768"):
        load(config.load(SMOKE_RECIPE, {"data.labeled_samples": "5000"}).data, 0)


def test_unlabeled_path_reads_the_same_format(tmp_path):
    from tinykd.data import load

    rng = np.random.default_rng(0)
    labelled = tmp_path / "labelled.npz"
    np.savez(labelled, x_train=rng.normal(size=(200, 6)).astype(np.float32), y_train=rng.integers(0, 3, 200),
             x_test=rng.normal(size=(60, 6)).astype(np.float32), y_test=rng.integers(0, 3, 60))
    extra = tmp_path / "unlabelled.npz"
    np.savez(extra, x=rng.normal(size=(90, 6)).astype(np.float32))  # inputs only: no labels needed
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata: {{format: arrays, path: {labelled}, unlabeled: {extra.name}}}\n")
    data = load(config.load(recipe).data, 0)
    assert data.unlabeled.shape == (90, 6)
    np.testing.assert_allclose(np.sort(data.unlabeled.ravel()), np.sort(np.load(extra)["x"].ravel()))
    recipe.write_text(f"name: r\ndata: {{format: arrays, path: {labelled}, unlabeled: nowhere.npz}}\n")
    with pytest.raises(ConfigError, match=r"data.unlabeled: .*nowhere.npz does not exist"):
        load(config.load(recipe).data, 0)


def test_config_refuses_methods_that_would_be_ignored():
    with pytest.raises(ConfigError, match="distill.rounds: born-again rounds teach through soft targets only"):
        config.load(SMOKE_RECIPE, {"distill.rounds": "2", "distill.alpha": "0"})
    with pytest.raises(ConfigError, match=r"distill.ensemble\[0\].weight: must be positive"):
        config.load(SMOKE_RECIPE, {"distill.ensemble": "[{weight: 0}]"})
    with pytest.raises(ConfigError, match="data.unlabeled: 'rest' means the training samples beyond labeled_samples"):
        config.load(SMOKE_RECIPE, {"data.unlabeled": "rest"})
    with pytest.raises(ConfigError, match=r"distill.hint: unknown key \(did you mean 'hints'\?\)"):
        config.load(SMOKE_RECIPE, {"distill.hint": "{teacher_layer: a, student_layer: b}"})
