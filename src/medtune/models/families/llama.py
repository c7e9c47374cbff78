"""Llama (and SmolLM2, which is a Llama): full causal attention in every block, one rotary embedding."""

from medtune.models.families.spec import Family, all_full

FAMILY = Family("llama", ("llama",), layer_types=all_full)
