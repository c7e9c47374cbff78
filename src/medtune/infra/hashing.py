"""sha256 of the files medtune writes and reads back (checkpoints, run weights, prepared data).

A size check passes a file overwritten with other values of the same size; a content hash does
not. The writer records `file_hashes` in the folder's manifest (written last); the reader calls
`check_hashes` before it uses a byte, and a mismatch is one line naming the file.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from medtune.infra.errors import MedtuneError

CHUNK = 1 << 20  # 1 MiB reads: a checkpoint of a 1B model is never held in memory whole


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_hashes(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} of the files `names` (paths relative to `folder`) that exist."""
    folder = Path(folder)
    return {n: sha256_file(folder / n) for n in names if (folder / n).is_file()}


def check_hash(path: Path, expected: str | None, manifest: Path, actual: str | None = None, hint: str = "") -> None:
    """`path` must hold the bytes `manifest` recorded (nothing recorded: an earlier release's
    folder, accepted as it is). `actual`: its hash when the caller already read the file; `hint`:
    what to do instead, appended to the message."""
    if expected is None:
        return
    if not Path(path).is_file():
        raise MedtuneError(f"{path} is missing (listed in {manifest})")
    got = actual or sha256_file(path)
    if got != expected:
        raise MedtuneError(
            f"{path} does not match the sha256 {manifest.name} recorded when medtune wrote it "
            f"({got[:12]}... vs {expected[:12]}...): it was changed or corrupted since; refusing to use it"
            + (f" ({hint})" if hint else "")
        )


def check_hashes(folder: Path, recorded: dict | None, manifest: Path, hint: str = "") -> None:
    """Every file in `recorded` ({relative name: sha256}) as check_hash checks one."""
    for name, expected in (recorded or {}).items():
        check_hash(Path(folder) / name, expected, manifest, hint=hint)
