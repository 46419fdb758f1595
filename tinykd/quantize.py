"""INT8 quantization-aware training with TFMOT, distilling from the teacher throughout.

A pruned student uses TFMOT's pruning-preserving scheme, so QAT does not refill the zeros pruning made.
"""

from __future__ import annotations

from tinykd.config import DistillConfig
from tinykd.data import Dataset
from tinykd.distill import Schedule, distill
from tinykd.keras_shim import keras, tfmot
from tinykd.prune import clone


def quantize(student, teacher, data: Dataset, distill_cfg: DistillConfig, schedule: Schedule, scheme=None,
             feature_teacher=None):
    """A quantization-aware clone of `student`, fine-tuned with the distillation loss (hints and attention too,
    through the QAT wrappers).

    `scheme` is the TFMOT scheme that keeps what earlier stages made (tinykd.cluster.quantize_scheme: zeros,
    clusters, both); None is the plain default 8-bit scheme.
    """
    qat = quantization_aware(student, scheme)
    distill(teacher, qat, data, distill_cfg, schedule, feature_teacher=feature_teacher)
    return qat


def quantization_aware(student, scheme=None):
    """An untrained quantization-aware clone of `student` under `scheme` (None: the default 8-bit scheme)."""
    from tinykd.cluster import quantize_scheme

    annotated = tfmot.quantization.keras.quantize_annotate_model(clone(student))
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(
            annotated, scheme or quantize_scheme(clustered=False, preserve_sparsity=False))


def load_model(path):
    """Load any model tinykd saved, including quantization-aware ones."""
    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)


def fix_input_range(qat, low: float, high: float) -> None:
    """Pin a quantization-aware model's input quantizer to [low, high] (it otherwise keeps the range it saw).

    An audio model's int8 input must be the front-end's int8 feature itself, so the converted input scale and
    zero point have to be exact: [0, 255/256] gives scale 1/256 and zero point -128.
    """
    layer = next((layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"), None)
    ends = {v.name.split(":")[0].rsplit("_", 1)[-1]: v for v in (layer.weights if layer else [])}
    if "min" not in ends or "max" not in ends:
        raise ValueError(f"{qat.name}: no input quantizer with min/max variables to pin")
    ends["min"].assign(low)
    ends["max"].assign(high)
