"""Test hooks that make crashes happen at exact places instead of guessed moments.

`MEDTUNE_FAULT=<point>[:<n>]` kills the process with SIGKILL the n-th time (default: the
first) execution reaches `fault_point(<point>)`; `MEDTUNE_FAULT=<point>:<n>:enospc` (or
edquot, eio, erofs) raises that OSError there instead, as a full or failing disk would.
`MEDTUNE_NAN_AT_STEP=<k>` turns the training loss of optimizer step k (1-based) into NaN.
Both are read from the environment, so tests can drive a real `medtune` subprocess; unset,
each call costs one dict lookup.

Points: step_end (after an optimizer step is counted), checkpoint_written (new checkpoint
complete in its temporary folder, old one still in place), checkpoint_swap (old one renamed
aside, new one not yet in place), save_weights (final weights being written); and one
`write.<what>` per kind of write (infra/writes.py: write.checkpoint, write.prepared,
write.run, write.weights, write.<file name> for JSON and text, write.figure, ...).
"""

from __future__ import annotations

import errno
import os
import signal

_hits: dict[str, int] = {}


def fault_point(name: str, path=None) -> None:
    """`path`: what is being written here, for the OSError's filename."""
    spec = os.environ.get("MEDTUNE_FAULT")
    if not spec:
        return
    point, _, rest = spec.partition(":")
    if point != name:
        return
    nth, _, mode = rest.partition(":")
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] != int(nth or 1):
        return
    if mode:
        code = getattr(errno, mode.upper())
        raise OSError(code, os.strerror(code), None if path is None else str(path))
    os.kill(os.getpid(), signal.SIGKILL)


def nan_at_step(step: int) -> bool:
    """True when the test asked for a non-finite loss at this (1-based) optimizer step."""
    spec = os.environ.get("MEDTUNE_NAN_AT_STEP")
    return bool(spec) and step in {int(s) for s in spec.split(",")}
