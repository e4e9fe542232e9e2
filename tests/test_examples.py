"""examples/: the "distil your own model" script runs as a user runs it, in its own folder; it joins the session's
Ray through RAY_ADDRESS, as in a shell set up for a cluster (the interrupted sweeps of test_faults start their own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_distil_your_own_runs_and_its_student_reproduces_its_accuracy(tmp_path: Path, ray_address: str) -> None:
    done = subprocess.run(
        [sys.executable, "distil_your_own.py", "--tiny", "--out", str(tmp_path)],
        cwd=EXAMPLES,
        env=os.environ | {"RAY_ADDRESS": ray_address},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "the loaded student reproduces the test accuracy raykd recorded" in done.stdout
    (run,) = (tmp_path / "runs").iterdir()
    assert (run / "students" / "kd-tuned" / "seed0.pt").is_file() and (run / "results.md").is_file()
    assert (tmp_path / "teacher.pt").stat().st_size > 0  # the user's checkpoint is read, never removed
