"""``python -m raykd.tune``: the sweep's command line (it lives in ``raykd.sweep.cli``)."""

import sys

from raykd.sweep.cli import EXIT_TRIALS_FAILED, EXIT_UNTRACKED, main

__all__ = ["EXIT_TRIALS_FAILED", "EXIT_UNTRACKED", "main"]

if __name__ == "__main__":
    sys.exit(main())
