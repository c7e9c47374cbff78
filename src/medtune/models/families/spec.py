"""What a model family declares: attention kinds per block, rotary embeddings, module paths,
adapter targets and linear widths (the fast path reads it; see registry.py for the lookup)."""

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
    linears: dict | None = None  # module name -> width rule (see LLAMA_LINEARS, the default)
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
        return {name: width[rule] for name, rule in (self.linears or LLAMA_LINEARS).items()}
