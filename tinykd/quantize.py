"""INT8 quantization-aware training with TFMOT, distilling from the teacher throughout.

A pruned student uses TFMOT's pruning-preserving scheme, so QAT does not refill the zeros pruning made.
"""

from __future__ import annotations

from dataclasses import replace

from tinykd.config import DistillConfig
from tinykd.data import Dataset
from tinykd.distill import Schedule, distill
from tinykd.keras_shim import keras, tfmot
from tinykd.prune import clone


def quantize(student, teacher, data: Dataset, distill_cfg: DistillConfig, schedule: Schedule,
             preserve_sparsity: bool):
    """A quantization-aware clone of `student`, fine-tuned with the distillation loss (hints off)."""
    annotated = tfmot.quantization.keras.quantize_annotate_model(clone(student))
    if preserve_sparsity:
        scheme = tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    else:
        scheme = tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()
    with tfmot.quantization.keras.quantize_scope():
        qat = tfmot.quantization.keras.quantize_apply(annotated, scheme)
    distill(teacher, qat, data, replace(distill_cfg, hint=None), schedule)
    return qat


def load_model(path):
    """Load any model tinykd saved, including quantization-aware ones."""
    with tfmot.quantization.keras.quantize_scope():
        return keras.models.load_model(path, compile=False)
