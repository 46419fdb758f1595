"""INT8 quantization-aware training with TFMOT, distilling from the teacher throughout.

The QAT scheme is chosen here, once (`quantize_scheme`, from the recipe by `scheme_for`): it keeps what earlier
stages made, so QAT does not refill pruning's zeros or undo clustering's shared values.
"""

from __future__ import annotations

import numpy as np

from tinykd import artifacts, config
from tinykd.artifacts import Run
from tinykd.data import Dataset
from tinykd.distill import Schedule, Student, Teaching, distill, model_metrics
from tinykd.keras_shim import keras, tfmot
from tinykd.models import load_model  # noqa: F401 - load_model is part of tinykd.quantize's API


def stage(run: Run, cfg: config.Config, data: Dataset, teaching: Teaching, student: Student) -> Student:
    """The quantize stage: INT8 quantization-aware training, still distilling (keeping zeros and clusters).

    The model handed on is ready for conversion: for an audio recipe its input quantizer is pinned to the
    front-end's int8 grid (`pin_input_range`), so the converted input takes the firmware's int8 features as they are.
    """
    scheme = scheme_for(cfg)

    def compute():
        run.log("[quantize] running")
        qat = quantize(student.model, teaching, data, Schedule.of_recipe(cfg.quantize, cfg, run), scheme)
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


def quantize(student, teaching: Teaching, data: Dataset, schedule: Schedule, scheme=None):
    """A quantization-aware clone of `student`, fine-tuned with the distillation loss (hints and attention too,
    through the QAT wrappers).

    `scheme` is the TFMOT scheme that keeps what earlier stages made (`quantize_scheme`: zeros, clusters, both);
    None is the plain default 8-bit scheme.
    """
    qat = quantization_aware(student, scheme)
    # Under a distribution strategy the trained copy is made the same way, not cloned from its config, which
    # cluster-preserving quantizers do not survive.
    distill(teaching, qat, data, schedule, copy=lambda: quantization_aware(student, scheme))
    return qat


def scheme_for(cfg: config.Config):
    """The QAT scheme of a recipe: keep magnitude pruning's zeros and clustering's shared values."""
    return quantize_scheme(clustered=cfg.cluster is not None,
                           preserve_sparsity=cfg.prune is not None and cfg.prune.method == "magnitude")


def quantize_scheme(*, clustered: bool, preserve_sparsity: bool):
    """The TFMOT QAT scheme that keeps what earlier stages made: clusters, zeros, both (PCQAT) or neither."""
    if clustered:
        # preserve_sparsity=True is TFMOT's prune- and cluster-preserving QAT (PCQAT).
        return tfmot.experimental.combine.Default8BitClusterPreserveQuantizeScheme(
            preserve_sparsity=preserve_sparsity)
    if preserve_sparsity:
        return tfmot.experimental.combine.Default8BitPrunePreserveQuantizeScheme()
    return tfmot.quantization.keras.default_8bit.Default8BitQuantizeScheme()


@keras.utils.register_keras_serializable(package="tinykd")
class SameScalePooling(tfmot.quantization.keras.QuantizeConfig):
    """Average pooling quantized at its input's scale: no output quantizer of its own.

    TFMOT's default 8-bit scheme gives AveragePooling2D an output quantizer with a learned range, but an int8
    AVERAGE_POOL_2D keeps its input's scale, so the converter appends a QUANTIZE op to reach the learned one: one
    more kernel linked into the firmware (an estimated 1.5 KB of flash) and one more op run, which post-training
    quantization never adds. Without the quantizer the pooled output keeps the input's scale, as after post-training
    quantization (and as TFMOT already does for max pooling). GlobalAveragePooling2D converts to MEAN, which
    rescales by itself, so it keeps TFMOT's quantizer.
    """

    def get_weights_and_quantizers(self, layer):
        return []

    def get_activations_and_quantizers(self, layer):
        return []

    def set_quantize_weights(self, layer, quantize_weights):
        pass

    def set_quantize_activations(self, layer, quantize_activations):
        pass

    def get_output_quantizers(self, layer):
        return []

    def get_config(self):
        return {}


def quantization_aware(student, scheme=None):
    """An untrained quantization-aware clone of `student` under `scheme` (None: the default 8-bit scheme), its
    average pooling kept at its input's scale (`SameScalePooling`)."""
    def annotate(layer):
        copy = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, keras.layers.AveragePooling2D):
            return tfmot.quantization.keras.quantize_annotate_layer(copy, SameScalePooling())
        return copy

    pooled = keras.models.clone_model(student, clone_function=annotate)
    pooled.set_weights(student.get_weights())
    annotated = tfmot.quantization.keras.quantize_annotate_model(pooled)
    with tfmot.quantization.keras.quantize_scope():
        return tfmot.quantization.keras.quantize_apply(
            annotated, scheme or quantize_scheme(clustered=False, preserve_sparsity=False))


def _reload(student, path, scheme, cfg: config.Config):
    """The saved QAT model. Cluster-preserving quantizers do not survive Keras' config round trip (tf-keras 2.21 +
    TFMOT 0.8.1 rebuild them with fewer variables), so a clustered one is rebuilt from its float student and
    given the saved weights."""
    if cfg.cluster is None:
        return load_model(path)
    model = quantization_aware(student, scheme)
    model.load_weights(path)
    return model


def pin_input_range(qat, low: float, high: float) -> None:
    """Pin a quantization-aware model's input quantizer to [low, high] (it otherwise keeps the range it saw).

    An audio model's int8 input must be the front-end's int8 feature itself, so the converted input scale and
    zero point have to be exact: [0, 255/256] gives scale 1/256 and zero point -128. TFMOT's public
    `fix_input_output_range` rebuilds the model from its config and fixes the output range too, so the input
    quantizer's two variables are set here instead.
    """
    layer = next((layer for layer in qat.layers if type(layer).__name__ == "QuantizeLayer"), None)
    ends = {v.name.split(":")[0].rsplit("_", 1)[-1]: v for v in (layer.weights if layer else [])}
    if "min" not in ends or "max" not in ends:
        raise ValueError(f"{qat.name}: no input quantizer with min/max variables to pin")
    ends["min"].assign(low)
    ends["max"].assign(high)
