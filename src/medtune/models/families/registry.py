"""Model families: what medtune's fast path and its methods need to know about an architecture, in one place.

A family is one small module in this package defining `FAMILY = Family(...)` (spec.py). The fast
path (medtune.training.forward) runs a family's decoder blocks by hand; everything it needs beyond
the shared Hugging Face layout (`model.embed_tokens`, `model.layers`, `model.norm`,
`model.rotary_emb`, `lm_head`, and the decoder-layer call
`layer(hidden, attention_mask=, position_embeddings=, position_ids=)`) is declared here:
  * which attention each block uses (full, sliding window) and so which mask it needs;
  * whether rotary embeddings differ per layer type (Gemma 3: a local and a global one);
  * config options the fast path does not reproduce (then the plain path runs instead);
  * a softcap on the final logits (Gemma 2/3 configs may set one);
  * the default adapter targets (fused `qkv_proj` on Phi-3) and module paths for selective.
Any other causal LM runs on the plain path: the model's own forward (see forward.py).
Adding a family: one module here, listed in `_load_builtin`, plus one test in tests/test_families.py.
"""

from __future__ import annotations

from medtune.models.families.spec import Family

REGISTRY: dict[str, Family] = {}


def register(family: Family) -> Family:
    for t in family.model_types:
        REGISTRY[t] = family
    return family


def _load_builtin() -> None:
    if REGISTRY:
        return
    from medtune.models.families import gemma3, llama, mistral, phi3, qwen2, qwen3

    for module in (llama, qwen2, qwen3, mistral, gemma3, phi3):
        register(module.FAMILY)


def family_names() -> list[str]:
    _load_builtin()
    return sorted({f.name for f in REGISTRY.values()})


def family_for(model_type: str | None) -> Family | None:
    """The family registered for a config.json model_type, or None (plain path)."""
    _load_builtin()
    return REGISTRY.get(model_type or "")


def base_model(model):
    """The transformers model under a PEFT wrapper (PEFT injects adapters in place): the one unwrap helper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def family_of(model) -> Family | None:
    return family_for(getattr(base_model(model).config, "model_type", None))


def not_supported(model) -> str | None:
    """Why the fast path cannot run `model` (None: it can). The one place that decides it."""
    base = base_model(model)
    config = base.config
    family = family_for(getattr(config, "model_type", None))
    if family is None:
        return (
            f"{type(base).__name__} (model_type {getattr(config, 'model_type', None)!r}) is not one of the "
            f"families it knows ({', '.join(family_names())})"
        )
    inner = getattr(base, "model", None)
    missing = [a for a in ("embed_tokens", "layers", "norm", "rotary_emb") if not hasattr(inner, a)]
    if missing or not hasattr(base, "lm_head"):
        return f"{type(base).__name__} lacks the {family.name} layout (missing {', '.join(missing or ['lm_head'])})"
    return family.unsupported(config)
