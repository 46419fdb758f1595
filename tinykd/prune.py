"""Pruning, fine-tuned with the distillation loss: TFMOT magnitude pruning, or structured (filter) pruning.

Magnitude pruning zeroes weights; it does not make a dense int8 .tflite smaller or faster on TFLite Micro. The
report says what pruning really saved by measuring the converted model, not by counting zeros. Structured pruning
removes whole filters (tinykd.structured), so the board runs fewer MACs from fewer bytes.
"""

from __future__ import annotations

import numpy as np

from dataclasses import replace

from tinykd.config import DistillConfig, PruneConfig
from tinykd.data import Dataset
from tinykd.distill import Schedule, distill
from tinykd.keras_shim import keras, tfmot


def prune(student, teacher, data: Dataset, cfg: PruneConfig, distill_cfg: DistillConfig, schedule: Schedule,
          feature_teacher=None):
    """Prune a clone of `student` to `cfg.target_sparsity` while distilling from `teacher`; returns the stripped clone.

    Hints and attention carry on through the pruning wrappers (layers are found by their original names).
    """
    steps_per_epoch = -(-len(data.train) // schedule.batch_size)
    total_steps = schedule.epochs * steps_per_epoch
    # Reach the target by 70% of the steps so the last epochs fine-tune at the final sparsity.
    end_step = max(1, int(total_steps * 0.7))
    sparsity_schedule = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=cfg.initial_sparsity, final_sparsity=cfg.target_sparsity, begin_step=0,
        end_step=end_step, frequency=min(cfg.frequency_steps, end_step))
    student = clone(student)  # TFMOT wraps the given layer objects, so training would change the caller's model
    pruned = tfmot.sparsity.keras.prune_low_magnitude(student, pruning_schedule=sparsity_schedule)
    distill(teacher, pruned, data, distill_cfg, schedule, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()],
            feature_teacher=feature_teacher)
    return tfmot.sparsity.keras.strip_pruning(pruned)


def prune_structured(student, teacher, data: Dataset, cfg: PruneConfig, distill_cfg: DistillConfig,
                     schedule: Schedule, measure, feature_teacher=None):
    """Remove filters step by step until `cfg.budget` is met, recovering with distillation after each step.

    Args:
        measure: model -> {"macs": ..., "tflite_bytes": ..., "latency_ms": ...}, what the budget is checked on
            (the pipeline converts to int8 and asks `tinykd report` for the latency).

    Returns:
        (model, steps): the last step kept, and one record per step tried (channels, MACs, bytes, latency,
        validation accuracy, whether it was kept); with `cfg.rewind_epochs` the last kept step also has
        `rewind_epochs` and `rewound_val_accuracy`.
    """
    from tinykd.distill import accuracy
    from tinykd.structured import plan, thin

    reference = accuracy(student, data.val)
    current = clone(student)
    steps = [{"step": 0, "val_accuracy": reference, **measure(current), "kept": True}]
    for number in range(1, cfg.max_steps + 1):
        if cfg.budget is not None and within_budget(cfg.budget, steps[-1]):
            break
        thinned, _ = thin(current, plan(current, cfg.step_fraction, cfg.score, cfg.scope))
        distill(teacher, thinned, data, distill_cfg, replace(schedule, seed=schedule.seed + number),
                feature_teacher=feature_teacher)
        step = {"step": number, "val_accuracy": accuracy(thinned, data.val), **measure(thinned)}
        step["kept"] = reference - step["val_accuracy"] <= cfg.max_accuracy_drop
        steps.append(step)
        if not step["kept"]:
            break  # this step cost too much: the previous model stays
        current = thinned
    if cfg.rewind_epochs and len(steps) > 1 and steps[1]["kept"]:
        # Learning-rate rewinding: the thinned model retrains on the distillation's own learning rate.
        distill(teacher, current, data, distill_cfg,
                replace(schedule, epochs=cfg.rewind_epochs, learning_rate=distill_cfg.learning_rate,
                        seed=schedule.seed + len(steps)), feature_teacher=feature_teacher)
        kept = [step for step in steps if step["kept"]][-1]
        kept["rewind_epochs"] = cfg.rewind_epochs
        kept["rewound_val_accuracy"] = accuracy(current, data.val)
    return current, steps


def within_budget(budget, measured: dict) -> bool:
    """Whether every figure the budget sets is met."""
    return all(getattr(budget, key) is None or measured[key] <= getattr(budget, key)
               for key in ("macs", "tflite_bytes", "latency_ms"))


def clone(model):
    """An independent copy of a Keras model, weights included."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def sparsity(model) -> float:
    """Fraction of zero weights in the kernels pruning acts on (conv, depthwise and dense kernels)."""
    zeros = total = 0
    for layer in model.layers:
        for weight in layer.weights:
            if "kernel" in weight.name:
                values = weight.numpy()
                zeros += int(np.count_nonzero(values == 0))
                total += values.size
    return zeros / total if total else 0.0
