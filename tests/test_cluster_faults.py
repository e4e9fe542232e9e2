"""Real faults and requests the cluster cannot meet: each is one line, never a hang, a flood or a silent success.

Federated runs are ``python -m federated.simulate`` child processes (their own Ray drivers; the one whose
actor is killed starts its own Ray, so its actors are its descendants, the other joins the session's); the sweep's
checks run in-process against the session's real Ray (``ray_session``: 2 CPUs, no GPU on this machine).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from tests.conftest import tiny_raw
from tests.test_federated import REPO, fed_raw
from tests.watched import Watched

# ---------------------------------------------------------------- Flower: a dead client actor, a diverged run


def _start_simulation(tmp_path: Path, raw: dict[str, Any], *sets: str, address: str = "") -> Watched:
    """A simulation as a child driver: its own Ray, or the cluster at ``address``; its output read as it comes."""
    config = tmp_path / "fed.yaml"
    config.write_text(yaml.safe_dump(raw))
    joins = ["--address", address] if address else []
    return Watched(
        [
            sys.executable,
            "-m",
            "federated.simulate",
            "--config",
            str(config),
            *joins,
            *(a for s in sets for a in ("--set", s)),
        ],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )


def _descendants(root: int) -> list[int]:
    """Every live process under ``root`` (the simulation's own Ray: its GCS, raylet and their workers)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                parents[int(entry.name)] = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _client_actors(root: int) -> list[int]:
    """The simulation's Flower ClientApp actor processes (Ray titles them ``ray::ClientAppActor...``)."""
    actors = []
    for pid in _descendants(root):
        try:
            if (Path("/proc") / str(pid) / "cmdline").read_bytes().startswith(b"ray::ClientAppActor"):
                actors.append(pid)
        except OSError:
            continue
    return actors


def _busy_first(actors: list[int]) -> list[int]:
    """``actors`` with those running a task (Ray titles them ``ray::ClientAppActor.run``) first; gone ones left out."""
    titles = {}
    for pid in actors:
        with contextlib.suppress(OSError):
            titles[pid] = (Path("/proc") / str(pid) / "cmdline").read_bytes()
    return sorted(titles, key=lambda pid: b".run" not in titles[pid])


@pytest.mark.slow
def test_a_killed_client_actor_is_replaced_and_no_round_loses_an_update(tmp_path: Path, cache_dir: Path) -> None:
    """SIGKILL of one ClientApp actor in round 2 of 3: Ray restarts it and retries its work, every later round
    has every client, the end says so in one line, and the exit status is 0 (every round ran as configured).

    Waits are on conditions with deadlines, never on timing: round 1's line (round 2 starts once it is printed),
    then a ClientAppActor process under the simulation; the kill must land before the last round's line, since
    the restarts are counted once the rounds end."""
    rounds = 3
    raw = fed_raw(tmp_path, cache_dir, rounds=rounds, client_cpus=1)  # a pool of 2 actors for 3 clients
    sim = _start_simulation(tmp_path, raw)
    try:
        sim.line("round 1:", timeout=300)
        victim = sim.until(
            lambda: _busy_first(_client_actors(sim.pid)), 120, "no ClientAppActor process under the simulation"
        )[0]
        os.kill(victim, signal.SIGKILL)
        assert not any(line.startswith(f"round {rounds}:") for line in sim.out), "the kill came after the last round"
        out, err = sim.finish(timeout=300)
    finally:
        sim.kill()
    assert sim.process.returncode == 0, err[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    rounds_csv = pd.read_csv(run / "rounds.csv")
    assert list(rounds_csv.succeeded[1:]) == [3] * rounds and rounds_csv.failed.sum() == 0
    assert not rounds_csv.skipped.any()
    assert json.loads((run / "summary.json").read_text())["actor_restarts"] >= 1
    (said,) = [line for line in err.splitlines() if line.startswith("raykd: ")]
    assert "client actor restart(s): Ray replaced the dead actor(s) and retried their work" in said
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_diverging_lr_is_one_line_and_exit_3_without_a_traceback_flood(
    tmp_path: Path, cache_dir: Path, ray_address: str
) -> None:
    """``federated.local.lr=1e30``: every client's loss is NaN; each round's failures are one warning line, the
    end says what was lost in one line, the records are still written, and the exit status is 3."""
    raw = fed_raw(tmp_path, cache_dir)
    done = _start_simulation(tmp_path, raw, "federated.local.lr=1e30", address=ray_address)
    try:
        out, err = done.finish(timeout=300)
    finally:
        done.kill()
    assert done.process.returncode == 3, err[-3000:]
    assert "Traceback" not in err and "ClientAppException" not in err
    (said,) = [line for line in err.splitlines() if line.startswith("raykd: ")]
    assert said.startswith("raykd: 2 of 2 rounds did not run as configured (rounds 1, 2), 6 client updates failed")
    assert (
        "6 of them diverged (non-finite loss; lower federated.local.lr)" in said and "loss term 'loss' is nan" in said
    )
    warnings = [line for line in err.splitlines() if "clients failed in training" in line]
    assert len(warnings) == 2 and "(x3)" in warnings[0]  # one line per round, the clients' cause counted
    (run,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["starts"]["-"]["diverged_clients"] == 6 and summary["lost"] in said


def test_the_lost_line_counts_what_each_start_point_lost(tmp_path: Path, cache_dir: Path) -> None:
    """Nothing lost is no line (exit 0); otherwise one line with the rounds by start point, the counts and the
    commonest cause, leaving out what is zero."""
    from federated.record import lost
    from federated.strategy import RoundLog
    from raykd.config import validate_config

    cfg = validate_config(fed_raw(tmp_path, cache_dir, rounds=2))

    def ran(r: int, succeeded: int = 3, failed: int = 0, **more: Any) -> RoundLog:
        return RoundLog(r, sampled=3, succeeded=succeeded, failed=failed, **more)

    assert lost(cfg, {"": [RoundLog(0), ran(1), ran(2)]}) is None
    dead = "The actor is dead because its worker process has died."
    history = {
        "random": [RoundLog(0), ran(1, 2, 1, errors=[dead]), ran(2)],
        "average": [RoundLog(0), ran(1), ran(2, 1, 2, eval_failed=1, errors=[dead] * 3)],
    }
    assert lost(cfg, history) == (
        "2 of 4 rounds did not run as configured (rounds random 1, average 2), 3 client updates failed, "
        f"1 client evaluations failed; cause: {dead}"
    )


# ---------------------------------------------------------------- requests the cluster cannot meet (a sweep)

_NO_GPU = "but the Ray cluster has 2 CPUs and 0 GPUs; allowed: up to 0 (0: run on the CPU)"
_DML = ["methods=[{name: dml}]", "learners.peer_actors=true"]
# (overrides, the one line's text, whether the refusal comes before anything is written: no Ray needed)
REFUSED = [
    (["teacher.num_gpus=1"], "teacher.num_gpus: 1 GPUs but teacher.mode=inline runs the teacher inside each", True),
    (["teacher.mode=cache", "teacher.device=cuda"], "teacher.device: cuda but teacher.mode=cache runs the", True),
    (["teacher.mode=server", "teacher.device=cuda"], "teacher.device: cuda but teacher.num_gpus is 0", True),
    (["teacher.mode=server", "teacher.device=cpu", "teacher.num_gpus=1"], "teacher.device=cpu never uses", True),
    (["teacher.replicas=2"], "teacher.replicas: 2 but teacher.mode=inline runs the teacher inside each", True),
    (["learners.use_gpu=true"], "learners.use_gpu: true but learners.num_workers is 0", True),
    (["learners.peer_actors=true"], "learners.peer_actors: true but no method row is dml", True),
    (["teacher.batch_wait_ms=.inf"], "teacher.batch_wait_ms = inf: Input should be a finite number", True),
    (["teacher.batch_wait_ms=5000"], "teacher.batch_wait_ms = 5000: Input should be less than or equal to 1000", True),
    (["tune.gpus_per_trial=0.5"], f"tune.gpus_per_trial: 0.5 GPUs for one trial {_NO_GPU}", False),
    (
        ["teacher.mode=server", "teacher.num_gpus=1"],
        f"teacher.num_gpus: 1 GPUs for one teacher server {_NO_GPU}",
        False,
    ),
    (
        ["learners.num_workers=1", "learners.use_gpu=true"],
        f"learners.use_gpu: 1 GPUs for one learner worker {_NO_GPU}",
        False,
    ),
    (
        ["federated.after_sweep=true", "federated.client_gpus=1"],
        f"federated.client_gpus: 1 GPUs for one Flower client {_NO_GPU}",
        False,
    ),
    (
        ["teacher.mode=server", "teacher.num_cpus=3"],
        "teacher.num_cpus: 3 CPUs for the server but the Ray cluster",
        False,
    ),
    (
        ["teacher.mode=server", "teacher.num_cpus=0.5", "teacher.replicas=3"],
        "teacher.replicas: 3 server replicas x 0.5 CPUs plus one trial's 1 but the Ray cluster has 2 CPUs and 0 GPUs; "
        "allowed: up to 2",
        False,
    ),
    (
        [
            *_DML,
            "learners.cpus_per_worker=0.9",
            "axes={peers: {two: {transfer.teachers: [1]}, three: {transfer.teachers: [1, 2]}}}",
        ],
        "learners.peer_actors: DML with 3 peer actors x 0.9 CPUs but 2 CPUs are free; allowed: "
        "learners.cpus_per_worker "
        "up to 0.66",
        False,
    ),
    (
        ["federated.after_sweep=true", "federated.client_cpus=3"],
        "federated.client_cpus: 3 CPUs per client but the largest Ray node has 2",
        False,
    ),
]


@pytest.mark.parametrize(("overrides", "expected", "early"), REFUSED, ids=[" ".join(o)[:60] for o, _, _ in REFUSED])
def test_a_request_the_cluster_or_mode_cannot_meet_is_one_line_and_exit_2(
    tmp_path: Path,
    cache_dir: Path,
    capsys: pytest.CaptureFixture,
    ray_session: object,
    overrides: list[str],
    expected: str,
    early: bool,
) -> None:
    """This machine has no GPU and the session's Ray 2 CPUs: each request is refused before any trial, in one
    line that names the knob and what fits; a knob the mode ignores is refused before anything is written."""
    from raykd.tune import main

    config = tmp_path / "experiment.yaml"
    cache = tmp_path / "cache" if early else cache_dir  # the late refusals share the session's dataset cache
    config.write_text(yaml.safe_dump(tiny_raw(tmp_path, cache)))
    rc = main(["--config", str(config), *(a for o in overrides for a in ("--set", o))])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("raykd: error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err, err
    assert not (tmp_path / "runs").exists() and not (tmp_path / "mlflow.db").exists()
    if early:
        assert not cache.exists()


def test_gpus_ray_lists_but_torch_cannot_use_are_refused() -> None:
    """A one-node cluster started with ``--num-gpus`` on a machine whose torch has no CUDA: refused up front,
    not a CUDA traceback once the sweep has started."""
    from raykd.cluster import Capacity, check_gpus
    from raykd.errors import ConfigError

    cap = Capacity(2, 1, 2, [{"CPU": 2, "GPU": 1}], cuda=False)
    check_gpus({"tune.gpus_per_trial": 0}, cap)  # a CPU run is fine
    with pytest.raises(ConfigError, match=r"^tune.gpus_per_trial: asks for GPUs but torch here cannot use CUDA"):
        check_gpus({"tune.gpus_per_trial": 0.5}, cap)
    check_gpus({"tune.gpus_per_trial": 0.5}, Capacity(2, 1, 2, [{"CPU": 2, "GPU": 1}], cuda=True))


def test_teacher_replicas_share_a_gpu_in_fractions_that_fit_on_it(tmp_path: Path) -> None:
    """Each replica reserves ``teacher.num_gpus``: 4 at 0.25 share one GPU, a fifth is one line naming the knob."""
    from raykd.cluster import Capacity, check_server
    from raykd.config import validate_config
    from raykd.errors import ConfigError

    cap = Capacity(8, 1, 8, [{"CPU": 8, "GPU": 1}], cuda=True)
    teacher = {"mode": "server", "num_cpus": 1, "num_gpus": 0.25}
    replicas = lambda n: validate_config(tiny_raw(tmp_path, tmp_path, teacher=teacher | {"replicas": n}))  # noqa: E731
    check_server(replicas(4), cap)
    with pytest.raises(
        ConfigError, match=r"^teacher.replicas: 5 server replicas x 0.25 GPUs but .*; allowed: up to 4$"
    ):
        check_server(replicas(5), cap)
    assert Capacity(8, 2, 8, [{"CPU": 8, "GPU": 2}], cuda=True).gpu_slots(0.4) == 4  # a fraction fits on one GPU


def test_a_wait_on_an_actor_that_cannot_be_placed_is_bounded(ray_session: Any) -> None:
    """An actor whose resources no node has never starts: the bounded wait ends in one line, not a hang."""
    from raykd.cluster import get_within
    from raykd.errors import ConfigError

    @ray_session.remote(num_cpus=0.1, resources={"no-such-resource": 1})
    class Never:
        def ping(self) -> int:
            return 1

    actor = Never.remote()
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError, match=r"^peers starting: no answer within 2 s \(\d+(\.\d+)? CPUs of the"):
            get_within(actor.ping.remote(), 2, "peers starting")
    finally:
        ray_session.kill(actor)
    assert time.monotonic() - started < 30
