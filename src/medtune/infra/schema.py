"""Dataclass parsing and checks: plain dicts (YAML, --set) -> typed, validated configs.

Imports nothing from medtune but its error type, so config.py and every method's config
module can use it without importing each other.
"""

from __future__ import annotations

import dataclasses
from dataclasses import fields
from typing import Any, Optional, TypeVar, cast, get_args, get_origin, get_type_hints

from medtune.infra.errors import MedtuneError


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise MedtuneError(msg)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")


T = TypeVar("T")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a plain dict, naming unknown keys and wrong types."""
    if dataclasses.is_dataclass(data):
        return cast(T, data)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MedtuneError(f"{where or cls.__name__} must be a mapping; got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cast(Any, cls))}
    unknown = sorted(set(data) - known)
    if unknown:
        raise MedtuneError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} in {where or cls.__name__}"
            f" (known: {', '.join(sorted(known))})"
        )
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - guarded by the key check above
        raise MedtuneError(f"{where or cls.__name__}: {e}") from None


def as_number(value, where: str, must: str = "must be a number") -> float:
    """A config number: int or float, or a string YAML 1.1 left unparsed (it reads 2e-3, no dot, as text)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MedtuneError(f"{where} {must}; got {value!r}")
    return float(value)


def _coerce(tp, value, where):
    origin = get_origin(tp)
    if origin is Optional or (origin is not None and type(None) in get_args(tp)):
        if value is None:
            return None
        tp = next(a for a in get_args(tp) if a is not type(None))
        origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return from_dict(cast(Any, tp), value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise MedtuneError(f"{where} must be true or false; got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise MedtuneError(f"{where} must be an integer; got {value!r}")
        return value
    if tp is float:
        return as_number(value, where)
    if tp is str:
        if not isinstance(value, str):
            raise MedtuneError(f"{where} must be a string; got {value!r}")
        return value
    if tp is list or origin is list:
        given_as_text = isinstance(value, str)
        if given_as_text:  # "q_proj,v_proj" or "8,9"
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise MedtuneError(f"{where} must be a list; got {value!r}")
        item = (get_args(tp) or (None,))[0]
        if item is None:
            return list(value)
        if given_as_text and item is int:
            value = [int(v) if v.lstrip("-").isdigit() else v for v in value]
        # Each element checked here: a wrong one (targets=[1], layers=[a]) failed later inside
        # PEFT or a sort, as a traceback.
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise MedtuneError(f"{where} must be a mapping; got {value!r}")
        return dict(value)
    return value
