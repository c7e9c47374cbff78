"""medtune: fine-tune small Llama-family models on medical QA and compare methods honestly."""

__version__ = "0.1.0"
