"""What one sweep could not write to its tracking store: an object its caller holds, never process state.

``raykd.run`` makes one per sweep and hands it to the sweep's parent run and trial-run callback; every store write
goes through its ``remote``, so a dead MLflow server costs the sweep seconds and its local results nothing, and
a second sweep in the same process (a notebook, the Python API) starts with a store that has lost nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from raykd.files import last_line


class Untracked:
    """The first error that stopped the store's writes, and how many writes of each kind it lacks since."""

    def __init__(self) -> None:
        self.error = ""
        self.items: Counter[str] = Counter()

    def remote(self, what: str, action: Callable[[], Any]) -> None:
        """Do one write to the store; a failure is remembered (with ``what``) instead of raised, and once the store
        has failed every later write is skipped and remembered, so the sweep's own results never wait on it."""
        if not self.error:
            try:
                action()
                return
            except Exception as err:  # noqa: BLE001 - a dead server, a locked store: the local results must not care
                self.error = f"{type(err).__name__}: {last_line(str(err), 200)}"
        self.items[what] += 1

    def line(self, uri: str) -> str | None:
        """One line naming what the store at ``uri`` lacks (None when everything was recorded)."""
        if not self.error:
            return None
        what = ", ".join(f"{n} x {item}" if n > 1 else item for item, n in self.items.items())
        return f"tracking.uri: MLflow at {uri} failed ({self.error}); not recorded there: {what}"
