"""Gemma 3 (text): scaled embeddings (`embed_tokens` multiplies by sqrt(hidden) itself), QK-norm and
pre/post norms inside each block, sliding-window ("local") and full ("global") blocks from `layer_types`,
each with its own rotary embedding (`rotary_emb(x, position_ids, layer_type)`) and its own mask;
an optional tanh softcap on the final logits. (`attn_logit_softcapping` is not applied by transformers'
Gemma 3 attention either: the packed attention honours a `softcap` only when the module passes one.)"""

from medtune.models.families.spec import Family, declared


def final_softcap(config) -> float | None:
    return getattr(config, "final_logit_softcapping", None)


def unsupported(config) -> str | None:
    if getattr(config, "use_bidirectional_attention", False):
        return "Gemma 3 with use_bidirectional_attention is an encoder, not a causal LM"
    return None


FAMILY = Family(
    "gemma3",
    ("gemma3_text",),
    layer_types=declared,
    rotary_per_type=True,
    final_softcap=final_softcap,
    unsupported=unsupported,
)
