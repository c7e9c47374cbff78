"""VeRA through PEFT: one pair of frozen random projections shared by every adapted layer, and
two trained scaling vectors per layer (d, b). b starts at 0, so the model starts as the base."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from medtune.infra.errors import MedtuneError
from medtune.methods.params import check_layers
from medtune.methods.peft_methods import check_targets, model_config_of, resolve_targets, wrap_peft
from medtune.methods.spec import MethodSpec


@dataclass
class VeraArgs:
    r: int = 256  # rank of the shared projections (PEFT's and the paper's default)
    d_initial: float = 0.1  # the d vector's initial value (PEFT's default)
    dropout: float = 0.0
    targets: Optional[list[str]] = None  # None: the family's default (q_proj, v_proj); [all-linear]
    layers: Optional[list[int]] = None

    def __post_init__(self):
        if self.r < 1:
            raise MedtuneError(f"vera r must be >= 1; got {self.r}")
        if not 0 <= self.dropout < 1:
            raise MedtuneError(f"vera dropout must be in [0, 1); got {self.dropout}")

    def check(self, model_cfg: dict) -> None:
        check_targets(resolve_targets(self.targets, model_cfg, "vera"), model_cfg, "vera")
        check_layers(self.layers, model_cfg, "vera")


def apply_vera(model, cfg: VeraArgs):
    from peft import VeraConfig

    targets = resolve_targets(cfg.targets, model_config_of(model), "vera")
    pc = VeraConfig(
        r=cfg.r,
        d_initial=cfg.d_initial,
        vera_dropout=cfg.dropout,
        target_modules=targets,
        layers_to_transform=cfg.layers,
        save_projection=True,  # the projections travel with the adapter: a reload needs no PRNG agreement
        task_type="CAUSAL_LM",
    )
    model, report = wrap_peft(model, pc, "vera", {"r": cfg.r, "targets": targets})
    report.notes.append("VeRA: the random projections vera_A / vera_B are frozen and shared; d and b train")
    return model, report


# Learning rate: PEFT's method_comparison runs VeRA (experiments/vera/llama-3.2-3B-default) at its
# default_training_params.json lr, 1e-4, with no override; VeRA's paper tunes much higher rates
# for its few parameters, so tuning's span around this centre matters more than for LoRA.
SPECS = (MethodSpec("vera", VeraArgs, apply_vera, default_lr=1e-4, uses_peft=True, description="PEFT VeRA"),)
