"""Parameters and modules: unique counts (tied tensors once), trainable selection, layer checks."""

from __future__ import annotations

from collections.abc import Callable

import torch

from medtune.infra.errors import MedtuneError
from medtune.models.families.registry import base_model, family_of

# --------------------------------------------------------------------------- shared helpers


def unique_params(model: torch.nn.Module):
    """(name, param) once per tensor: tied weights share one Parameter and count once."""
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        yield name, p


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for _, p in unique_params(model) if p.requires_grad or not trainable_only)


def select_trainable(model: torch.nn.Module, predicate: Callable[[str], bool]) -> list[str]:
    """The one function that sets requires_grad for non-PEFT methods. Returns trained names."""
    names = []
    for _, p in model.named_parameters(remove_duplicate=False):
        p.requires_grad_(False)
    for name, p in model.named_parameters(remove_duplicate=False):
        if predicate(name):
            p.requires_grad_(True)
    for name, p in unique_params(model):
        if p.requires_grad:
            names.append(name)
    return names


def module_names(param_names: list[str]) -> list[str]:
    """Collapse parameter names to readable module patterns, keeping order:
    'base_model.model.model.layers.3.self_attn.q_proj.lora_A.default.weight' x 30 layers
    -> 'model.layers.{0-29}.self_attn.q_proj.lora_A'."""
    import re

    by_pattern: dict[str, list[int]] = {}
    for n in param_names:
        mod = n.rsplit(".", 1)[0]
        mod = re.sub(r"^base_model\.model\.", "", mod)
        mod = re.sub(r"\.default$", "", mod)
        m = re.search(r"\.layers\.(\d+)\.", mod)
        key = mod[: m.start()] + ".layers.{}." + mod[m.end() :] if m else mod
        idx = by_pattern.setdefault(key, [])
        if m and int(m.group(1)) not in idx:
            idx.append(int(m.group(1)))
    out = []
    for key, idx in by_pattern.items():
        if "{}" not in key:
            out.append(key)
            continue
        idx = sorted(idx)
        span = (
            str(idx[0])
            if len(idx) == 1
            else (f"{idx[0]}-{idx[-1]}" if idx == list(range(idx[0], idx[-1] + 1)) else ",".join(map(str, idx)))
        )
        out.append(key.replace("{}", span if len(idx) == 1 else "{" + span + "}"))
    return out


def n_blocks(model_cfg: dict) -> int | None:
    """Decoder blocks, from config.json alone (GPT-2 spells it n_layer)."""
    for key in ("num_hidden_layers", "n_layer", "num_layers"):
        if isinstance(model_cfg.get(key), int):
            return model_cfg[key]
    return None


def check_layers(layers, model_cfg: dict, method: str) -> None:
    """Block indices must exist: checked from config.json, before any weights load."""
    n = n_blocks(model_cfg)
    if layers and n is not None:
        bad = [i for i in layers if not 0 <= i < n]
        if bad:
            raise MedtuneError(f"{method} layers {bad} out of range: the model has blocks 0..{n - 1}")


def module_paths(model) -> dict[str, str]:
    """Dotted paths (in the unwrapped model) of its blocks, final norm and head.

    A registered family declares them; any other causal LM: the ModuleList holding
    config.num_hidden_layers blocks, the last norm module outside it, and the output embedding.
    """
    base = base_model(model)
    family = family_of(base)
    if family is not None:
        return {"blocks": family.blocks, "norm": family.norm, "head": family.head}
    n = getattr(base.config, "num_hidden_layers", None)
    names = dict((id(m), name) for name, m in base.named_modules())
    blocks = next(
        (name for name, m in base.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n), None
    )
    if blocks is None:
        raise MedtuneError(f"cannot find the {n} decoder blocks of {type(base).__name__}")
    norms = [
        name
        for name, m in base.named_modules()
        if "norm" in type(m).__name__.lower() and not name.startswith(blocks + ".")
    ]
    head = base.get_output_embeddings()
    return {"blocks": blocks, "norm": norms[-1] if norms else "", "head": names.get(id(head), "lm_head")}


def decoder_layers(model) -> torch.nn.ModuleList:
    """The transformer blocks of a causal LM (plain or PEFT-wrapped)."""
    return base_model(model).get_submodule(module_paths(model)["blocks"])


def is_tied(model) -> bool:
    base = base_model(model)
    head = base.get_output_embeddings()
    emb = base.get_input_embeddings()
    return head is not None and head.weight is emb.weight
