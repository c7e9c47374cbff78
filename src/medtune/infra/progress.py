"""Progress bars (tqdm, with ETA) that stay quiet when stderr is not a terminal unless asked."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm


def enabled() -> bool:
    flag = os.environ.get("MEDTUNE_PROGRESS")
    if flag is not None:
        return flag not in ("0", "false", "no")
    return sys.stderr.isatty()


def track(items, desc: str, total=None, unit="it"):
    return tqdm(items, desc=desc, total=total, unit=unit, disable=not enabled(), dynamic_ncols=True, leave=False)


def bar(total, desc: str, unit="it", disable: bool = False):
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or not enabled(), dynamic_ncols=True)
