"""Qwen3: Qwen2's layout plus QK-norm (RMSNorm on each head's query and key, inside the attention module,
so the fast path needs nothing more); sliding-window blocks from `layer_types`."""

from medtune.models.families.spec import Family, declared

FAMILY = Family("qwen3", ("qwen3",), layer_types=declared)
