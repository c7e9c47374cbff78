"""LN tuning through PEFT: only the normalisation layers train (a trainable copy of each, the
original kept for unloading), so the model starts as the base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medtune.infra.errors import MedtuneError
from medtune.methods.peft_methods import model_config_of, wrap_peft
from medtune.methods.spec import MethodSpec


def default_norms(model_cfg: dict) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LNTUNING_TARGET_MODULES_MAPPING as TABLE

    found = TABLE.get(model_cfg.get("model_type") or "")
    if not found:
        raise MedtuneError(
            f"ln_tuning: PEFT names no norm layers for model_type {model_cfg.get('model_type')!r}; name them with "
            "--set method_args.targets=MODULE[,MODULE] (e.g. input_layernorm,post_attention_layernorm)"
        )
    return list(found)


@dataclass
class LnTuningArgs:
    targets: Optional[list[str]] = None  # None: PEFT's table for the model_type (Llama: both block norms + final)

    def __post_init__(self):
        if self.targets is not None and not self.targets:
            raise MedtuneError("ln_tuning targets must name at least one module")

    def check(self, model_cfg: dict) -> None:
        if self.targets is None:
            default_norms(model_cfg)


def apply_ln_tuning(model, cfg: LnTuningArgs):
    from peft import LNTuningConfig

    targets = list(cfg.targets) if cfg.targets else default_norms(model_config_of(model))
    pc = LNTuningConfig(target_modules=targets, task_type="CAUSAL_LM")
    return wrap_peft(model, pc, "ln_tuning", {"targets": targets})


# Learning rate: PEFT's method_comparison (experiments/ln_tuning/llama-3.2-3B-default) runs at its
# default_training_params.json lr, 1e-4, with no override.
SPECS = (
    MethodSpec(
        "ln_tuning", LnTuningArgs, apply_ln_tuning, default_lr=1e-4, uses_peft=True, description="PEFT LN tuning"
    ),
)
