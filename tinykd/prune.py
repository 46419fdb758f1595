"""Pruning, fine-tuned with the distillation loss: TFMOT magnitude pruning, or structured (filter) pruning.

Magnitude pruning zeroes weights; it does not make a dense int8 .tflite smaller or faster on TFLite Micro. The
report says what pruning really saved by measuring the converted model, not by counting zeros. Structured pruning
removes whole filters (tinykd.structured), so the board runs fewer MACs from fewer bytes.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tinykd import artifacts, config, models
from tinykd.artifacts import Run
from tinykd.config import PruneConfig
from tinykd.data import Dataset
from tinykd.distill import Schedule, Student, Teaching, accuracy, distill, float_stage
from tinykd.errors import ModelError
from tinykd.keras_shim import tfmot
from tinykd.models import clone  # noqa: F401 - part of tinykd.prune's API


def stage(run: Run, cfg: config.Config, data: Dataset, teaching: Teaching, student: Student) -> Student:
    """The prune stage: magnitude pruning to the target sparsity, or structured pruning to a budget, fine-tuned
    with the distillation loss."""

    def train():
        schedule = Schedule.of_recipe(cfg.prune, cfg, run)
        if cfg.prune.method == "magnitude":
            pruned = prune(student.model, teaching, data, cfg.prune, schedule)
            return pruned, {"method": "magnitude", "sparsity": round(sparsity(pruned), 4)}
        board = (cfg.prune.budget.board if cfg.prune.budget else None) or cfg.target.board
        pruned, steps = prune_structured(student.model, teaching, data, cfg.prune, schedule,
                                         measure=lambda model: _budget_figures(model, data, cfg, board))
        for step in steps[1:]:
            run.log(f"[prune] step {step['step']} ({step['fraction']:.1%} of filters): {step['macs']:,} MACs, "
                    f"{step['tflite_bytes']:,} B, {step['latency_ms']:.2f} ms on {board}, "
                    f"val {step['val_accuracy']:.4f}"
                    + ("" if step["kept"] else " (over max_accuracy_drop: undone)")
                    + (f"; after {step['rewind_epochs']} rewind epochs val {step['rewound_val_accuracy']:.4f}"
                       if "rewind_epochs" in step else ""))
        stalled = cfg.prune.budget is None and steps[-1]["kept"] and len(steps) - 1 < cfg.prune.max_steps
        if stalled:
            run.log(f"[prune] stopped after step {len(steps) - 1} of {cfg.prune.max_steps}: another "
                    f"{cfg.prune.step_fraction:.0%} of every layer rounds back to the whole layer at channel_multiple "
                    f"{cfg.prune.channel_multiple}")
        return pruned, {"method": "structured", "sparsity": round(sparsity(pruned), 4), "steps": steps,
                        "budget_board": board,
                        "budget_met": None if cfg.prune.budget is None
                        else cfg.prune.budget.met_by([s for s in steps if s["kept"]][-1])}

    return float_stage(run, "prune", artifacts.key("prune", config.as_dict(cfg.prune), student.run_id), data, train)


def _budget_figures(model, data: Dataset, cfg: config.Config, board: str) -> dict:
    """MACs, and the int8 .tflite bytes and latency estimate of `tinykd report` (post-training quantized on 100
    training samples: the figures QAT does not change)."""
    from tinykd.convert import int8_model
    from tinykd.report import report

    tflite = int8_model(model, data, cfg, 100)
    estimate = report(tflite, board)
    return {"macs": models.count_macs(model), "tflite_bytes": len(tflite), "latency_ms": round(estimate.latency_ms, 3)}


def prune(student, teaching: Teaching, data: Dataset, cfg: PruneConfig, schedule: Schedule):
    """Prune a clone of `student` to `cfg.target_sparsity` while distilling from `teaching`; returns the stripped
    clone.

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
    try:
        pruned = tfmot.sparsity.keras.prune_low_magnitude(student, pruning_schedule=sparsity_schedule)
    except ValueError as error:  # TFMOT names only the class of a layer it does not know (a custom one)
        named = [layer for layer in student.layers if f"{type(layer).__module__}.{type(layer).__qualname__}'"
                 in str(error)]
        what = f"layer {named[0].name!r} ({type(named[0]).__name__})" if named else f"a layer ({error})"
        raise ModelError(f"prune: TFMOT cannot prune {what}; give the layer a get_prunable_weights() method "
                         "returning the weights to prune ([] for none), replace it with built-in Keras layers, or "
                         "set prune: none") from None
    distill(teaching, pruned, data, schedule, callbacks=[tfmot.sparsity.keras.UpdatePruningStep()])
    return tfmot.sparsity.keras.strip_pruning(pruned)


def prune_structured(student, teaching: Teaching, data: Dataset, cfg: PruneConfig, schedule: Schedule, measure):
    """Remove filters step by step until `cfg.budget` is met, recovering with distillation after each step.

    Without a budget, `cfg.max_steps` steps, or fewer when the next would remove no filter (the narrowest widths
    `cfg.channel_multiple` allows); with one, such a step is an error, as the budget can no longer be met.

    Args:
        measure: model -> {"macs": ..., "tflite_bytes": ..., "latency_ms": ...}, what the budget is checked on
            (the pipeline converts to int8 and asks `tinykd report` for the latency).

    Returns:
        (model, steps): the last step kept, and one record per step tried (channels, MACs, bytes, latency,
        validation accuracy, whether it was kept); with `cfg.rewind_epochs` the last kept step also has
        `rewind_epochs` and `rewound_val_accuracy`.
    """
    from tinykd.structured import thin

    measure = _by_shape(measure)
    reference = accuracy(student, data.val)
    current = clone(student)
    steps = [{"step": 0, "val_accuracy": reference, **measure(current), "kept": True}]
    for number in range(1, cfg.max_steps + 1):
        if cfg.budget is not None and cfg.budget.met_by(steps[-1]):
            break
        fraction = cfg.step_fraction
        keep = _plan(current, fraction, cfg)
        widths = {name: current.get_layer(name).output.shape[-1] for name in keep}
        if all(len(kept) == widths[name] for name, kept in keep.items()):
            if cfg.budget is None and number > 1:
                break  # no budget to meet: the narrowest widths the multiple allows end the steps, kept
            raise ModelError(f"prune step {number} would remove no filter: with channel_multiple "
                             f"{cfg.channel_multiple}, {cfg.step_fraction:.0%} of every layer's filters "
                             f"({', '.join(f'{name} {width}' for name, width in widths.items())}) rounds back to "
                             "the whole layer; raise prune.step_fraction or lower prune.channel_multiple")
        thinned, _ = thin(current, keep)
        if cfg.budget is not None and cfg.budget.met_by(measure(thinned)):
            fraction = _least_fraction(current, cfg, measure)
            thinned, _ = thin(current, _plan(current, fraction, cfg))
        distill(teaching, thinned, data, replace(schedule, seed=schedule.seed + number))
        step = {"step": number, "fraction": round(fraction, 4), "val_accuracy": accuracy(thinned, data.val),
                **measure(thinned)}
        step["kept"] = reference - step["val_accuracy"] <= cfg.max_accuracy_drop
        steps.append(step)
        if not step["kept"]:
            break  # this step cost too much: the previous model stays
        current = thinned
    if cfg.rewind_epochs and len(steps) > 1 and steps[1]["kept"]:
        # Learning-rate rewinding: the thinned model retrains on the distillation's own learning rate.
        distill(teaching, current, data,
                replace(schedule, epochs=cfg.rewind_epochs, learning_rate=teaching.config.learning_rate,
                        seed=schedule.seed + len(steps)))
        kept = [step for step in steps if step["kept"]][-1]
        kept["rewind_epochs"] = cfg.rewind_epochs
        kept["rewound_val_accuracy"] = accuracy(current, data.val)
    return current, steps


def _plan(model, fraction: float, cfg: PruneConfig) -> dict:
    """tinykd.structured.plan with the recipe's score, scope and channel multiple."""
    from tinykd.structured import plan

    return plan(model, fraction, cfg.score, cfg.scope, cfg.channel_multiple)


def _by_shape(measure):
    """`measure`, asked once per architecture: bytes, MACs and latency depend on the layers' shapes alone, and a
    step measures the same shapes before and after its fine-tuning, as bisection does the share it settles on
    (each answer is an int8 conversion and an estimate, seconds)."""
    answers = {}

    def measured(model) -> dict:
        shapes = tuple((type(layer).__name__, tuple(tuple(w.shape) for w in layer.weights)) for layer in model.layers)
        if shapes not in answers:
            answers[shapes] = measure(model)
        return dict(answers[shapes])

    return measured


def _least_fraction(model, cfg: PruneConfig, measure, halvings: int = 6) -> float:
    """The smallest share of channels, at most `cfg.step_fraction`, whose removal from `model` meets the budget.

    The last step removes only what the budget needs, so the board gets the most filters it can afford instead of
    a whole step's fewer. Bytes, MACs and latency depend on the shapes alone, so the untrained thinned model is
    measured (a conversion and an estimate each, seconds); bisection to 1/64 of a step.
    """
    from tinykd.structured import least_fraction, thin

    return least_fraction(lambda share: cfg.budget.met_by(measure(thin(model, _plan(model, share, cfg))[0])),
                          cfg.step_fraction, halvings)


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
