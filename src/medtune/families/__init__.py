"""Model families: what medtune's fast path and its methods need to know about an architecture, in one place.

A family is one small module in this package that calls `register(Family(...))`. The fast
path (medtune.forward) runs a family's decoder blocks by hand; everything it needs beyond
the shared Hugging Face layout (`model.embed_tokens`, `model.layers`, `model.norm`,
`model.rotary_emb`, `lm_head`, and the decoder-layer call
`layer(hidden, attention_mask=, position_embeddings=, position_ids=)`) is declared here:
  * which attention each block uses (full, sliding window) and so which mask it needs;
  * whether rotary embeddings differ per layer type (Gemma 3: a local and a global one);
  * config options the fast path does not reproduce (then the plain path runs instead);
  * a softcap on the final logits (Gemma 2/3 configs may set one);
  * the default adapter targets (fused `qkv_proj` on Phi-3) and module paths for selective.
Any other causal LM runs on the plain path: the model's own forward (see forward.py).
Adding a family: one module here, added to `_BUILTIN`, plus one test in tests/test_families.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

FULL = "full_attention"
SLIDING = "sliding_attention"


def all_full(config) -> list[str]:
    """Llama: every block attends causally over the whole sequence."""
    return [FULL] * config.num_hidden_layers


def declared(config) -> list[str]:
    """Qwen2/Qwen3/Gemma 3: the config lists each block's attention (`layer_types`)."""
    types = list(getattr(config, "layer_types", None) or all_full(config))
    return types[: config.num_hidden_layers]


def window_everywhere(config) -> list[str]:
    """Mistral/Phi-3: one `sliding_window` for every block when the config sets it."""
    return [SLIDING if getattr(config, "sliding_window", None) else FULL] * config.num_hidden_layers


# In-features of each adaptable Linear in a block, by module name: "hidden" (hidden_size), "attention"
# (num_attention_heads * head_dim) or "intermediate" (intermediate_size). Read from config.json alone.
LLAMA_LINEARS = {
    "q_proj": "hidden",
    "k_proj": "hidden",
    "v_proj": "hidden",
    "o_proj": "attention",
    "gate_proj": "hidden",
    "up_proj": "hidden",
    "down_proj": "intermediate",
}


def no_final_softcap(config) -> float | None:
    return None


def nothing_unsupported(config) -> str | None:
    return None


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]  # config.json "model_type" values this family covers
    layer_types: Callable = all_full  # config -> attention kind per block (FULL | SLIDING)
    rotary_per_type: bool = False  # rotary_emb(x, position_ids, layer_type) instead of rotary_emb(x, position_ids)
    final_softcap: Callable = no_final_softcap  # config -> cap c: logits = c * tanh(logits / c), or None
    unsupported: Callable = nothing_unsupported  # config -> why the fast path cannot run it, or None
    linears: dict = None  # module name -> width rule (see LLAMA_LINEARS, the default)
    adapter_targets: tuple[str, ...] = ("q_proj", "v_proj")  # LoRA/BOFT/OFT default
    ia3_targets: tuple[str, ...] = ("k_proj", "v_proj", "down_proj")
    ia3_feedforward: tuple[str, ...] = ("down_proj",)
    blocks: str = "model.layers"  # module paths, for selective unfreezing and reports
    norm: str = "model.norm"
    head: str = "lm_head"
    embeddings: str = "model.embed_tokens"
    notes: str = ""

    def __post_init__(self):
        if self.linears is None:
            object.__setattr__(self, "linears", dict(LLAMA_LINEARS))

    def linear_widths(self, model_cfg: dict) -> dict[str, int | None]:
        """in_features of each adaptable Linear in a block, from config.json alone (None: unknown)."""
        h = model_cfg.get("hidden_size")
        heads = model_cfg.get("num_attention_heads")
        head_dim = model_cfg.get("head_dim") or (h // heads if h and heads else None)
        width = {
            "hidden": h,
            "attention": heads * head_dim if heads and head_dim else None,
            "intermediate": model_cfg.get("intermediate_size"),
        }
        return {name: width[rule] for name, rule in self.linears.items()}


REGISTRY: dict[str, Family] = {}
_BUILTIN = ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3")


def register(family: Family) -> Family:
    for t in family.model_types:
        REGISTRY[t] = family
    return family


def _load_builtin() -> None:
    import importlib

    for name in _BUILTIN:
        importlib.import_module(f"medtune.families.{name}")


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
