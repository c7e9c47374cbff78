"""Selective unfreezing: the last N transformer blocks and the output head train.

Block, norm and head paths come from the model's family (medtune.models.families), or are found on
any other causal LM (`methods.module_paths`).

With tied embeddings (SmolLM2, Llama-3.2-1B) the head *is* the input embedding matrix.
`head: tied` trains that shared matrix (what the study's setup implies): the input
embeddings change too, and backward must run through every block to reach them.
`head: untied` gives the head its own trainable copy and freezes the input embeddings, so
backward stops at the first unfrozen block and the frozen prefix can be cached.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medtune.infra.errors import MedtuneError
from medtune.methods.params import (
    count_params,
    decoder_layers,
    is_tied,
    module_names,
    module_paths,
    n_blocks,
    select_trainable,
)
from medtune.methods.spec import MethodSpec, TrainableReport


@dataclass
class SelectiveConfig:
    layers: int = 1  # how many of the last transformer blocks train
    head: str = "tied"  # tied | untied (only matters when the model ties head and embeddings)
    norm: bool = False  # also train the final norm

    def __post_init__(self):
        if self.layers < 0:
            raise MedtuneError(f"selective layers must be >= 0; got {self.layers}")
        if self.head not in ("tied", "untied"):
            raise MedtuneError(f"selective head must be tied or untied; got {self.head!r}")

    def check(self, model_cfg: dict) -> None:
        n = n_blocks(model_cfg)
        if n is not None and self.layers > n:
            raise MedtuneError(f"selective layers={self.layers} but the model has only {n} blocks")


def untie_head(model) -> None:
    """Give lm_head its own copy of the (tied) embedding matrix."""
    head = model.get_output_embeddings()
    new = torch.nn.Linear(
        head.in_features,
        head.out_features,
        bias=head.bias is not None,
        dtype=head.weight.dtype,
        device=head.weight.device,
    )
    with torch.no_grad():
        new.weight.copy_(head.weight)
        if head.bias is not None:
            new.bias.copy_(head.bias)
    model.set_output_embeddings(new)
    model.config.tie_word_embeddings = False
    if hasattr(model.config, "get_text_config"):
        model.config.get_text_config().tie_word_embeddings = False


def apply(model, cfg: SelectiveConfig):
    base_total = count_params(model)
    layers = decoder_layers(model)
    n_layers = len(layers)
    if cfg.layers > n_layers:
        raise MedtuneError(f"selective layers={cfg.layers} but the model has only {n_layers} blocks")
    tied = is_tied(model)
    notes = []
    if tied and cfg.head == "untied":
        untie_head(model)
        notes.append(
            "head untied: lm_head trains its own copy; input embeddings frozen, "
            "backward stops at the first unfrozen block"
        )
    elif tied:
        notes.append(
            "head tied: lm_head shares its matrix with the input embeddings, "
            "so the input embeddings train too and backward runs through every block"
        )
    first = n_layers - cfg.layers
    paths = module_paths(model)
    blocks = [f"{paths['blocks']}.{i}" for i in range(first, n_layers)]
    prefixes = [f"{b}." for b in blocks] + [f"{paths['head']}."]
    if cfg.norm:
        if not paths["norm"]:
            raise MedtuneError(f"selective norm: {type(model).__name__} has no final norm module")
        prefixes.append(f"{paths['norm']}.")
    trained = select_trainable(model, lambda name: name.startswith(tuple(prefixes)))
    report = TrainableReport(
        method="selective",
        trainable=count_params(model, trainable_only=True),
        total=count_params(model),
        base_total=base_total,
        # whole blocks train, so name the blocks rather than their 9 sub-modules each
        trained_modules=blocks + [m for m in module_names(trained) if not m.startswith(paths["blocks"] + ".")],
        notes=notes,
        details={
            "layers": list(range(first, n_layers)),
            "head": cfg.head if tied else "separate",
            "tied_in_base": tied,
        },
    )
    return model, report


SPECS = (
    MethodSpec(
        "selective", SelectiveConfig, apply, default_lr=5e-5, uses_peft=False, description="last N blocks + output head"
    ),
)
