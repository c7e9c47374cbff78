"""Strict JSON (no NaN), written atomically; checked shapes; writable-path checks."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from medtune.infra.errors import MedtuneError
from medtune.infra.writes import write_text


def finite_json(obj, reasons: dict | None = None, where: str = ""):
    """A copy of `obj` with every NaN/inf float replaced by None.

    JSON has no NaN: Python writes a bare `NaN` that strict parsers (jq, JavaScript, most
    languages) reject, and a report would print it as a number. Each replaced value is
    recorded in `reasons` as {"dotted.path": "nan" | "inf" | "-inf"}, so a reader can tell
    "not measured" from "diverged". numpy/torch scalars are turned into plain numbers.
    """
    if isinstance(obj, dict):
        return {k: finite_json(v, reasons, f"{where}.{k}" if where else str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v, reasons, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if not isinstance(obj, float) and hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        obj = obj.item()  # numpy / torch scalar
    if isinstance(obj, float) and not math.isfinite(obj):
        if reasons is not None:
            reasons[where or "value"] = str(obj)  # 'nan', 'inf' or '-inf'
        return None
    return obj


def json_text(obj, indent: int | None = 2) -> str:
    """`obj` as strict JSON: non-finite floats become null, and a top-level dict gains
    `"nonfinite": {"path.to.key": "nan", ...}` naming each one (the "reason" for the null).
    `allow_nan=False` guards the rule: a NaN that slipped through is a bug, not a file."""
    reasons: dict[str, str] = {}
    clean: Any = finite_json(obj, reasons)
    if reasons and isinstance(clean, dict):
        clean["nonfinite"] = {**dict(clean.get("nonfinite") or {}), **reasons}
    return json.dumps(clean, indent=indent, default=str, allow_nan=False)


def write_json(path: Path, obj) -> None:
    """Write `obj` atomically (temporary sibling, then rename) as strict JSON (see json_text)."""
    write_text(Path(path), json_text(obj))  # a full disk: one line, no .tmp left


def ensure_writable(path: Path, *, is_file: bool = False, what: str = "output folder") -> Path:
    """Fail with one line, before anything slow is loaded, if `path` cannot be written; returns
    it absolute.

    `path` is a folder to create or write into (or, with is_file=True, a file whose folder
    that is). Checks that no component of the path is a file and that the folder, or its
    nearest existing parent, is a writable directory: by creating and removing a probe
    file there, which also catches read-only filesystems and root-owned folders that
    os.access would wave through for root. Creates nothing that stays. Messages name the
    path as the user gave it (`what` is the option or the thing it is).
    """
    given = Path(path).expanduser()
    if is_file and given.is_dir():
        raise MedtuneError(f"{what} {given}: is a folder; expected a file name")
    probe = given.parent if is_file else given
    while not probe.exists() and not probe.is_symlink():
        probe = probe.parent  # ends at '.' or '/', which exist
    if not probe.is_dir():
        kind = "a file" if probe.exists() else "a broken link"
        raise MedtuneError(f"{what} {given}: {probe} is {kind}, not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".medtune-probe-"):
            pass
    except OSError as e:
        raise MedtuneError(f"{what} {given}: cannot write in {probe} ({e.strerror or e})") from None
    return given.absolute()


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MedtuneError(f"{path} is missing") from None
    except json.JSONDecodeError as e:
        raise MedtuneError(f"{path} is not valid JSON: {e.msg}") from None


Number = (int, float)  # for check_shape: bool is refused even though it is an int


def check_shape(obj, spec, file: Path, where: str = "") -> None:
    """Check a JSON document against a small shape spec; a mismatch is one line naming the file
    and the dotted key. spec: a type or tuple of types; a dict of key -> spec (a key ending in
    "?" is optional; the key "*" applies to every value); a list [s1, s2] for a list of exactly
    those items. A null (e.g. a NaN written as null by write_json) fails a number check."""
    label = where or "the top level"
    if isinstance(spec, dict):
        if not isinstance(obj, dict):
            raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected an object")
        for key, sub in spec.items():
            if key == "*":
                for k, v in obj.items():
                    check_shape(v, sub, file, f"{where}.{k}" if where else k)
                continue
            name, optional = key.rstrip("?"), key.endswith("?")
            if name not in obj:
                if optional:
                    continue
                raise MedtuneError(f"{file}: key {(f'{where}.' if where else '') + name} is missing")
            check_shape(obj[name], sub, file, f"{where}.{name}" if where else name)
        return
    if isinstance(spec, list):
        if not isinstance(obj, list) or len(obj) != len(spec):
            raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected a list of {len(spec)}")
        for i, (v, sub) in enumerate(zip(obj, spec)):
            check_shape(v, sub, file, f"{where}[{i}]")
        return
    types = spec if isinstance(spec, tuple) else (spec,)
    if isinstance(obj, types) and not (isinstance(obj, bool) and bool not in types):
        if isinstance(obj, float) and not math.isfinite(obj):
            raise MedtuneError(f"{file}: {label} is {obj} (not a finite number)")
        return
    names = {int: "a number", float: "a number", type(None): "null"}
    expected = " or ".join(dict.fromkeys(names.get(t, f"a {t.__name__}") for t in types))
    raise MedtuneError(f"{file}: {label} is {_kind(obj)}, expected {expected}")


def _kind(obj) -> str:
    if obj is None:
        return "null"
    return (
        f"a {type(obj).__name__} ({obj!r})" if isinstance(obj, (int, float, str, bool)) else f"a {type(obj).__name__}"
    )
