"""What one method's tuning study searches (MethodSpace), and what every trial shares (TuneContext)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medtune.config.comparison import CompareConfig, TuneConfig
from medtune.training.shared_work import SharedWork


@dataclass
class MethodSpace:
    """What one method's study searches."""

    method: str
    centre: float  # the configured (untuned) learning rate
    grid: list[float]  # empty for TPE
    low: float
    high: float
    study_name: str
    identity: dict = field(default_factory=dict)  # what study_name hashes: stored in the study
    earlier_name: str | None = None  # the name an earlier release gave this study, when it differs


@dataclass
class TuneContext:
    cfg: CompareConfig
    prep: Path
    out: Path
    storage: Any  # optuna RDBStorage
    data_key: str  # fingerprint of the prepared train/val files
    shared: SharedWork  # base model, tokenized data, step-0 validation, prefix caches: once
    say: Callable = print

    @property
    def tune(self) -> TuneConfig:
        return self.cfg.tune


def _percent(fraction: float) -> int:
    return max(1, round(100 * fraction))
