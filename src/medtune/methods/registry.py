"""Fine-tuning methods behind one interface: `apply(model, cfg) -> (model, TrainableReport)`.

A method is one module defining `SPECS` (a tuple of spec.MethodSpec), listed in `_load_builtin`.
Its config class validates its own values in `__post_init__` and implements `check(model_config:
dict) -> None`, which checks them against the model's config.json before any weights load
(MedtuneError naming the bad value); defaults that depend on the architecture come from its
family (medtune.models.families). `params.select_trainable` is the single place where
requires_grad is decided for methods that do not go through PEFT.
"""

from __future__ import annotations

from medtune.infra.errors import MedtuneError
from medtune.methods.spec import MethodSpec

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
    if REGISTRY:
        return
    from medtune.methods import full, hira, ln_tuning, miss, peft_methods, selective, vera

    for module in (selective, full, peft_methods, vera, ln_tuning, miss, hira):
        for spec in module.SPECS:
            register(spec)
