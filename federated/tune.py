"""``python -m federated.tune`` is gone: a search over simulations is a sweep whose trials are simulations."""

from __future__ import annotations

import sys

#: What a caller of the old command reads instead of a search (exit status 2: nothing ran).
REPLACEMENT = (
    "raykd: error: python -m federated.tune is gone; search simulations with the sweep: python -m raykd.tune "
    "--config CONFIG --set tune.trial=simulation (the method row's lists and axes over federated.* knobs are the grid)"
)


def main(argv: list[str] | None = None) -> int:
    """Say what replaced this command, in one line; nothing runs."""
    print(REPLACEMENT, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
