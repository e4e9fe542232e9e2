"""A run with no address starts its own Ray, even beside a head from ``ray start`` that it could discover.

The head runs with its temp folder where Ray's discovery looks (``$TMPDIR/ray``, private to this test, with its
own port), so a plain ``ray.init()`` in the command would join it: the stranger's cluster of issue 27.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_raw
from tests.test_federated import REPO
from tests.test_reliability import _kill_ray_processes
from tests.test_two_nodes import _ray_start, free_port

#: The line every sweep and simulation prints once connected.
JOINED = re.compile(r"^ray: (started a local Ray at|joined) (\S+) \((\d+) CPUs, (\d+) GPUs\)$", re.M)


@pytest.fixture
def stranger() -> Iterator[tuple[Path, str]]:
    """A 1-CPU head started by ``ray start`` in a private temp folder (Ray's discovery file in ``$TMPDIR/ray``);
    yields that TMPDIR and the head's address, and ends every process it started."""
    base, port = Path(tempfile.mkdtemp(prefix="rk3", dir="/tmp")), free_port()  # short: socket paths are limited
    heads = list[subprocess.Popen[bytes]]()
    try:
        heads.append(_ray_start(base / "ray", "--head", f"--port={port}", "--include-dashboard=false"))
        assert (base / "ray" / "ray_current_cluster").is_file()  # what a plain ray.init() would join
        yield base, f"127.0.0.1:{port}"
    finally:
        for head in heads:
            head.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                head.wait(timeout=60)
        assert not _kill_ray_processes(str(base)), "a Ray process of the test's head outlived it"
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize("num_cpus", [2, None])
def test_a_run_without_address_starts_its_own_ray_beside_a_strangers_head(
    stranger: tuple[Path, str], tmp_path: Path, cache_dir: Path, num_cpus: int | None
) -> None:
    """With ``ray.num_cpus`` set, joining the head would fail (Ray refuses num_cpus for an existing cluster);
    unset, it would run there silently. Either way the command starts its own Ray and says so in one line. The
    sweep asks for 8 CPUs a trial, so it stops (exit 2) right after connecting: the check names the CPUs it saw."""
    tmpdir, head = stranger
    raw = tiny_raw(tmp_path, cache_dir, tune={"cpus_per_trial": 8}, ray={"num_cpus": num_cpus})
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    env.pop("RAY_ADDRESS", None)
    command = [sys.executable, "-m", "raykd.tune", "--config", str(config)]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-3000:]
    (line,) = JOINED.findall(done.stdout)
    assert line[0] == "started a local Ray at" and line[1].rpartition(":")[2] != head.rpartition(":")[2]
    if num_cpus:
        assert line[2] == "2"
    assert done.stderr.startswith("raykd: error: tune.cpus_per_trial: 8 CPUs per trial"), done.stderr
