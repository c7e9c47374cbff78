"""Mistral: Llama's block; when the config sets `sliding_window`, every block attends within it."""

from medtune.models.families.spec import Family, window_everywhere

FAMILY = Family("mistral", ("mistral",), layer_types=window_everywhere)
