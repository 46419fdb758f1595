"""The front-end's C side: its settings as constants for `<name>_model_settings.h`, and back.

`parse_settings` rebuilds a FrontendConfig from header text alone, so a test (or a firmware engineer's script)
can recompute the golden features from what was exported rather than from the recipe.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from importlib import resources
from string import Template

from tinykd.audio.frontend import INT8_DIVISOR, INT8_MULTIPLIER, INT8_OFFSET, FrontendConfig
from tinykd.errors import ConfigError

# The prefix is what precedes _FRONTEND_KIND (greedy, so a model named e.g. my_frontend still works).
_PREFIX = re.compile(r"^constexpr\s[^=\n]*?\b([A-Za-z]\w*)_FRONTEND_KIND\s*=", re.M)
_FIELD_TYPES = typing.get_type_hints(FrontendConfig)


def settings_defines(cfg: FrontendConfig, name: str) -> str:
    """The front-end block of `<name>_model_settings.h`: every FrontendConfig field as a `<NAME>_FRONTEND_*`
    constant (each comment names the microfrontend field it feeds), the derived sizes and the int8 formula."""
    fields = {field.name: _c_value(getattr(cfg, field.name)) for field in dataclasses.fields(cfg)}
    fields |= {
        "name": name, "NAME": name.upper(),
        "clip_samples": str(cfg.clip_samples), "frames": str(cfg.frames),
        "feature_elements": str(cfg.frames * cfg.num_channels),
        "int8_multiplier": str(INT8_MULTIPLIER), "int8_divisor": str(INT8_DIVISOR), "int8_offset": str(INT8_OFFSET),
    }
    template = (resources.files("tinykd") / "templates" / "frontend_settings.h.in").read_text(encoding="utf-8")
    return Template(template).substitute(fields)


def parse_settings(header_text: str) -> FrontendConfig:
    """The FrontendConfig that `settings_defines` wrote into `header_text` (a whole model_settings.h is fine).

    Besides every field, the derived sizes and the int8 formula constants must be present and agree with what
    this version of tinykd computes, so a header that was edited or cut short cannot pass for a complete one.

    Raises:
        ConfigError: a constant is missing, repeated, unreadable or disagrees, naming it and its config key.
    """
    constants = _constants(header_text)
    prefix = constants.pop(None)
    values = {}
    for field in dataclasses.fields(FrontendConfig):
        constant = f"{prefix}_FRONTEND_{field.name.upper()}"
        if field.name.upper() not in constants:
            raise ConfigError(f"header: {constant} (frontend.{field.name}) is missing; export the model again")
        values[field.name] = _parse_value(constants[field.name.upper()], _FIELD_TYPES[field.name], constant)
    try:
        cfg = FrontendConfig(**values)
    except ValueError as error:  # tinykd.config's _Invalid, which names the key
        raise ConfigError(f"header: frontend.{getattr(error, 'key', '?')}: {error}") from None
    derived = {
        "CLIP_SAMPLES": cfg.clip_samples, "FRAMES": cfg.frames, "FEATURE_ELEMENTS": cfg.frames * cfg.num_channels,
        "INT8_MULTIPLIER": INT8_MULTIPLIER, "INT8_DIVISOR": INT8_DIVISOR, "INT8_OFFSET": INT8_OFFSET,
    }
    for key, expected in derived.items():
        constant = f"{prefix}_FRONTEND_{key}"
        found = _parse_value(constants[key], int, constant) if key in constants else None
        if found != expected:
            raise ConfigError(f"header: {constant} is {'missing' if found is None else found}, expected {expected} "
                              "from the front-end settings; export the model again")
    return cfg


def _constants(header_text: str) -> dict:
    """{KEY: value text} of the `<PREFIX>_FRONTEND_<KEY>` constants, and {None: PREFIX}."""
    prefixes = sorted(set(_PREFIX.findall(header_text)))
    if not prefixes:
        raise ConfigError("header: <NAME>_FRONTEND_KIND (frontend.kind) is missing, so it holds no front-end "
                          "settings; pass the model_settings.h that tinykd export wrote for an audio model")
    if len(prefixes) > 1:
        raise ConfigError(f"header: expected the <NAME>_FRONTEND_* constants of one model, found those of "
                          f"{', '.join(prefixes)}; pass one model's model_settings.h")
    constant = re.compile(rf"^constexpr\s[^=\n]*?\b{prefixes[0]}_FRONTEND_([A-Z0-9_]+)\s*=\s*([^;\n]*);", re.M)
    constants = {None: prefixes[0]}
    for key, value in constant.findall(header_text):
        if key in constants:
            raise ConfigError(f"header: {prefixes[0]}_FRONTEND_{key} is defined twice")
        constants[key] = value.strip()
    return constants


def _c_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        # repr is the shortest text that reads back as the same double; the library's fields are float, and
        # the op's float attrs are float32 too, so both round the same double the same way.
        return repr(value) + "f"
    return str(value)


def _parse_value(text: str, kind: type, constant: str):
    patterns = {bool: r"true|false", int: r"-?\d+", float: r"-?[\d.]+(?:e[-+]?\d+)?f", str: r'"\w*"'}
    if not re.fullmatch(patterns[kind], text):
        raise ConfigError(f"header: {constant} = {text!r} is not a C {kind.__name__} constant as tinykd writes it")
    if kind is bool:
        return text == "true"
    if kind is str:
        return text[1:-1]
    return kind(text.rstrip("f"))
