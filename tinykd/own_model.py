"""Your own Keras model as teacher or student: from a file (`path:`) or a function (`factory: module:function`).

The model is checked once, where it is made, against the data and against what the later stages need, and every
error names the recipe key: it must be a tf-keras model taking the data's inputs and giving one logit per class;
a Sequential model becomes a Functional one with the same layers (structured pruning walks a Functional graph);
a model used as a layer (nested) is flattened into its parent, its layers keeping their names, so hints can name
them and TFMOT, which cannot quantize a model inside a model, sees plain layers; and `check_quantizable` asks TFMOT
itself, before any training, whether it can make the model quantization-aware.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

from tinykd.config import find_module
from tinykd.errors import ModelError


def is_own(model_cfg) -> bool:
    """Whether a ModelConfig names your own model rather than a zoo architecture."""
    return model_cfg.path is not None or model_cfg.factory is not None


def build(model_cfg, input_shape: tuple[int, ...], num_classes: int, key: str, seed: int | None = None):
    """Your model, loaded from `path` or made by `factory`, checked and flattened (see the module docstring).

    Args:
        key: the recipe key of the model section (e.g. "distill.student"), named by every error.
        seed: seeds Keras before the factory runs, so its initial weights are the same on every build.

    Raises:
        ModelError: the file cannot be loaded, the factory cannot be found or fails, or the model does not fit.
    """
    from tinykd.keras_shim import keras

    if model_cfg.path is not None:
        where = f"{key}.path: {model_cfg.path}"
        model = _load(Path(model_cfg.path).expanduser(), key)
    else:
        where = f"{key}.factory: {model_cfg.factory}"
        function = _factory(model_cfg.factory, model_cfg.module_dir, key)
        if seed is not None:
            keras.utils.set_random_seed(seed)
        try:
            model = function(tuple(input_shape), num_classes)
        except Exception as error:  # noqa: BLE001 - the user's code may raise anything; we name it and stop
            raise ModelError(f"{where}: the factory raised {type(error).__name__}: {error}") from None
    model = _as_functional(model, input_shape, where)
    _check_fits(model, input_shape, num_classes, where)
    return model


def _load(path: Path, key: str):
    from tinykd.keras_shim import keras, tfmot

    try:
        with tfmot.quantization.keras.quantize_scope():
            return keras.models.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises many types for unreadable models
        raise ModelError(f"{key}.path: cannot load {path} as a tf-keras model ({type(error).__name__}: {error}); "
                         "save it with tf_keras (model.save('model.keras')), or use factory: module:function") \
            from None


def _factory(factory: str, module_dir: str | None, key: str):
    """The factory function, from a fresh import of its module (a changed file is read again in the same process).

    The module's folder is on sys.path only while it runs its top level (it may import its neighbours); sys.path
    and sys.modules are as they were afterwards.
    """
    name, _, function_name = factory.partition(":")
    spec = find_module(name, module_dir)
    if spec is None or spec.loader is None:
        raise ModelError(f"{key}.factory: no module {name!r} in {module_dir} or on PYTHONPATH")
    module = importlib.util.module_from_spec(spec)
    saved_path, saved_module = list(sys.path), sys.modules.get(spec.name)
    sys.path[:0] = [module_dir] if module_dir else []
    sys.modules[spec.name] = module  # dataclasses and decorators look their module up while it runs
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - the user's module may raise anything; we name it and stop
        raise ModelError(f"{key}.factory: importing {spec.origin} raised {type(error).__name__}: {error}") from None
    finally:
        sys.path[:] = saved_path
        if saved_module is None:
            sys.modules.pop(spec.name, None)
        else:
            sys.modules[spec.name] = saved_module
    function = getattr(module, function_name, None)
    if not callable(function):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                       and getattr(v, "__module__", None) == spec.name)
        raise ModelError(f"{key}.factory: {spec.origin} has no function {function_name!r}"
                         + (f"; it defines {', '.join(found)}" if found else ""))
    return function


def identity(model_cfg) -> list:
    """What stage keys add for your model: the factory's name and the sha256 of its source or of the model file
    (not the file's path: a moved file or recipe folder is the same model); [] for the zoo."""
    if not is_own(model_cfg):
        return []
    return [model_cfg.factory, source_stamp(model_cfg)]


def source_stamp(model_cfg) -> str | None:
    """What your model's build depends on besides its settings: the sha256 of the model file (every file of a
    SavedModel folder) or of the factory module's source (every .py file of a package); None for the zoo.

    Stage keys include it, so an edited model file or factory reruns the stages and an unchanged one resumes.
    """
    files = source_files(model_cfg)
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    return digest.hexdigest()


def source_files(model_cfg) -> list[Path]:
    """The files your model is read from: the model file(s), or the factory module's source file(s)."""
    if model_cfg.path is not None:
        path = Path(model_cfg.path).expanduser()
        return [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    if model_cfg.factory is not None:
        spec = find_module(model_cfg.factory.partition(":")[0], model_cfg.module_dir)
        if spec is None or not spec.origin or not Path(spec.origin).is_file():
            return []
        origin = Path(spec.origin)
        if spec.submodule_search_locations:  # a package: its own files, whichever of them the factory uses
            return sorted(origin.parent.rglob("*.py"))
        return [origin]
    return []


def _as_functional(model, input_shape: tuple[int, ...], where: str):
    """`model` as a Functional model of plain layers: a Sequential one rebuilt on the same layers, nested models
    flattened into fresh copies of their layers (same names and weights)."""
    from tinykd.keras_shim import keras

    if not isinstance(model, keras.Model):
        kind = f"{type(model).__module__}.{type(model).__name__}"
        hint = (" (a Keras 3 model: build it with tf_keras, e.g. `from tinykd.keras_shim import keras`, since TFMOT "
                "needs Keras 2)" if kind.startswith("keras.") else "")
        raise ModelError(f"{where}: gave a {kind}, not a tf-keras Model{hint}")
    if not model.built or not model.inputs:
        if not isinstance(model, keras.Sequential):
            raise ModelError(f"{where}: the model has no inputs yet (a subclassed keras.Model?); build it with "
                             "keras.Input(shape=input_shape) as a Functional or Sequential model")
        model.build((None, *input_shape))
        if not model.inputs:
            raise ModelError(f"{where}: the Sequential model has no input; start it with keras.Input(shape=...)")
    nested = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if not nested:
        return model if not isinstance(model, keras.Sequential) else \
            keras.Model(model.inputs, model.outputs, name=model.name)
    try:
        inputs, outputs = _replay(model, [keras.Input(shape=t.shape[1:], dtype=t.dtype, name=_input_name(t))
                                          for t in model.inputs])
        return keras.Model(inputs, outputs, name=model.name)
    except (ValueError, TypeError, NotImplementedError) as error:
        raise ModelError(f"{where}: layer {nested[0].name!r} is a model inside the model, and flattening it "
                         f"failed ({type(error).__name__}: {error}); TFMOT cannot quantize a nested model: build "
                         f"{nested[0].name}'s layers into the outer model directly") from None


def _input_name(tensor) -> str:
    return tensor.name.split(":")[0].split("/")[0]


def _replay(model, inputs):
    """(inputs, outputs) of `model`'s graph rebuilt on `inputs` with fresh layers, nested models opened up."""
    from tinykd.keras_shim import keras

    if isinstance(model, keras.Sequential):
        model = keras.Model(model.inputs, model.outputs, name=model.name)
    tensors = {id(t): new for t, new in zip(model.inputs, inputs)}
    for depth in sorted(model._nodes_by_depth, reverse=True):  # noqa: SLF001 - Keras' own graph walk order
        for node in model._nodes_by_depth[depth]:  # noqa: SLF001
            layer = node.layer
            if isinstance(layer, keras.layers.InputLayer):
                continue
            given = [tensors[id(t)] for t in _flat(node.input_tensors)]
            if isinstance(layer, keras.Model):
                made = _replay(layer, given)[1]
            else:
                fresh = type(layer).from_config(layer.get_config())
                made = fresh(given if len(given) > 1 else given[0])
                fresh.set_weights(layer.get_weights())
            for old, new in zip(_flat(node.output_tensors), _flat(made)):
                tensors[id(old)] = new
    outputs = [tensors[id(t)] for t in model.outputs]
    return inputs if len(inputs) > 1 else inputs[0], outputs if len(outputs) > 1 else outputs[0]


def _flat(value) -> list:
    return [t for item in value for t in _flat(item)] if isinstance(value, (list, tuple)) else [value]


def _check_fits(model, input_shape: tuple[int, ...], num_classes: int, where: str) -> None:
    """One input of the data's shape, one output of `num_classes` logits (no softmax: the losses take logits)."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{where}: the model has {len(model.inputs)} inputs and {len(model.outputs)} outputs; "
                         "tinykd needs one input (the data's samples) and one output (the class logits)")
    given = tuple(model.input_shape[1:])
    if given != tuple(input_shape):
        raise ModelError(f"{where}: the model takes inputs of shape {given}, but the data's are "
                         f"{tuple(input_shape)}; use the input_shape the factory is given, or fix data.image_size "
                         "/ data.color")
    if tuple(model.output_shape[1:]) != (num_classes,):
        raise ModelError(f"{where}: the model gives outputs of shape {tuple(model.output_shape[1:])}, but the data "
                         f"has {num_classes} classes; end it with a layer of {num_classes} units, e.g. "
                         f"Dense({num_classes})")
    last = model.layers[-1]
    if type(last).__name__ == "Softmax" or getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        raise ModelError(f"{where}: layer {last.name!r} ends the model in a softmax; tinykd's losses take logits: "
                         "remove the softmax (e.g. Dense(classes) with no activation)")


def check_quantizable(model, key: str) -> None:
    """Stop before any training if TFMOT cannot make `model` quantization-aware, naming the layer and its class.

    Raises:
        ModelError: with the layer TFMOT rejected and the ways out (replace it, or `quantize: none` for
            post-training quantization, where the converter names any op it cannot make int8).
    """
    from tinykd.qat import quantization_aware

    try:
        quantization_aware(model)  # what the quantize stage will do, average pooling's config included
    except (RuntimeError, ValueError) as error:
        message = str(error)
        layer = next((layer for layer in model.layers if message.startswith(f"Layer {layer.name}:")), None)
        what = f"layer {layer.name!r} ({type(layer).__name__})" if layer else f"the model ({message})"
        raise ModelError(f"{key}: TFMOT cannot quantize {what} for quantization-aware training; replace it with "
                         "layers TFMOT quantizes (Conv2D, DepthwiseConv2D, Dense, BatchNormalization after a "
                         "convolution, ReLU, pooling, Add, Concatenate, Reshape, Flatten), or set quantize: none to "
                         "quantize after training instead") from None
