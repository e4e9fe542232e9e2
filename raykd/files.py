"""Files raykd writes and reads: atomic writes, content digests, the last line of an error.

Every file raykd writes goes through ``write_atomic`` (write to a temporary name, then rename), so a
crash never leaves a half-written table, checkpoint or cache entry where a reader expects a whole one.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path


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
