"""Presets shipped as package data (src/medtune/presets/*.yaml), or a YAML path."""

from __future__ import annotations

import importlib.resources
from pathlib import Path

from medtune.config.files import read_yaml
from medtune.infra.errors import MedtuneError

PRESETS = importlib.resources.files("medtune") / "presets"


def preset_names() -> list[str]:
    """Presets shipped as package data (src/medtune/presets/*.yaml: data, beside the code that reads it)."""
    return sorted(p.name[: -len(".yaml")] for p in PRESETS.iterdir() if p.name.endswith(".yaml"))


def read_preset(name: str) -> dict:
    """A preset by name (package data, read with importlib.resources) or a YAML file path."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise MedtuneError(f"preset file not found: {p}")
        return read_yaml(p)
    res = PRESETS / f"{name}.yaml"
    if not res.is_file():
        raise MedtuneError(f"unknown preset {name!r} (known: {', '.join(preset_names()) or 'none'})")
    with importlib.resources.as_file(res) as path:
        return read_yaml(path)
