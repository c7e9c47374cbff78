"""Full fine-tuning: every parameter trains. The reference the efficient methods are judged against."""

from __future__ import annotations

from dataclasses import dataclass

from medtune.methods.params import count_params, is_tied, module_names, select_trainable
from medtune.methods.spec import MethodSpec, TrainableReport


@dataclass
class FullConfig:
    def check(self, model_cfg: dict) -> None:
        """Every parameter of any causal LM can train: nothing to check against the model."""


def apply(model, cfg: FullConfig):
    trained = select_trainable(model, lambda name: True)
    notes = ["tied head and input embeddings counted once"] if is_tied(model) else []
    total = count_params(model)
    return model, TrainableReport("full", count_params(model, True), total, total, module_names(trained), notes)


SPECS = (MethodSpec("full", FullConfig, apply, default_lr=2e-5, uses_peft=False, description="every parameter"),)
