"""Qwen2: Llama's block with q/k/v biases; sliding-window blocks where `layer_types` says so
(use_sliding_window, max_window_layers), each with its own mask."""

from medtune.models.families.spec import Family, declared

FAMILY = Family("qwen2", ("qwen2",), layer_types=declared)
