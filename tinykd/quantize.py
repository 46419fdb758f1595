"""The quantize stage: INT8 quantization-aware training with TFMOT, distilling from the teacher throughout.

The QAT scheme is chosen here, once (`scheme_for`, from the recipe; the schemes and the annotation are in
tinykd.qat): it keeps what earlier stages made, so QAT does not refill pruning's zeros or undo clustering's shared
values.
"""

from __future__ import annotations

import numpy as np

from tinykd import artifacts, config
from tinykd.artifacts import Run
from tinykd.data import Dataset
from tinykd.distill import Schedule, Student, Teaching, distill, model_metrics
from tinykd.models import load_model  # noqa: F401 - load_model is part of tinykd.quantize's API
from tinykd.qat import calibrate_ranges, pin_input_range, quantization_aware, quantize_scheme

CALIBRATION_SAMPLES = 1000  # training inputs that set the activation ranges QAT starts from (quantize.calibrate_ranges)


def stage(run: Run, cfg: config.Config, data: Dataset, teaching: Teaching, student: Student) -> Student:
    """The quantize stage: INT8 quantization-aware training, still distilling (keeping zeros and clusters).

    The model handed on is ready for conversion: for an audio recipe its input quantizer is pinned to the
    front-end's int8 grid (`pin_input_range`), so the converted input takes the firmware's int8 features as they are.
    """
    scheme = scheme_for(cfg)

    def compute():
        run.log("[quantize] running")
        qat = quantize(student.model, teaching, data, Schedule.of_recipe(cfg.quantize, cfg, run), scheme,
                       calibrate=cfg.quantize.calibrate_ranges)
        return qat, model_metrics(qat, data)

    def load(folder):
        qat = _reload(student.model, folder / "quantize.h5", scheme, cfg)
        if cfg.frontend is not None:
            from tinykd.audio import to_model_input

            low, high = (float(to_model_input(np.array([edge], dtype=np.int8))[0]) for edge in (-128, 127))
            pin_input_range(qat, low, high)
        return qat

    # Keras' .keras format loses a QAT model's quantizer variables (tf-keras 2.21 + TFMOT 0.8.1); HDF5 keeps them.
    done = run.step("quantize", artifacts.key("quantize", config.as_dict(cfg.quantize), student.run_id), compute,
                    save=lambda folder, qat: artifacts.save_model(qat, folder / "quantize.h5"), load=load,
                    artifact="quantize.h5")
    return Student(done.value, done.run_id)


def quantize(student, teaching: Teaching, data: Dataset, schedule: Schedule, scheme=None, calibrate: bool = False):
    """A quantization-aware clone of `student`, fine-tuned with the distillation loss (hints and attention too,
    through the QAT wrappers).

    `scheme` is the TFMOT scheme that keeps what earlier stages made (`quantize_scheme`: zeros, clusters, both);
    None is the plain default 8-bit scheme. `calibrate` starts the activation ranges at the float student's
    (`calibrate_ranges`, on `CALIBRATION_SAMPLES` seeded training inputs) instead of TFMOT's [-6, 6].
    """
    qat = quantization_aware(student, scheme)
    if calibrate:
        calibrate_ranges(qat, data.train.sample_inputs(CALIBRATION_SAMPLES, schedule.seed))
    # Under a distribution strategy the trained copy is made the same way, not cloned from its config, which
    # cluster-preserving quantizers do not survive.
    distill(teaching, qat, data, schedule, copy=lambda: quantization_aware(student, scheme))
    return qat


def scheme_for(cfg: config.Config):
    """The QAT scheme of a recipe: keep magnitude pruning's zeros and clustering's shared values."""
    return quantize_scheme(clustered=cfg.cluster is not None,
                           preserve_sparsity=cfg.prune is not None and cfg.prune.method == "magnitude")


def _reload(student, path, scheme, cfg: config.Config):
    """The saved QAT model. Cluster-preserving quantizers do not survive Keras' config round trip (tf-keras 2.21 +
    TFMOT 0.8.1 rebuild them with fewer variables), so a clustered one is rebuilt from its float student and
    given the saved weights."""
    if cfg.cluster is None:
        return load_model(path)
    model = quantization_aware(student, scheme)
    model.load_weights(path)
    return model
