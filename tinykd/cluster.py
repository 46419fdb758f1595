"""Weight clustering with TFMOT, fine-tuned with the distillation loss, then stripped to a plain Keras model.

Clustering leaves each kernel with at most `clusters` distinct values. Like pruning, that does not make a dense
int8 .tflite smaller by itself: TFLM's LUT compression (tinykd.lut) turns it into 2-4 bit indices. Batch norm
folding and per-channel int8 quantization scale each output channel by one factor, so the converted kernel keeps
at most `clusters` values per channel (tinykd.lut.unique_values_per_channel checks it).

TFMOT clusters Conv2D, Dense and the pointwise half of separable convolutions; it leaves DepthwiseConv2D
kernels alone (a 3x3 one has at most 9 values per channel anyway), and a Conv2D with no more weights than
clusters.
"""

from __future__ import annotations

import numpy as np

from tinykd import artifacts, config
from tinykd.artifacts import Run
from tinykd.data import Dataset
from tinykd.distill import Schedule, Student, Teaching, distill, float_stage
from tinykd.keras_shim import tfmot
from tinykd.models import clone
from tinykd.prune import sparsity

_KERNELS = {"kernel", "depthwise_kernel", "pointwise_kernel"}


def stage(run: Run, cfg: config.Config, data: Dataset, teaching: Teaching, student: Student) -> Student:
    """The cluster stage: shared weight values per kernel, so LUT compression can store indices."""

    def train():
        clustered = cluster(student.model, teaching, data, cfg.cluster.clusters,
                            Schedule.of_recipe(cfg.cluster, cfg, run))
        return clustered, {"most_values_per_kernel": max(unique_kernel_values(clustered).values())}

    return float_stage(run, "cluster", artifacts.key("cluster", config.as_dict(cfg.cluster), student.run_id), data,
                       train)


def cluster(student, teaching: Teaching, data: Dataset, clusters: int, schedule: Schedule):
    """Cluster a clone of `student` to `clusters` values per kernel while distilling from `teaching`.

    A pruned student (one with zero kernel weights) keeps its zeros: TFMOT then reserves one of the clusters
    for zero, and quantization-aware training must use
    `tinykd.qat.quantize_scheme(clustered=True, preserve_sparsity=True)`.

    Returns:
        The stripped clone; neither `student` nor `teacher` changes.
    """
    if clusters < 2:
        raise ValueError(f"clusters={clusters}: clustering needs at least 2 clusters")
    student = clone(student)  # TFMOT wraps the given layer objects, so training would change the caller's model
    clustered = tfmot.clustering.keras.cluster_weights(
        student, number_of_clusters=clusters,
        # k-means++ places centroids where the weights are dense; TFMOT seeds it, so the result is repeatable.
        cluster_centroids_init=tfmot.clustering.keras.CentroidInitialization.KMEANS_PLUS_PLUS,
        preserve_sparsity=sparsity(student) > 0.0)
    distill(teaching, clustered, data, schedule)
    return tfmot.clustering.keras.strip_clustering(clustered)


def unique_kernel_values(model) -> dict[str, int]:
    """Distinct float values per kernel (conv, depthwise and dense), by weight name ("block1_conv1/kernel")."""
    return {f"{layer.name}/{_short(weight)}": len(np.unique(weight.numpy()))
            for layer in model.layers for weight in layer.weights if _short(weight) in _KERNELS}


def _short(weight) -> str:
    """A weight's own name without scope or index: stripped clones name theirs "kernel:0", originals
    "block1_conv1/kernel:0"."""
    return weight.name.split("/")[-1].split(":")[0]
