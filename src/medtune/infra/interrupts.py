"""Ctrl-C (SIGINT) and SIGTERM as a request to stop at the next safe point.

The first signal only records the request; the work checks it where stopping loses nothing:
between training steps (train.fit saves a checkpoint, then raises Interrupted), between tuning
trials and between comparison stages (`raise_if_requested`). A second signal aborts at once
(KeyboardInterrupt). Without this, a signal landing after a trial's last step was either lost
(fit had finished its loop, so the command ran on to the end) or raised inside Optuna's record
of the trial (a traceback, and a finished trial left RUNNING, trained again by the rerun).

`deferred()` installs the handler for a block; nested blocks share the outermost one's request,
so a Ctrl-C between two trials stops the next trial's loop before its first step.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable

SIGNALS = (signal.SIGINT, signal.SIGTERM)  # clusters send SIGTERM before a kill


class Interrupted(Exception):
    """Raised after Ctrl-C or SIGTERM once what was running is safely on disk."""


_state: dict = {"depth": 0, "requested": None, "say": [], "at": 0.0}
# Under torchrun a terminal's Ctrl-C reaches every worker, and the launcher then forwards its own
# copy: one keypress arrives twice. Repeats this soon after the first are that copy, not a second
# Ctrl-C (which would abort before the checkpoint).
LAUNCHER_REPEAT_S = 2.0


def requested() -> str | None:
    """The name of the signal that asked to stop (SIGINT, SIGTERM), or None."""
    return _state["requested"]


def _on_signal(signum, frame) -> None:
    now = time.monotonic()
    if _state["requested"]:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and now - _state["at"] < LAUNCHER_REPEAT_S:
            return
        raise KeyboardInterrupt  # the second one: stop now
    _state["requested"], _state["at"] = signal.Signals(signum).name, now
    say = next((s for s in reversed(_state["say"]) if s is not None), None)
    if say is not None:
        say(f"\n{_state['requested']}: stopping after the current step (Ctrl-C again to abort)")


@contextlib.contextmanager
def deferred(say: Callable[[str], None] | None = None):
    """Signals in this block only request a stop (see module doc). `say` prints the notice (None:
    silent, e.g. a tuning trial's quiet run; an enclosing block's `say` is used then)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return
    outermost = _state["depth"] == 0
    old = {sig: signal.signal(sig, _on_signal) for sig in SIGNALS} if outermost else {}
    if outermost:
        _state["requested"] = None
    _state["depth"] += 1
    _state["say"].append(say)
    try:
        yield
    finally:
        _state["say"].pop()
        _state["depth"] -= 1
        if outermost:
            for sig, handler in old.items():
                signal.signal(sig, handler)
            _state["requested"] = None


def raise_if_requested(message: str) -> None:
    """At a safe point: stop with `message` (exit 130 through the CLI) if a signal asked to."""
    if _state["requested"]:
        raise Interrupted(message)
