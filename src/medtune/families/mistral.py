"""Mistral: Llama's block; when the config sets `sliding_window`, every block attends within it."""

from medtune.families import Family, register, window_everywhere

FAMILY = register(Family("mistral", ("mistral",), layer_types=window_everywhere))
