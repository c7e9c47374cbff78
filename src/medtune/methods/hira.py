"""HiRA through PEFT: a high-rank update W0 * (B A) (element-wise with the frozen weight), B
starting at zero, so the model starts as the base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medtune.infra.errors import MedtuneError
from medtune.methods.params import check_layers
from medtune.methods.peft_methods import check_targets, model_config_of, resolve_targets, wrap_peft
from medtune.methods.spec import MethodSpec


@dataclass
class HiraArgs:
    r: int = 32  # rank of B A (PEFT's default and its method_comparison's)
    dropout: float = 0.0
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj); [all-linear]
    layers: Optional[list[int]] = None

    def __post_init__(self):
        if self.r < 1:
            raise MedtuneError(f"hira r must be >= 1; got {self.r}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"hira dropout must be in [0, 1); got {self.dropout}")

    def check(self, model_cfg: dict) -> None:
        check_targets(resolve_targets(self.targets, model_cfg, "hira"), model_cfg, "hira")
        check_layers(self.layers, model_cfg, "hira")


def apply_hira(model, cfg: HiraArgs):
    from peft import HiraConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "hira")
    pc = HiraConfig(
        r=cfg.r, hira_dropout=cfg.dropout, target_modules=targets, layers_to_transform=cfg.layers, task_type="CAUSAL_LM"
    )
    return wrap_peft(model, pc, "hira", {"r": cfg.r, "targets": targets})


# Learning rate: PEFT's method_comparison runs HiRA at 4.5e-3 (experiments/hira/llama-3.2-3B-rank32-lr4.5e-3).
SPECS = (MethodSpec("hira", HiraArgs, apply_hira, default_lr=4.5e-3, uses_peft=True, description="PEFT HiRA"),)
