"""Config dataclass helpers: ``--set key=value`` overrides and JSON round trips."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing

from common.errors import ConfigError


def _coerce(value: str, annotation, field_name: str):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in typing.get_args(annotation):
        # ``X | None`` fields (e.g. "None = take the default from a variant"): "none"/"null" → None.
        if value.strip().lower() in ("none", "null"):
            return None
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], field_name)
        return value
    if annotation in (bool, "bool"):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"--set {field_name}={value}: expected true/false")
    if annotation in (int, "int"):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"--set {field_name}={value}: expected an integer") from None
    if annotation in (float, "float"):
        try:
            number = float(value)
        except ValueError:
            raise ConfigError(f"--set {field_name}={value}: expected a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"--set {field_name}={value}: must be a finite number")
        return number
    if origin in (tuple, list) or annotation in ("tuple", "list"):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = [v for v in value.split(",") if v]
        return tuple(parsed) if origin is tuple else list(parsed)
    return value


def apply_overrides(config, overrides: dict[str, str]):
    """Return a copy of dataclass ``config`` with string ``overrides`` coerced to the field types."""
    if not overrides:
        return config
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for key, raw in overrides.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown setting '{key}' for {type(config).__name__}; known: {known}")
        changes[key] = _coerce(raw, hints.get(key, str), key)
    return dataclasses.replace(config, **changes)


def parse_set_args(items: list[str] | None) -> dict[str, str]:
    """Parse ``["a=1", "b=x"]`` into a dict, with a clear error for malformed items."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def check_values(config_cls, values: dict, where: str) -> dict:
    """``values`` (e.g. a run's saved ``method_config``) checked against the field types of ``config_cls``.

    Unknown keys are dropped (written by another version); a value of the wrong type, or a non-finite
    float, is a :class:`ConfigError` naming ``where`` and the field. Lists become tuples.
    """
    hints = typing.get_type_hints(config_cls)
    out = {}
    for field in dataclasses.fields(config_cls):
        if field.name not in values:
            continue
        value = values[field.name]
        annotation = hints.get(field.name, object)
        allowed = _allowed_types(annotation)
        if isinstance(value, list):
            value = tuple(value)
        if value is None and type(None) in allowed:
            out[field.name] = None
            continue
        ok = any(isinstance(value, t) and not (t in (int, float) and isinstance(value, bool)) for t in allowed
                 if t is not type(None))
        if float in allowed and isinstance(value, int) and not isinstance(value, bool):
            try:
                ok, value = True, float(value)
            except OverflowError:  # an integer of hundreds of digits (found by benchmarks/fuzz.py)
                raise ConfigError(f"{where}: {field.name} = an integer of {value.bit_length()} bits is not a finite "
                                  "number") from None
        if not ok:
            raise ConfigError(f"{where}: {field.name} = {value!r} has the wrong type "
                              f"(expected {' or '.join(t.__name__ for t in allowed)})")
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{where}: {field.name} = {value} is not a finite number")
        out[field.name] = value
    return out


def older_record_defaults(config_cls) -> dict:
    """The values a record saved before a field of ``config_cls`` existed implies for it: the class's
    ``DEFAULTS_OF_OLDER_RECORDS`` (a field added with a new default keeps old runs reading as they ran)."""
    return dict(getattr(config_cls, "DEFAULTS_OF_OLDER_RECORDS", {}))


def check_saved_values(config_cls, values: dict, where: str) -> dict:
    """:func:`check_values` on a saved record, plus :func:`older_record_defaults` for the fields it lacks."""
    checked = check_values(config_cls, values, where)
    return {**{k: v for k, v in older_record_defaults(config_cls).items() if k not in values}, **checked}


def _allowed_types(annotation) -> tuple:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return tuple(t for a in typing.get_args(annotation) for t in _allowed_types(a))
    if origin in (tuple, list):
        return (tuple,)
    if annotation in (int, float, str, bool, type(None), tuple, dict):
        return (annotation,)
    return (object,)
