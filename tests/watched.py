"""A child process whose output is read as it comes, so a test can wait on conditions with deadlines.

Reading a child's stdout line by line while its stderr waits for ``communicate`` can block the child once
the unread pipe fills, and a loop over ``stdout`` has no deadline: a child that hangs hangs the test.
``Watched`` drains both pipes in threads and lets a test wait, bounded, for a line or any other condition.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class Watched:
    """``subprocess.Popen(command, text pipes)``, both pipes drained into lists of lines as the child writes."""

    def __init__(self, command: list[str], **popen: Any) -> None:
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
        self.out: list[str] = []
        self.err: list[str] = []
        self._changed = threading.Condition()
        self._readers = [self._drain(self.process.stdout, self.out), self._drain(self.process.stderr, self.err)]

    @property
    def pid(self) -> int:
        return self.process.pid

    def _drain(self, pipe: Any, lines: list[str]) -> threading.Thread:
        """A daemon thread appending ``pipe``'s lines to ``lines`` until the child closes it."""

        def read() -> None:
            for line in pipe:
                with self._changed:
                    lines.append(line)
                    self._changed.notify_all()
            with self._changed:
                self._changed.notify_all()

        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        return thread

    def until(self, found: Callable[[], T | None], timeout: float, what: str, poll: float = 0.05) -> T:
        """``found()``'s first truthy value, asked every ``poll`` s and whenever the child writes; raises
        AssertionError naming ``what`` (and the child's last output) once ``timeout`` s pass or the child ends."""
        deadline = time.monotonic() + timeout
        while True:
            value = found()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0 or self.process.poll() is not None and not any(r.is_alive() for r in self._readers):
                ended = "timed out" if left <= 0 else f"the child exited with {self.process.returncode}"
                raise AssertionError(f"{what}: {ended} after {timeout - max(left, 0):.0f} s; {self.tail()}")
            with self._changed:
                self._changed.wait(min(poll, left))

    def line(self, prefix: str, timeout: float) -> str:
        """The first stdout line starting with ``prefix`` (waiting for it, bounded)."""
        return self.until(
            lambda: next((x for x in list(self.out) if x.startswith(prefix)), None), timeout, f"no line {prefix!r}"
        )

    def finish(self, timeout: float) -> tuple[str, str]:
        """Wait (bounded, as ``communicate``) for the child to exit and its pipes to close; its stdout and stderr."""
        deadline = time.monotonic() + timeout
        self.process.wait(timeout=timeout)
        for reader in self._readers:
            reader.join(timeout=max(deadline - time.monotonic(), 0))
        if any(reader.is_alive() for reader in self._readers):
            raise subprocess.TimeoutExpired(self.process.args, timeout)
        return "".join(self.out), "".join(self.err)

    def tail(self, chars: int = 2000) -> str:
        """The end of what the child wrote, for a failure message."""
        return f"stdout: {''.join(self.out)[-chars:]!r} stderr: {''.join(self.err)[-chars:]!r}"

    def kill(self) -> None:
        """SIGKILL the child if it still runs (a test's ``finally``)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
