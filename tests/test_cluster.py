"""Clustering with the real TFMOT, distilled from a real teacher, then converted with the real TFLite converter."""

import numpy as np
import pytest

from tinykd import models
from tinykd.cluster import cluster, unique_kernel_values
from tinykd.config import DistillConfig, ModelConfig, PruneConfig
from tinykd.convert import convert
from tinykd.distill import Schedule, Teaching
from tinykd.keras_shim import keras, tfmot
from tinykd.lut import unique_values_per_channel
from tinykd.prune import prune, sparsity
from tinykd.qat import quantize_scheme

CLUSTERS = 8
# The first conv (3x3x1x16 = 144 weights) is clustered too; the classifier is a conv over the pooled map.
STUDENT = ModelConfig(filters=(16, 32), head="pool_flatten")
DISTILL = DistillConfig(student=STUDENT)
SCHEDULE = Schedule(epochs=1, batch_size=64, learning_rate=1e-3, seed=0)


def _weights(model):
    return [w.copy() for w in model.get_weights()]


@pytest.fixture(scope="module")
def student(smoke_data):
    keras.utils.set_random_seed(3)
    return models.build(STUDENT, smoke_data.input_shape, smoke_data.num_classes, "student")


@pytest.fixture(scope="module")
def before(student, tiny_teacher):
    """The student's and the teacher's weights before clustering runs."""
    return _weights(student), _weights(tiny_teacher)


@pytest.fixture(scope="module")
def clustered(before, student, tiny_teacher, smoke_data):
    return cluster(student, Teaching(teacher=tiny_teacher, config=DISTILL), smoke_data, CLUSTERS, SCHEDULE)


def test_every_kernel_has_at_most_n_values(student, clustered):
    counts = unique_kernel_values(clustered)
    assert set(counts) == {"block1_conv1/kernel", "block2_conv1/kernel", "classifier/kernel"}
    assert all(count <= CLUSTERS for count in counts.values()), counts
    assert all(count > CLUSTERS for count in unique_kernel_values(student).values())  # the input was not clustered
    assert not any("Cluster" in type(layer).__name__ for layer in clustered.layers)  # stripped


def test_inputs_are_unchanged_and_the_clone_learned(before, student, tiny_teacher, clustered):
    student_before, teacher_before = before
    for old, new in zip(student_before, student.get_weights()):
        np.testing.assert_array_equal(old, new)
    for old, new in zip(teacher_before, tiny_teacher.get_weights()):
        np.testing.assert_array_equal(old, new)
    # Batch norm is not clustered, so a moved beta shows that the distillation fine-tuning ran on the clone.
    assert not np.array_equal(clustered.get_layer("block1_conv1_bn").beta.numpy(),
                              student.get_layer("block1_conv1_bn").beta.numpy())


def test_int8_channels_keep_at_most_n_values(clustered, smoke_data):
    tflite = convert(clustered, smoke_data.train.x[:32])
    counts = unique_values_per_channel(tflite)
    assert len(counts) == 3  # two convs and the classifier, batch norm folded into the first two
    assert all(2 <= count <= CLUSTERS for count in counts.values()), counts


def test_a_pruned_student_keeps_its_zeros(student, tiny_teacher, smoke_data):
    cfg = PruneConfig(target_sparsity=0.5, epochs=1, batch_size=64, frequency_steps=2)
    teaching = Teaching(teacher=tiny_teacher, config=DISTILL)
    pruned = prune(student, teaching, smoke_data, cfg, Schedule.of(cfg, seed=0))
    clustered = cluster(pruned, teaching, smoke_data, CLUSTERS, SCHEDULE)
    assert sparsity(clustered) == pytest.approx(sparsity(pruned), abs=0.02)
    assert all(count <= CLUSTERS for count in unique_kernel_values(clustered).values())


def test_cluster_preserving_qat_keeps_the_clusters(clustered, tiny_teacher, smoke_data):
    """What quantize() does with the scheme cluster-preserving QAT needs: the int8 channels stay clustered."""
    from tinykd.distill import distill

    annotated = tfmot.quantization.keras.quantize_annotate_model(clustered)
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(
            annotated, quantize_scheme(clustered=True, preserve_sparsity=False))
    distill(Teaching(teacher=tiny_teacher, config=DISTILL), qat, smoke_data, SCHEDULE)
    counts = unique_values_per_channel(convert(qat, smoke_data.train.x[:32]))
    assert all(count <= CLUSTERS for count in counts.values()), counts


def test_quantize_scheme_matches_what_came_before():
    combine = tfmot.experimental.combine
    both = quantize_scheme(clustered=True, preserve_sparsity=True)
    assert type(both) is combine.Default8BitClusterPreserveQuantizeScheme and both.preserve_sparsity
    assert not quantize_scheme(clustered=True, preserve_sparsity=False).preserve_sparsity
    assert type(quantize_scheme(clustered=False, preserve_sparsity=True)) is \
        combine.Default8BitPrunePreserveQuantizeScheme
    assert type(quantize_scheme(clustered=False, preserve_sparsity=False)) is \
        tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme


def test_too_few_clusters_is_refused(student, tiny_teacher, smoke_data):
    with pytest.raises(ValueError, match="at least 2"):
        cluster(student, Teaching(teacher=tiny_teacher, config=DISTILL), smoke_data, 1, SCHEDULE)
