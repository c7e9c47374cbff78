"""Where medtune keeps what it downloads or converts (MedQuAD, GGUF -> HF folders)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """$MEDTUNE_CACHE, else ~/.cache/medtune."""
    return Path(os.environ.get("MEDTUNE_CACHE", Path.home() / ".cache" / "medtune"))
