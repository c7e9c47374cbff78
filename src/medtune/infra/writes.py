"""Writes that survive a full disk: one line naming the path and the errno, nothing half-written.

Every place medtune writes wraps the write in `guarded(path, point)`: an OSError of the
disk (ENOSPC, EDQUOT, EIO, EROFS, EFBIG), or a library's error that carries one in its text
(safetensors: "I/O error: No space left on device (os error 28)"), removes the partial files
the caller names and becomes one MedtuneError naming the path and the errno. Each guarded
write is a named fault point (`MEDTUNE_FAULT=write.<what>:<n>:enospc`, infra/faults.py), so a
test can fill the disk at exactly that write.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

from medtune.infra.errors import MedtuneError
from medtune.infra.faults import fault_point

DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.EFBIG})
_OS_ERROR = re.compile(r"os error (\d+)")  # how Rust libraries (safetensors, tokenizers) name it


class WriteFailed(MedtuneError):
    """A write the disk refused (full, over quota, read-only, failing)."""

    def __init__(self, where, code: int, fix: str = ""):
        self.where, self.code = where, code
        what = f"cannot write {where}" if where else "a write failed"
        name = errno.errorcode.get(code, str(code))
        super().__init__(f"{what}: {os.strerror(code)} ({name}); {fix or 'free space (or make it writable) and rerun'}")


def disk_errno(e: BaseException) -> int | None:
    """The disk errno behind `e` (one of DISK_ERRNOS), or None when `e` is something else."""
    if isinstance(e, OSError) and e.errno in DISK_ERRNOS:
        return e.errno
    m = _OS_ERROR.search(str(e))
    if m and int(m.group(1)) in DISK_ERRNOS:
        return int(m.group(1))
    text = str(e).lower()
    if "no space left" in text or "disk is full" in text:  # sqlite: "database or disk is full"
        return errno.ENOSPC
    return None


def write_failed(path, e: BaseException, hint: str = "") -> WriteFailed | None:
    """The one-line error for a disk error `e` while writing `path`; None for any other error."""
    if isinstance(e, WriteFailed):  # a guard inside this one named it already: keep its path
        return WriteFailed(e.where, e.code, hint) if hint else e
    code = disk_errno(e)
    if code is None:
        return None
    return WriteFailed(getattr(e, "filename", None) or path, code, hint)


def remove(paths: Iterable) -> None:
    """Remove partial files or folders this process created (never anything else)."""
    for p in paths:
        p = Path(p)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


@contextmanager
def guarded(path, point: str | None = None, partial: Iterable = (), hint: str = ""):
    """Run a write of `path`; on a disk error remove `partial` and raise WriteFailed instead.

    `point` names the write for fault injection (hit before the body runs, so that `partial`
    may already hold an earlier part of the write, as a real full disk leaves it)."""
    try:
        if point:
            fault_point(point, path)
        yield
    except Exception as e:
        err = write_failed(path, e, hint)
        if err is None:
            raise
        remove(partial)
        raise err from None


def write_text(path: Path, text: str, point: str | None = None, encoding: str = "utf-8") -> None:
    """`text` into `path` atomically (temporary sibling, then rename), guarded."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with guarded(path, point or f"write.{path.name}", partial=[tmp]):
        tmp.write_text(text, encoding=encoding)
        tmp.replace(path)


def save_figure(fig, path: Path, **kwargs) -> None:
    """`fig.savefig(path)` through a temporary sibling: a full disk leaves no half a PNG."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")  # the suffix tells matplotlib the format
    with guarded(path, "write.figure", partial=[tmp]):
        fig.savefig(tmp, **kwargs)
        tmp.replace(path)
