"""What every method returns and declares: its trainable report and its spec (config, apply, default lr)."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from medtune.infra.schema import from_dict


@dataclass
class TrainableReport:
    method: str
    trainable: int  # parameters that receive gradients, a tied tensor counted once
    total: int  # all parameters of the model as trained (base + adapters), deduplicated
    base_total: int  # parameters of the unmodified base model
    trained_modules: list[str]
    notes: list[str] = field(default_factory=list)
    details: dict = field(default_factory=dict)  # method-specific facts (e.g. BOFT factor actually used)

    @property
    def share(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["share"] = self.share
        return d

    def summary(self) -> str:
        mods = self.trained_modules
        shown = ", ".join(mods) if len(mods) <= 8 else ", ".join(mods[:8]) + f", ... ({len(mods)} modules)"
        # wrapped to 80 columns: module lists run to ~190 characters
        lines = [
            f"method {self.method}: {self.trainable:,} trainable of {self.total:,} parameters "
            f"({100 * self.share:.3f}%)",
            textwrap.fill(shown, 80, initial_indent="  trained: ", subsequent_indent=" " * 11, break_long_words=False),
        ]
        lines += [textwrap.fill(n, 80, initial_indent="  note: ", subsequent_indent=" " * 8) for n in self.notes]
        return "\n".join(lines)


@dataclass
class MethodSpec:
    name: str
    config_cls: type
    apply: Callable[..., Any]
    default_lr: float
    uses_peft: bool
    description: str

    def make_config(self, args: dict | None):
        return from_dict(self.config_cls, args or {}, f"method_args for {self.name}")
