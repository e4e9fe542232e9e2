"""Ray for every shell: join or start a cluster, and the one check that what a run asks for fits in it.

The sweep (``python -m raykd.tune``), the Flower simulations and the Tune search over simulations all
connect here and check their demands here, before any work starts, so a request the cluster cannot
place is one line instead of a silent wait. ``run_simulation_child`` starts a Flower simulation as its
own driver process joined to the cluster (Flower shuts Ray down when it ends, which must not happen
inside another driver or a Tune trial's worker).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from raykd.cli import EXIT_ROUNDS_LOST
from raykd.config import ExperimentConfig
from raykd.errors import ConfigError
from raykd.files import last_line

#: CPU a Tune trial that only waits on a child simulation reserves for itself.
WAITER_CPUS = 0.01


def connect_ray(cfg: ExperimentConfig, log_to_driver: bool = False) -> None:
    """Join the configured cluster (``ray.address`` or RAY_ADDRESS), else start a local Ray on loopback."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_answers(address)
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
    else:
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            logging_level=logging.WARNING,
            _node_ip_address="127.0.0.1",
        )


def ensure_ray(cfg: ExperimentConfig) -> None:
    """Connect as ``connect_ray`` does, unless a caller (a notebook, the test suite) already did."""
    if not ray.is_initialized():
        connect_ray(cfg)


def check_answers(address: str, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` cluster must answer before ``ray.init``, which would otherwise retry for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" or a ray:// address: Ray resolves those itself
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise ConfigError(
            f"ray.address: nothing answers at {address} ({err.strerror or err}); start the head with "
            f"`ray start --head --port {port}` or leave ray.address unset to start a local Ray"
        ) from None


@dataclass(frozen=True)
class Capacity:
    """What the cluster has: CPUs and GPUs in total and free now, and per node (Flower places per node)."""

    cpus: float
    gpus: float
    free_cpus: float
    nodes: list[dict[str, float]]

    @classmethod
    def now(cls) -> Capacity:
        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"]]
        return cls(total.get("CPU", 0), total.get("GPU", 0), free.get("CPU", 0), nodes)

    def flower_pool(self, client_cpus: float) -> int:
        """Flower's actor pool: the sum over nodes of floor(node CPUs / client CPUs)."""
        return sum(int(n.get("CPU", 0) / client_cpus) for n in self.nodes)


def _refuse(field: str, asked: str, has: str, allowed: str) -> None:
    raise ConfigError(f"{field}: {asked} but {has}; allowed: {allowed}")


def check_sweep(cfg: ExperimentConfig, cap: Capacity) -> None:
    """Trials, the teacher server, Ray Train worker groups and DML peer actors must each fit."""
    t, teacher, learners = cfg.tune, cfg.teacher, cfg.learners
    server = teacher.mode == "server"
    has = f"the Ray cluster has {cap.cpus:g} CPUs and {cap.gpus:g} GPUs"
    if t.cpus_per_trial > cap.cpus:
        _refuse("tune.cpus_per_trial", f"{t.cpus_per_trial:g} CPUs per trial", has, f"up to {cap.cpus:g}")
    if t.gpus_per_trial > cap.gpus:
        _refuse("tune.gpus_per_trial", f"{t.gpus_per_trial:g} GPUs per trial", has, f"up to {cap.gpus:g}")
    if server and teacher.num_cpus + t.cpus_per_trial > cap.cpus:
        asked = f"the server's {teacher.num_cpus:g} CPUs plus one trial's {t.cpus_per_trial:g}"
        _refuse("teacher.num_cpus", asked, has, f"up to {cap.cpus - t.cpus_per_trial:g}")
    if server and teacher.num_gpus > cap.gpus:
        _refuse("teacher.num_gpus", f"{teacher.num_gpus:g} GPUs for the server", has, f"up to {cap.gpus:g}")
    free = cap.cpus - (teacher.num_cpus if server else 0)
    group = learners.num_workers * learners.cpus_per_worker
    if learners.num_workers and group > free:
        asked = f"{learners.num_workers} workers x {learners.cpus_per_worker:g} CPUs"
        _refuse(
            "learners.num_workers",
            asked,
            f"{free:g} CPUs are free beside the server",
            f"up to {int(free // learners.cpus_per_worker)}",
        )
    if learners.use_gpu and learners.num_workers > cap.gpus:
        _refuse(
            "learners.use_gpu",
            f"{learners.num_workers} workers need {learners.num_workers} GPUs",
            has,
            f"up to {int(cap.gpus)} workers",
        )
    peers = len(cfg.node_ids()) * learners.cpus_per_worker + WAITER_CPUS
    if learners.peer_actors and any(m.name == "dml" for m in cfg.methods) and peers > free:
        asked = f"DML with {len(cfg.node_ids())} peer actors x {learners.cpus_per_worker:g} CPUs"
        _refuse(
            "learners.peer_actors",
            asked,
            f"{free:g} CPUs are free",
            f"learners.cpus_per_worker up to {(free - WAITER_CPUS) / len(cfg.node_ids()):.2f}",
        )


def check_flower_pool(cfg: ExperimentConfig, cap: Capacity, beside: float = 0.0) -> None:
    """Flower sizes its actor pool from the whole cluster and waits for every actor: it must fit in what is free.

    ``beside`` is CPU held by the caller while the simulation runs (a Tune trial waiting on it).
    """
    f = cfg.federated
    largest = max((n.get("CPU", 0) for n in cap.nodes), default=0)
    if f.client_gpus > max((n.get("GPU", 0) for n in cap.nodes), default=0):
        _refuse(
            "federated.client_gpus",
            f"{f.client_gpus:g} GPUs per client",
            f"the cluster has {cap.gpus:g}",
            f"up to {cap.gpus:g}",
        )
    pool = cap.flower_pool(f.client_cpus)
    if pool == 0:
        _refuse(
            "federated.client_cpus",
            f"{f.client_cpus:g} CPUs per client",
            f"the largest Ray node has {largest:g}",
            f"up to {largest:g}",
        )
    if pool * f.client_cpus + beside > cap.free_cpus + 1e-9:
        raise ConfigError(
            f"federated.client_cpus: Flower places {pool} clients x {f.client_cpus:g} CPUs, but only "
            f"{cap.free_cpus - beside:g} of the cluster's CPUs are free for them; pick a value that leaves room "
            f"(e.g. one that does not divide the node's CPUs exactly, such as 0.6)"
        )


def actor_restarts(class_name: str) -> int:
    """How often Ray restarted this job's actors of ``class_name`` after they died (read from the GCS: the
    public state API needs the dashboard, which raykd's local Ray does not start)."""
    from ray._private.state import actors  # the GCS actor table; lazy: only a finished simulation asks

    job = ray.get_runtime_context().get_job_id()
    return sum(
        int(a.get("NumRestarts", 0))
        for a in actors().values()
        if a.get("ActorClassName") == class_name and a.get("JobID") == job
    )


def run_simulation_child(args: list[str], folder: Path, cwd: str) -> dict[str, Any]:
    """``python -m federated.simulate ARGS`` as a child driver joined to this cluster; its summary.json.

    Its records go under ``folder``; a failed simulation raises with the last line it printed. One that finished
    but lost client updates (exit 3) returns its summary, whose ``lost`` says what was lost.
    """
    address = ray.get_runtime_context().gcs_address
    command = [sys.executable, "-m", "federated.simulate", *args, "--address", address, "--set", f"output_dir={folder}"]
    done = subprocess.run(command, cwd=cwd, env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True)
    if done.returncode not in (0, EXIT_ROUNDS_LOST):
        raise RuntimeError(f"simulation exited with {done.returncode}: {last_line(done.stderr or 'no output')}")
    (run,) = folder.iterdir()
    return json.loads((run / "summary.json").read_text())
