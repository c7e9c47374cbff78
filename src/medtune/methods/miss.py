"""MiSS (formerly Bone) through PEFT: one shared, trained block per layer, expanded over the
weight's input width; it starts at zero, so the model starts as the base. Near the top of PEFT's
MetaMathQA method comparison (test accuracy beside LoRA's, fewer parameters)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medtune.infra.errors import MedtuneError
from medtune.methods.params import check_layers
from medtune.methods.peft_methods import check_targets, linear_in_features, model_config_of, resolve_targets, wrap_peft
from medtune.methods.spec import MethodSpec


@dataclass
class MissArgs:
    r: int = 64  # block size; must divide every target's width (PEFT's method_comparison: 64)
    dropout: float = 0.0
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj); [all-linear]
    layers: Optional[list[int]] = None

    def __post_init__(self):
        if self.r < 1:
            raise MedtuneError(f"miss r must be >= 1; got {self.r}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"miss dropout must be in [0, 1); got {self.dropout}")

    def check(self, model_cfg: dict) -> None:
        targets = resolve_targets(self.targets, model_cfg, "miss")
        check_targets(targets, model_cfg, "miss")
        check_layers(self.layers, model_cfg, "miss")
        widths = linear_in_features(model_cfg) or {}
        for t in targets:
            width = widths.get(t)
            if width and self.r and width % self.r:
                raise MedtuneError(f"miss r={self.r} does not divide the width {width} of {t}")


def apply_miss(model, cfg: MissArgs):
    from peft import MissConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "miss")
    pc = MissConfig(
        r=cfg.r, miss_dropout=cfg.dropout, target_modules=targets, layers_to_transform=cfg.layers, task_type="CAUSAL_LM"
    )
    return wrap_peft(model, pc, "miss", {"r": cfg.r, "targets": targets})


# Learning rate: PEFT's method_comparison (experiments/miss/llama-3.2-3B-default, r 64) runs at its
# default_training_params.json lr, 1e-4, with no override.
SPECS = (MethodSpec("miss", MissArgs, apply_miss, default_lr=1e-4, uses_peft=True, description="PEFT MiSS"),)
