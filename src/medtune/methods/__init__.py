"""Fine-tuning methods behind one interface: `apply(model, cfg) -> (model, TrainableReport)`.

A method is one module that calls `register(...)`. Its config class validates its own
values in `__post_init__` and implements `check(model_config: dict) -> None`, which checks
them against the model's config.json before any weights load (MedtuneError naming the bad
value); defaults that depend on the architecture come from its family (medtune.families).
`select_trainable` is the single place where requires_grad is decided for methods that do
not go through PEFT.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from medtune.errors import MedtuneError
from medtune.families import base_model, family_of
from medtune.schema import from_dict


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


REGISTRY: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    REGISTRY[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_builtin()
    if name not in REGISTRY:
        raise MedtuneError(f"unknown method {name!r} (known: {', '.join(sorted(REGISTRY))})")
    return REGISTRY[name]


def method_names() -> list[str]:
    _load_builtin()
    return sorted(REGISTRY)


def _load_builtin() -> None:
    from medtune.methods import full, peft_methods, selective  # noqa: F401  (registration side effect)


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
