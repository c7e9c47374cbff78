"""Llama (and SmolLM2, which is a Llama): full causal attention in every block, one rotary embedding."""

from medtune.families import Family, all_full, register

FAMILY = register(Family("llama", ("llama",), layer_types=all_full))
