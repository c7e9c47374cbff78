"""Config files and overrides: YAML read with one-line errors, `--set key=value` applied."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from medtune.infra.errors import MedtuneError
from medtune.infra.schema import _check, _one_of, from_dict  # noqa: F401  (from_dict re-exported)


def yaml_error(e: Exception) -> str:
    """One line for a YAML error: what is wrong and where (1-based line and column)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    if context:
        what = f"{what} ({context})"
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load, but a key given twice in one mapping is an error: PyYAML keeps the last one
    silently, so two variants with one name would quietly become one."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is given twice in one mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise MedtuneError(f"config file not found: {p}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        raise MedtuneError(f"config file {p} is not valid YAML: {yaml_error(e)}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MedtuneError(f"cannot read config file {p}: {getattr(e, 'strerror', None) or e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MedtuneError(f"config file {p} must hold a mapping at the top level")
    return data


# YAML 1.1 reads 1e-4 (an exponent, no dot) as text: typed fields convert it, a free-form
# mapping (a method's settings) keeps the string.
EXPONENT_ONLY = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `a.b=value` overrides (value parsed as YAML) to a nested dict, in place."""
    for item in overrides or []:
        if "=" not in item:
            raise MedtuneError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MedtuneError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = value
    return data
