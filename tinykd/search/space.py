"""The students a search samples: the zoo's knobs (tinykd.models) with defaults per kind of data.

A candidate is a plain `ModelConfig`; the recipe's own student is always candidate 0, and when it is over the
budget the first bracket also measures it thinned to the budget (measure.thin_to_budget), so every search measures
what it has to beat. Sampling is seeded and skips students the input cannot hold (a pooling on a 1-pixel map).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from tinykd.config import Config, ModelConfig, SearchConfig


@dataclass(frozen=True, kw_only=True)
class Space:
    """The choices of every knob; a student takes one value of each (and `blocks` draws from `filters`)."""

    archs: tuple[str, ...]
    blocks: tuple[int, ...]
    filters: tuple[int, ...]
    convs_per_block: tuple[int, ...]
    first_kernels: tuple[tuple[int, ...], ...]
    first_strides: tuple[tuple[int, ...], ...]
    pool_between_blocks: tuple[bool, ...]
    heads: tuple[str, ...]


# gap is left out of the defaults: its int8 MEAN rounds differently in TFLM and TFLite (see config.HEADS), which
# the build's verify stage rejects. Images: a 28x28 or 32x32 picture, pooled between blocks. Audio: the
# micro_speech DS-CNN family, a strided long first kernel over (frames, channels), no pooling.
DEFAULTS = {
    "image": Space(archs=("cnn", "ds_cnn"), blocks=(2, 3), filters=(8, 12, 16, 24, 32, 48, 64),
                   convs_per_block=(1, 2), first_kernels=((3, 3), (5, 5)), first_strides=((1, 1), (2, 2)),
                   pool_between_blocks=(True,), heads=("pool_flatten", "flatten", "avgpool")),
    "audio": Space(archs=("ds_cnn", "cnn"), blocks=(2, 3, 4, 5), filters=(16, 24, 32, 48, 64),
                   convs_per_block=(1,), first_kernels=((10, 4), (5, 3)), first_strides=((2, 2), (2, 1)),
                   pool_between_blocks=(False,), heads=("avgpool",)),
}


def data_kind(cfg: Config) -> str:
    """"audio" for a keyword-spotting recipe (front-end features), else "image"."""
    return "audio" if cfg.frontend is not None or cfg.data.format == "speech_commands" else "image"


def resolve(search: SearchConfig, kind: str) -> Space:
    """The recipe's space: its `search:` keys where given, the defaults for `kind` elsewhere."""
    default = DEFAULTS[kind]
    given = {name: getattr(search, name) for name in Space.__dataclass_fields__ if getattr(search, name) is not None}
    return replace(default, **given)


def sample(space: Space, count: int, seed: int | list[int], reference: ModelConfig | None,
           input_shape: tuple[int, ...], exclude: tuple[ModelConfig, ...] = ()) -> tuple[ModelConfig, ...]:
    """`count` distinct students: `reference` first (when given), then seeded draws from `space` that fit
    `input_shape` and are not in `exclude` (the students earlier brackets drew).

    Fewer come back when the space holds fewer new students that fit (500 draws per wanted one at most).
    """
    rng = np.random.default_rng(seed)
    chosen = [] if reference is None else [reference]
    for _ in range(500 * count):
        if len(chosen) >= count:
            break
        candidate = _draw(space, rng, len(input_shape) - 1)
        if candidate not in chosen and candidate not in exclude and fits_input(candidate, input_shape):
            chosen.append(candidate)
    return tuple(chosen)


def _draw(space: Space, rng: np.random.Generator, spatial_dims: int) -> ModelConfig:
    def pick(options):
        return options[int(rng.integers(len(options)))]

    blocks = pick(space.blocks)
    filters = tuple(sorted(int(pick(space.filters)) for _ in range(blocks)))
    kernel, strides = pick(space.first_kernels), pick(space.first_strides)
    if spatial_dims == 1:  # sequences run as (steps, 1) images: kernels and strides act on the steps only
        kernel, strides = (kernel[0], 1), (strides[0], 1)
    kernel = tuple(int(k) for k in kernel)
    plain_kernel = (3, 1) if spatial_dims == 1 else (3, 3)  # what the zoo uses when first_kernel is null
    return ModelConfig(arch=pick(space.archs), filters=filters, convs_per_block=int(pick(space.convs_per_block)),
                       first_kernel=None if kernel == plain_kernel else kernel,
                       first_strides=tuple(int(s) for s in strides),
                       pool_between_blocks=bool(pick(space.pool_between_blocks)), head=pick(space.heads))


def fits_input(model: ModelConfig, input_shape: tuple[int, ...]) -> bool:
    """Whether every pooling of `model` has at least 2 rows (and columns, for images) to pool."""
    if len(input_shape) < 2:
        return model.arch == "mlp"
    size = [math.ceil(input_shape[0] / model.first_strides[0])]
    if len(input_shape) == 3:
        size.append(math.ceil(input_shape[1] / model.first_strides[1]))
    pools = (len(model.filters) - 1 if model.pool_between_blocks else 0) + (model.head == "pool_flatten")
    for _ in range(pools):
        if min(size) < 2:
            return False
        size = [s // 2 for s in size]
    return min(size) >= 1


def describe(model: ModelConfig) -> str:
    """One short line naming a student, e.g. `ds_cnn 16-32-32 x2 k5x5 s2x2 pool pool_flatten`."""
    text = f"{model.arch} {'-'.join(str(f) for f in model.filters)}"
    if model.width_multiplier != 1.0:
        text += f" w{model.width_multiplier:g}"
    text += f" x{model.convs_per_block}" if model.convs_per_block > 1 else ""
    if model.first_kernel is not None:
        text += f" k{model.first_kernel[0]}x{model.first_kernel[1]}"
    if tuple(model.first_strides) != (1, 1):
        text += f" s{model.first_strides[0]}x{model.first_strides[1]}"
    return text + (" pool" if model.pool_between_blocks else "") + f" {model.head}"


def student_config(plain: dict) -> ModelConfig:
    """A ModelConfig back from its plain form in search.json (lists become tuples)."""
    return ModelConfig(**{key: tuple(value) if isinstance(value, list) else value for key, value in plain.items()})
