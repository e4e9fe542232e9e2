"""Files raykd writes and reads: atomic and held writes, path checks, safe names, digests, checked cache entries,
the last line of an error.

Every file raykd writes goes through ``write_atomic`` (write to a temporary name, then rename), so a
crash never leaves a half-written table, checkpoint or cache entry where a reader expects a whole one;
inside ``held_writes`` those writes wait until every check of the input has passed.
Every cache entry (node models, dataset arrays, teacher logits) goes through ``cached``: its SHA-256
is written beside it and checked on every read, so flipped bytes are rebuilt, never used; and a file
lock makes one process build an entry while the others (a second sweep, a parallel task) wait and reuse it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from raykd.errors import ConfigError

T = TypeVar("T")
Content = str | bytes | Callable[[Path], None]
#: Longest name ``safe_component`` returns (with its digest suffix); far below every filesystem's 255.
MAX_COMPONENT = 100
#: The writes waiting on the innermost ``held_writes`` block of this thread or task, by path (a later write replaces
#: an earlier); empty outside every block. A context variable, not shared state: each block sets it on entry and
#: resets it on exit, whatever happens, so a hold never outlives its ``with`` nor reaches another thread or run.
_held: ContextVar[tuple[dict[Path, Content], ...]] = ContextVar("raykd_held_writes", default=())
#: How long a process waits for another one to build the same cache entry (a node model can take minutes).
LOCK_WAIT_S = 900.0
log = logging.getLogger("raykd.cache")


def write_atomic(path: Path, data: Content) -> Path:
    """Write ``data`` (text, bytes, or a writer called with a temporary path) to ``path`` atomically."""
    path = Path(path)
    if held := _held.get():
        held[-1].pop(path, None)
        held[-1][path] = data
        return path
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


@contextmanager
def held_writes() -> Iterator[None]:
    """Hold every ``write_atomic`` of the block in memory; they land, in order, when the outermost block
    ends without an error, and are dropped when it raises: a refused input leaves nothing on disk (a
    dataset built to check the config against is cached only once the whole config has passed)."""
    writes: dict[Path, Content] = {}
    token = _held.set((*_held.get(), writes))
    try:
        yield
    finally:
        _held.reset(token)
    for path, data in writes.items():
        write_atomic(path, data)  # into the enclosing hold, or onto disk


def check_folder(path: Path, field: str) -> None:
    """Refuse, in one line naming ``field``, a folder raykd could not create or write in.

    The nearest existing folder is probed by making and removing a folder in it: permission bits say
    nothing for root or for special filesystems (``/proc``), and a regular file may stand in the way.
    """
    try:
        if "\0" in str(path):
            raise ValueError("embedded null byte")  # exists() would only answer False
        existing = Path(path)
        while not existing.exists():
            existing = existing.parent
    except (OSError, ValueError) as err:  # a NUL byte, a name too long
        raise ConfigError(
            f"{field}: {str(path)!r} is not a usable path ({getattr(err, 'strerror', None) or err}); "
            "allowed: a writable folder"
        ) from None
    if not existing.is_dir():
        raise ConfigError(f"{field}: {path} cannot be a folder, {existing} is a file; allowed: a writable folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".raykd-probe-", dir=existing))
    except OSError as err:
        raise ConfigError(
            f"{field}: cannot write in {existing} ({err.strerror or err}); allowed: a writable folder"
        ) from None


def safe_component(text: str) -> str:
    """``text`` as one path component that stays inside its folder: no separators, NUL bytes or leading dots,
    at most ``MAX_COMPONENT`` characters. A text that had to change gets a digest of the original appended,
    so two different names (``kd a``, ``kd/a``) never share a folder; a plain name is kept as it is."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]", "_", text).lstrip(".")
    if cleaned == text and 0 < len(text) <= MAX_COMPONENT:
        return text
    suffix = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned[: MAX_COMPONENT - len(suffix) - 1]}-{suffix}" if cleaned else suffix


def plain_component(text: str) -> str:
    """``text`` itself when it is already a safe path component (a config's ``name``), else a ValueError saying
    what is allowed: a name the user chose is refused rather than silently changed."""
    if safe_component(text) != text:
        raise ValueError(
            f"not a plain folder name; allowed: 1..{MAX_COMPONENT} of A-Z a-z 0-9 . _ = + - (not starting with a dot), "
            f"e.g. {safe_component(text)!r}"
        )
    return text


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
            write_atomic(digest_file(path), lambda tmp: tmp.write_text(file_digest(path)))  # after the entry, if held
            return value, True
    except Timeout:
        raise TimeoutError(f"waited {LOCK_WAIT_S:.0f}s for another process building {path} (lock {lock})") from None
