"""One writer per folder: an exclusive `fcntl.flock` on a lock file beside the folder.

`with FolderLock(run_dir, "run"):` makes every other medtune process that asks for the same
folder fail at once with a one-line MedtuneError naming the holder's PID, instead of two
runs interleaving metrics.jsonl or overwriting each other's weights.

Where the lock lives: `<parent>/.<name>.lock`, beside the folder, not inside it. The folder
may not exist yet when the lock must be taken (nothing may be written before the lock), and
prepare swaps whole folders into place by rename, which would carry a lock file inside
the folder away with it. The leading dot keeps the file out of listings of run folders.

Stale locks: the kernel drops a flock when its holder dies (even by SIGKILL), so a lock
file left behind by a dead process is simply taken over; its PID line is rewritten. The
lock file is removed on release. Unlinking a flock'd file races with a process that
opened it just before, so after locking we check that the path still names the inode we
locked, and retry otherwise.

Re-entrant within one process: compare may hold a run's lock while calling train(), which
takes the same lock; a nested FolderLock on a folder this process already holds is a no-op.
Not for network filesystems where flock is not enforced across machines.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from medtune.infra.errors import MedtuneError

# lock path -> [fd, depth] for the locks this process holds (re-entrancy).
_held: dict[Path, list[int]] = {}
_held_pid = os.getpid()


def lock_path(folder: Path) -> Path:
    """The lock file that guards `folder`: a hidden sibling, `<parent>/.<name>.lock`.

    The path is resolved ("..", symlinks), so every spelling of one folder gets one lock."""
    folder = Path(folder).expanduser().resolve()
    return folder.parent / f".{folder.name}.lock"


def pid_alive(pid: int) -> bool:
    """Is process `pid` of this host running? (Signal 0 checks without sending anything.)"""
    if pid <= 0:
        return False  # 0 and negatives name process groups, not one process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _holder(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class FolderLock:
    """Exclusive, non-blocking lock on `folder` for the lifetime of a `with` block.

    `what` names the folder in the error ("run", "comparison", "prepared data"). Raises
    MedtuneError without waiting when another live process holds the lock.
    """

    def __init__(self, folder: Path, what: str = "run"):
        self.folder = Path(folder)
        self.what = what
        self.path = lock_path(self.folder)
        self._fd: int | None = None

    def acquire(self) -> FolderLock:
        global _held, _held_pid
        if _held_pid != os.getpid():  # forked child: the parent's locks are not ours
            _held, _held_pid = {}, os.getpid()
        entry = _held.get(self.path)
        if entry is not None:
            entry[1] += 1
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MedtuneError(f"cannot create {self.path.parent}: {e.strerror}") from None
        for _ in range(100):  # retries only when a releasing holder unlinked the file under us
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise MedtuneError(self._busy_message()) from None
                raise MedtuneError(f"cannot lock {self.path}: {e.strerror}") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise MedtuneError(f"cannot lock {self.path}: it keeps being replaced")
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _held[self.path] = [fd, 1]
        return self

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MedtuneError(f"cannot create lock file {self.path}: {e.strerror}") from None

    def _busy_message(self) -> str:
        pid = _holder(self.path)
        who = f"pid {pid}" if pid is not None else "pid unknown"
        if pid is not None and not pid_alive(pid):
            who += ", which has exited; a process it started may still hold the lock"
        return (
            f"{self.what} folder {self.folder} is in use by another medtune process ({who}); "
            f"wait for it to finish or stop it (lock file: {self.path})"
        )

    def release(self) -> None:
        entry = _held.get(self.path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _held[self.path]
        try:
            os.unlink(self.path)  # while still locked: a waiter re-checks the inode and retries
        except OSError:
            pass
        os.close(entry[0])
        self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
