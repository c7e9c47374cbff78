"""The one place where a run's inputs are checked before any weights load.

`medtune train` and `medtune compare` (and tuning) call `check_run`; each method's config
implements `check(model_config)` against the model's config.json (layer count, widths,
module names of the model's family), so a bad value fails in a second, not after loading.
"""

from __future__ import annotations

from pathlib import Path

from medtune.config.sections import RunConfig
from medtune.models import loading


def check_run(cfg: RunConfig, data_dir: Path | None = None) -> dict:
    """Check the prepared data (when given), the model's config and the method against it.

    Returns the model's config.json as a dict.
    """
    if data_dir is not None:
        from medtune.data.prepare import read_split

        read_split(Path(data_dir), "train")
    model_cfg = loading.read_model_config(cfg.model.spec, cfg.model.trust_remote_code)
    cfg.method_config().check(model_cfg)
    return model_cfg
