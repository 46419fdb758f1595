"""Structured pruning: remove whole filters and channels, and rebuild a thinner dense Keras model.

TFLite Micro stores weights dense and has no sparse kernels, so zeroed weights (magnitude pruning) save neither
flash nor time on a board. Removing a filter does: the next layer loses the matching input channel, the
batch norm after it loses that channel's statistics, and every MAC and byte that served it is gone.

`plan` ranks each prunable layer's output channels (L1 norm of the filter, or |gamma| of the batch norm after it)
and picks the ones to keep; `thin` then walks a Functional model's graph, slicing every weight the kept channels
reach (convolutions, depthwise convolutions, batch norms, dense layers, the classifier's inputs) and passing the
channel selection through layers that act per channel (activations, pooling, dropout, flatten). The model's outputs
never lose a channel. TFMOT has no structured pruning; this is tinykd's own graph surgery.
"""

from __future__ import annotations

import math

import numpy as np

from tinykd.errors import ModelError
from tinykd.keras_shim import keras

SCORES = ("l1", "bn_scale")
# Layers that act on every channel alone: the kept channels pass straight through them.
_PER_CHANNEL = ("ReLU", "Activation", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D", "Dropout",
                "MaxPooling1D", "AveragePooling1D", "GlobalAveragePooling1D", "ZeroPadding2D")


def prunable_layers(model) -> list[str]:
    """Layers whose output channels can go: convolutions and dense layers that do not produce a model output and
    whose channels reach only layers `thin` can cut through (not a residual add, say: its branches must agree)."""
    return [layer.name for layer in _candidates(model) if _blocker(model, layer) is None]


def _candidates(model) -> list:
    outputs = {id(t) for t in model.outputs}
    return [layer for layer in model.layers if type(layer).__name__ in ("Conv2D", "Dense")
            and id(layer.output) not in outputs and not _feeds_output_directly(model, layer)]


def _blocker(model, layer):
    """The first layer that `layer`'s channels reach and `thin` cannot cut through, or None: the channels pass
    through per-channel layers, batch norms, flatten and depthwise convolutions to the next convolution or dense."""
    outputs = {id(t) for t in model.outputs}
    frontier = [layer]
    while frontier:
        current = frontier.pop()
        for after in _consumers(model, current):
            kind = type(after).__name__
            if kind in ("Conv2D", "Dense"):
                continue
            passes = kind in _PER_CHANNEL + ("BatchNormalization", "Flatten") or \
                kind == "DepthwiseConv2D" and after.get_config().get("depth_multiplier", 1) == 1
            if not passes or id(after.output) in outputs:
                return after
            frontier.append(after)
    return None


def plan(model, fraction: float, score: str = "l1", scope: str = "layer",
         multiple: int = 1) -> dict[str, np.ndarray]:
    """The output channels to keep in each prunable layer after removing `fraction` of them.

    Args:
        model: a plain (not TFMOT-wrapped) Functional Keras model.
        fraction: the share of channels to remove, in [0, 1).
        score: "l1" (L1 norm of each filter) or "bn_scale" (|gamma| of the batch norm right after the layer,
            falling back to L1 where there is none).
        scope: "layer" removes `fraction` of every layer; "global" ranks all channels together (each layer's
            scores divided by their mean, so layers compare) and removes the lowest `fraction`, keeping at
            least one channel per layer.
        multiple: each layer keeps a multiple of this many channels, the nearest to what `fraction` asks (at
            least one multiple; a layer narrower than that is left whole). 8 keeps training fast: the host's
            oneDNN convolutions train the odd counts plain pruning leaves at about half speed.

    Returns:
        Layer name -> sorted indices of the channels to keep.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    if score not in SCORES or scope not in ("layer", "global"):
        raise ValueError(f"score must be one of {SCORES} and scope 'layer' or 'global'")
    if multiple < 1:
        raise ValueError(f"multiple must be at least 1, got {multiple}")
    scores = {name: channel_scores(model, name, score) for name in prunable_layers(model)}
    if not scores:
        blocked = [(layer.name, _blocker(model, layer)) for layer in _candidates(model)]
        reasons = "; ".join(f"{name}'s channels reach layer {after.name!r} ({type(after).__name__})"
                            for name, after in blocked if after is not None)
        raise ModelError(f"prune.method structured: no layer of {model.name} can lose filters"
                         + (f" ({reasons}), and it cannot cut through those layers" if reasons else "")
                         + "; use prune.method: magnitude, or give the model convolutions or dense layers that "
                         "feed the next convolution or dense layer through activations, pooling or batch norms")
    if scope == "layer":
        wanted = {name: len(s) * (1.0 - fraction) for name, s in scores.items()}
    else:
        pooled = np.concatenate([s / (s.mean() or 1.0) for s in scores.values()])
        threshold = np.sort(pooled)[int(len(pooled) * fraction)] if fraction > 0 else -np.inf
        wanted = {name: float(np.sum(s / (s.mean() or 1.0) >= threshold)) for name, s in scores.items()}
    return {name: _top(s, kept_width(len(s), wanted[name], multiple)) for name, s in scores.items()}


def channel_scores(model, name: str, score: str = "l1") -> np.ndarray:
    """How much each output channel of layer `name` matters: its filter's L1 norm, or the |gamma| of its BN."""
    layer = model.get_layer(name)
    if score == "bn_scale":
        after = _consumers(model, layer)
        if len(after) == 1 and type(after[0]).__name__ == "BatchNormalization" and after[0].scale:
            return np.abs(after[0].gamma.numpy())
    kernel = layer.kernel.numpy()
    return np.abs(kernel).reshape(-1, kernel.shape[-1]).sum(axis=0)


def thin(model, keep: dict[str, np.ndarray]):
    """A new, smaller model with only the `keep` channels, carrying over the weights of everything kept.

    Returns:
        (model, kept) where kept maps every layer name to the indices of its output channels that survive
        (None where all do), so callers can tell which batch-norm channels went.

    Raises:
        ModelError: the graph has a layer the kept channels cannot pass through (the message names it).
    """
    kept_of = {}  # id(old tensor) -> kept indices of its last axis, or None for all
    new_of = {}  # id(old tensor) -> new tensor
    kept_by_layer = {}
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "InputLayer":
            tensor = layer.output
            new_of[id(tensor)] = keras.Input(shape=tensor.shape[1:], name=layer.name, dtype=tensor.dtype)
            kept_of[id(tensor)] = None
            kept_by_layer[layer.name] = None
            continue
        inputs = layer.input if isinstance(layer.input, list) else [layer.input]
        masks = [kept_of[id(t)] for t in inputs]
        new_inputs = [new_of[id(t)] for t in inputs]
        new_layer, weights, out_mask = _thinned_layer(layer, kind, masks, keep.get(layer.name), inputs)
        output = new_layer(new_inputs if len(new_inputs) > 1 else new_inputs[0])
        if weights is not None:
            new_layer.set_weights(weights)
        new_of[id(layer.output)] = output
        kept_of[id(layer.output)] = out_mask
        kept_by_layer[layer.name] = out_mask
    for tensor in model.outputs:
        if kept_of[id(tensor)] is not None:
            raise ModelError(f"{model.name}: structured pruning would remove channels of the output "
                             f"{tensor.name}; leave the classifier's own outputs out of the plan")
    thinned = keras.Model([new_of[id(t)] for t in model.inputs], [new_of[id(t)] for t in model.outputs],
                          name=model.name)
    return thinned, kept_by_layer


def _thinned_layer(layer, kind: str, masks: list, keep, inputs):
    """The replacement of one layer, its sliced weights (None: fresh or none) and its output's kept channels."""
    config = layer.get_config()
    mask = masks[0]
    weights = layer.get_weights()
    if kind == "Conv2D" or kind == "Dense":
        units_key = "filters" if kind == "Conv2D" else "units"
        kernel = weights[0]
        if mask is not None:
            kernel = kernel[..., mask, :] if kind == "Conv2D" else kernel[mask, :]
        if keep is not None:
            keep = np.sort(np.asarray(keep))
            kernel = kernel[..., keep]
            config[units_key] = len(keep)
        sliced = [kernel] + ([weights[1][keep] if keep is not None else weights[1]] if len(weights) > 1 else [])
        return type(layer).from_config(config), sliced, keep
    if kind == "DepthwiseConv2D":
        if mask is None:
            return type(layer).from_config(config), weights, None
        if config.get("depth_multiplier", 1) != 1:
            raise ModelError(f"{layer.name}: structured pruning handles depthwise convolutions with depth_multiplier "
                             "1 only")
        sliced = [weights[0][:, :, mask, :]] + ([weights[1][mask]] if len(weights) > 1 else [])
        return type(layer).from_config(config), sliced, mask
    if kind == "BatchNormalization":
        return type(layer).from_config(config), [w if mask is None else w[mask] for w in weights], mask
    if kind in _PER_CHANNEL:
        return type(layer).from_config(config), weights or None, mask
    if kind == "Flatten":
        if mask is None:
            return type(layer).from_config(config), None, None
        shape = inputs[0].shape[1:]
        positions = int(np.prod(shape[:-1]))
        channels = shape[-1]
        flat = (np.arange(positions)[:, None] * channels + np.asarray(mask)[None, :]).ravel()
        return type(layer).from_config(config), None, flat
    if kind == "Add":
        if any(m is None for m in masks) and any(m is not None for m in masks) or \
                any(m is not None and not np.array_equal(m, masks[0]) for m in masks):
            raise ModelError(f"{layer.name}: the branches of this residual add keep different channels; prune the "
                             "layers feeding it alike (or leave them out of the plan)")
        return type(layer).from_config(config), None, mask
    if mask is None:
        return type(layer).from_config(config), weights or None, None
    raise ModelError(f"layer {layer.name!r} ({kind}): structured pruning cannot carry removed channels through "
                     f"a {kind} layer; use prune.method: magnitude, or replace the layer with ones it can cut "
                     f"through ({', '.join(_PER_CHANNEL[:4])}, Flatten, BatchNormalization)")


def _consumers(model, layer) -> list:
    return [other for other in model.layers
            if any(t is layer.output for t in (other.input if isinstance(other.input, list) else [other.input]))
            and type(other).__name__ != "InputLayer"]


def _feeds_output_directly(model, layer) -> bool:
    """Whether only shape-only layers (Flatten, Reshape, Activation) lie between `layer` and a model output."""
    outputs = {id(t) for t in model.outputs}
    frontier = [layer]
    while frontier:
        current = frontier.pop()
        for after in _consumers(model, current):
            if id(after.output) in outputs and type(after).__name__ in ("Flatten", "Reshape", "Activation"):
                return True
            if type(after).__name__ in ("Flatten", "Reshape", "Activation"):
                frontier.append(after)
    return False


def least_fraction(meets, most: float, halvings: int = 6) -> float:
    """The smallest share of channels, to `most` / 2**halvings, whose removal `meets(share)` accepts, given that
    removing `most` does (bisection; what meets is assumed to stay met as the share grows)."""
    low, high = 0.0, most  # removing `low` misses, removing `high` meets
    for _ in range(halvings):
        middle = (low + high) / 2
        low, high = (low, middle) if meets(middle) else (middle, high)
    return high


def kept_width(width: int, wanted: float, multiple: int) -> int:
    """How many of a layer's `width` channels to keep when `wanted` are asked for: `wanted` rounded up (at least
    one), or its nearest multiple of `multiple` (at least one multiple, at most `width`)."""
    if multiple == 1:
        return max(1, math.ceil(wanted))
    return min(width, max(multiple, multiple * math.floor(wanted / multiple + 0.5)))


def _top(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the `count` highest scores, in channel order (ties keep the lower index)."""
    order = np.argsort(-scores, kind="stable")[:count]
    return np.sort(order)
