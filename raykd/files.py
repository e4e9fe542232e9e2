"""Files raykd writes and reads: atomic writes, content digests, checked cache entries, the last line of an error.

Every file raykd writes goes through ``write_atomic`` (write to a temporary name, then rename), so a
crash never leaves a half-written table, checkpoint or cache entry where a reader expects a whole one.
Every cache entry (node models, dataset arrays, teacher logits) goes through ``cached``: its SHA-256
is written beside it and checked on every read, so flipped bytes are rebuilt, never used; and a file
lock makes one process build an entry while the others (a second sweep, a parallel task) wait and reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

T = TypeVar("T")
#: How long a process waits for another one to build the same cache entry (a node model can take minutes).
LOCK_WAIT_S = 900.0
log = logging.getLogger("raykd.cache")


def write_atomic(path: Path, data: str | bytes | Callable[[Path], None]) -> Path:
    """Write ``data`` (text, bytes, or a writer called with a temporary path) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        if callable(data):
            data(tmp)
        else:
            tmp.write_bytes(data.encode() if isinstance(data, str) else data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes: the identity of a checkpoint or cache entry, whatever its name."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def last_line(text: str, limit: int = 300) -> str:
    """The last non-empty line of an error or traceback (what a table cell or one-line report shows)."""
    lines = str(text).strip().splitlines()
    return lines[-1][:limit] if lines else "unknown error"


def digest_file(path: Path) -> Path:
    """Where a cache entry's SHA-256 is recorded: beside it, ``<name>.sha256``."""
    return path.with_name(f"{path.name}.sha256")


def lock_file(path: Path) -> Path:
    """The lock that serialises building ``path``: in the user's temporary folder, so a build that fails on bad
    input leaves nothing in the cache folder."""
    folder = Path(tempfile.gettempdir()) / f"raykd-locks-{os.getuid()}"
    folder.mkdir(exist_ok=True)
    return folder / f"{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:32]}.lock"


def read_checked(path: Path, read: Callable[[Path], T]) -> tuple[T | None, str]:
    """``(value, "")`` for an entry whose bytes match its recorded SHA-256; ``(None, why)`` otherwise.

    ``why`` is empty when the entry is simply missing, and says what failed when it is there but not
    trustworthy (flipped bytes, truncated, no recorded digest, unreadable).
    """
    if not path.is_file():
        return None, ""
    try:
        recorded = digest_file(path).read_text().strip()
    except OSError:
        return None, "it has no recorded SHA-256"
    if recorded != file_digest(path):
        return None, "its bytes do not match the SHA-256 recorded when it was written"
    try:
        return read(path), ""
    except Exception as err:  # noqa: BLE001 - an entry that cannot be read back is as untrustworthy as a wrong digest
        return None, f"{type(err).__name__}: {last_line(str(err), 200)}"


def cached(
    path: Path, read: Callable[[Path], T], build: Callable[[], T], write: Callable[[Path, T], None]
) -> tuple[T, bool]:
    """The checked entry at ``path``, or ``build()`` written there (with its digest) once; also says whether it built.

    The build runs under the entry's lock: a concurrent caller waits (at most LOCK_WAIT_S), then
    reads what the first one wrote. An entry that fails its check is logged in one line and rebuilt.
    """
    value, _ = read_checked(path, read)
    if value is not None:
        return value, False
    lock = lock_file(path)
    try:
        with FileLock(lock, timeout=LOCK_WAIT_S):
            value, why = read_checked(path, read)
            if value is not None:
                return value, False
            if why:
                log.warning("cache entry %s failed its content check (%s); rebuilding it", path, why)
            value = build()
            write_atomic(path, lambda tmp: write(tmp, value))
            write_atomic(digest_file(path), file_digest(path))
            return value, True
    except Timeout:
        raise TimeoutError(f"waited {LOCK_WAIT_S:.0f}s for another process building {path} (lock {lock})") from None
