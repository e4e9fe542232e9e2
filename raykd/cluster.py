"""Ray for every shell: join or start a cluster, and the one check that what a run asks for fits in it.

The sweep (``python -m raykd.tune``, whose trials may be whole simulations) and the Flower simulations all
connect here and check their demands here, before any work starts, so a request the cluster cannot
place is one line instead of a silent wait.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import ray

from raykd.compat import gcs_actor_table, loopback_node
from raykd.config import Cell, ExperimentConfig
from raykd.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: CPU a Tune trial that only waits on a child simulation reserves for itself.
WAITER_CPUS = 0.01
#: Longest wait for an actor to start (its resources were checked up front; longer means it cannot be placed).
START_TIMEOUT_S = 120.0
#: Longest wait for the teacher server to answer one request (a crashed server restarts well within it).
ANSWER_TIMEOUT_S = 300.0
#: Where a trial ran: the Ray node id in its results and finished record, and a tag of its MLflow run.
NODE_ID = "ray.node_id"


def connect_ray(cfg: ExperimentConfig, log_to_driver: bool = False) -> None:
    """Join the configured cluster (``ray.address`` or RAY_ADDRESS), else start a local Ray on loopback.

    A local Ray is ``address="local"``: a plain ``ray.init()`` would join whatever head this machine last
    started (its ``ray_current_cluster`` file), a stranger's cluster, and refuse ``num_cpus`` there.
    """
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_answers(address)
        ray.init(address=address, log_to_driver=log_to_driver, logging_level=logging.WARNING)
    else:
        ray.init(
            address="local",
            num_cpus=cfg.ray.num_cpus,
            include_dashboard=False,
            log_to_driver=log_to_driver,
            logging_level=logging.WARNING,
            **loopback_node(),
        )
    announce("joined" if address else "started a local Ray at")


def ensure_ray(cfg: ExperimentConfig) -> None:
    """Connect as ``connect_ray`` does, unless a caller (a notebook, the test suite) already did."""
    if ray.is_initialized():
        announce("joined")
    else:
        connect_ray(cfg)


def announce(verb: str) -> None:
    """One line naming the cluster this run uses, so a run on the wrong cluster shows at its start."""
    total = ray.cluster_resources()
    address = ray.get_runtime_context().gcs_address
    print(f"ray: {verb} {address} ({total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs)", flush=True)


def get_within(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` with a bound: a wait that outlasts it is one line naming what did not answer, not a hang
    (a ConfigError: the driver's CLI prints it as one line; in a trial it is the trial's one-line error)."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        free = ray.available_resources().get("CPU", 0)
        raise ConfigError(f"{what}: no answer within {timeout_s:g} s ({free:g} CPUs of the cluster free now)") from None


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
    """What the cluster has: CPUs and GPUs in total and free now, and per node (Ray places each bundle, and
    Flower its actors, on one node); ``cuda``: whether this driver's torch can use a GPU."""

    cpus: float
    gpus: float
    free_cpus: float
    nodes: list[dict[str, float]]
    cuda: bool = False

    @classmethod
    def now(cls) -> Capacity:
        import torch  # loaded by every command that gets here; not by --help or bad input

        total, free = ray.cluster_resources(), ray.available_resources()
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"] and n["Resources"]]
        return cls(total.get("CPU", 0), total.get("GPU", 0), free.get("CPU", 0), nodes, torch.cuda.is_available())

    def flower_pool(self, client_cpus: float) -> int:
        """Flower's actor pool: the sum over nodes of floor(node CPUs / client CPUs)."""
        return sum(int(n.get("CPU", 0) / client_cpus) for n in self.nodes)

    def gpu_slots(self, gpus: float) -> int:
        """How many actors of ``gpus`` GPUs each fit: a fraction must fit on one GPU (4 of 0.25 share one), whole
        ones on one node."""
        if gpus < 1:
            return sum(int(n.get("GPU", 0)) * int(1 / gpus + 1e-9) for n in self.nodes)
        return sum(int(n.get("GPU", 0) / gpus + 1e-9) for n in self.nodes)

    def largest(self, resource: str) -> float:
        """The most of ``resource`` ("CPU", "GPU") one node has: the most one actor, task or bundle can get."""
        return max((n.get(resource, 0) for n in self.nodes), default=0)

    def describe(self) -> str:
        per_node = f", at most {self.largest('CPU'):g} CPUs on one node" if len(self.nodes) > 1 else ""
        return f"the Ray cluster has {self.cpus:g} CPUs and {self.gpus:g} GPUs{per_node}"


def _refuse(field: str, asked: str, has: str, allowed: str) -> None:
    raise ConfigError(f"{field}: {asked} but {has}; allowed: {allowed}")


def check_sweep(cfg: ExperimentConfig, cells: list[Cell], cap: Capacity) -> None:
    """What every cell of the sweep asks must fit (axes may change the peers a DML trial needs): trials, node
    pre-training tasks, the teacher server, Ray Train worker groups, DML peer actors, GPUs, and the follow-up
    simulations' Flower pool; with simulation trials, each cell's Flower pool beside the waiting trial. The rules
    that need no cluster (``raykd.config.rules``) ran before."""
    if cfg.tune.trial == "simulation":  # a trial waits on its simulation, whose Flower pool takes the free CPUs
        for cell in cells:
            check_flower_pool(cell.config, cap, beside=WAITER_CPUS + simulation_teacher_cpus(cell.config))
        return
    check_gpus(sweep_gpus(cfg), cap)
    _check_trials(cfg, cap)
    for cell in cells:
        _check_peers(cell.config, cap)
        if cfg.federated.after_sweep:  # runs once the sweep has released its CPUs
            check_flower_pool(cell.config, replace(cap, free_cpus=cap.cpus))


def sweep_gpus(cfg: ExperimentConfig) -> dict[str, float]:
    """The GPUs a sweep asks for one trial, one teacher server replica and one learner worker, by knob."""
    server = cfg.teacher.mode == "server"
    return {
        "tune.gpus_per_trial": cfg.tune.gpus_per_trial,
        "teacher.num_gpus": cfg.teacher.num_gpus if server else 0.0,
        "learners.use_gpu": 1.0 if cfg.learners.use_gpu else 0.0,
    }


def check_gpus(asks: dict[str, float], cap: Capacity) -> None:
    """Every GPU request (knob: GPUs for one actor or task) must fit Ray's GPUs on one node, and on a one-node
    cluster (this machine) torch must be able to use CUDA, or the run would fail on CUDA after it started."""
    has, one_node = cap.describe(), cap.largest("GPU")
    for field, gpus in asks.items():
        if gpus > one_node:
            _refuse(field, f"{gpus:g} GPUs for one {_WHO[field]}", has, f"up to {one_node:g} (0: run on the CPU)")
        if gpus > 0 and not cap.cuda and len(cap.nodes) == 1:
            raise ConfigError(
                f"{field}: asks for GPUs but torch here cannot use CUDA (torch.cuda.is_available() is False), "
                "though Ray lists GPUs; allowed: 0, or install a CUDA build of torch"
            )


#: Who one GPU request is for, by knob.
_WHO = {
    "tune.gpus_per_trial": "trial",
    "teacher.num_gpus": "teacher server",
    "learners.use_gpu": "learner worker",
    "federated.client_gpus": "Flower client",
}


def check_server(cfg: ExperimentConfig, cap: Capacity) -> None:
    """The sweep's teacher server, each replica an actor on one node, beside one trial: every replica's CPUs and
    GPUs count (one replica that cannot fit names ``teacher.num_cpus``; too many of them, ``teacher.replicas``)."""
    teacher, trial = cfg.teacher, cfg.tune.cpus_per_trial
    if teacher.mode != "server":
        return
    has, node, n = cap.describe(), cap.largest("CPU"), teacher.replicas
    if teacher.num_cpus > node:
        _refuse("teacher.num_cpus", f"{teacher.num_cpus:g} CPUs for the server", has, f"up to {node:g}")
    if teacher.num_cpus + trial > cap.cpus:
        asked = f"the server's {teacher.num_cpus:g} CPUs plus one trial's {trial:g}"
        _refuse("teacher.num_cpus", asked, has, f"up to {cap.cpus - trial:g}")
    if server_cpus(cfg) + trial > cap.cpus + 1e-9:
        asked = f"{n} server replicas x {teacher.num_cpus:g} CPUs plus one trial's {trial:g}"
        _refuse("teacher.replicas", asked, has, f"up to {int((cap.cpus - trial) / teacher.num_cpus + 1e-9)}")
    check_server_gpus(cfg, cap)


def check_server_gpus(cfg: ExperimentConfig, cap: Capacity) -> None:
    """All the replicas' ``teacher.num_gpus`` fit the cluster's GPUs together (a sweep's server, a simulation's served
    teacher); that one replica's fits is ``check_gpus``'s, run before."""
    teacher = cfg.teacher
    if teacher.num_gpus > 0 and teacher.replicas > cap.gpu_slots(teacher.num_gpus):
        asked = f"{teacher.replicas} server replicas x {teacher.num_gpus:g} GPUs"
        _refuse("teacher.replicas", asked, cap.describe(), f"up to {cap.gpu_slots(teacher.num_gpus)}")


def _check_trials(cfg: ExperimentConfig, cap: Capacity) -> None:
    """One trial (or one learner group), beside the teacher server, must fit; each bundle on one node."""
    t, learners = cfg.tune, cfg.learners
    has, node = cap.describe(), cap.largest("CPU")
    if t.cpus_per_trial > node:
        _refuse("tune.cpus_per_trial", f"{t.cpus_per_trial:g} CPUs per trial", has, f"up to {node:g}")
    if node < 1:
        _refuse("ray", "node models train as 1-CPU tasks", has, "a node with at least 1 CPU")
    check_server(cfg, cap)
    free = cpus_beside_server(cfg, cap.cpus)
    group = learners.num_workers * learners.cpus_per_worker
    if learners.num_workers and learners.cpus_per_worker > node:
        _refuse("learners.cpus_per_worker", f"{learners.cpus_per_worker:g} CPUs per worker", has, f"up to {node:g}")
    if learners.num_workers and group > free:
        asked = f"{learners.num_workers} workers x {learners.cpus_per_worker:g} CPUs"
        allowed = f"up to {int(free // learners.cpus_per_worker)}"
        _refuse("learners.num_workers", asked, f"{free:g} CPUs are free beside the server", allowed)
    if learners.use_gpu and learners.num_workers > cap.gpus:
        asked = f"{learners.num_workers} workers need {learners.num_workers} GPUs"
        _refuse("learners.use_gpu", asked, has, f"up to {int(cap.gpus)} workers")


def simulation_teacher_cpus(cfg: ExperimentConfig) -> float:
    """CPUs a simulation's own TeacherServer holds beside Flower's clients (kd from a served ``federated.teacher``;
    0 without one)."""
    f = cfg.federated
    served = "kd" in f.strategies and f.teacher is not None and cfg.teacher.mode == "server"
    return server_cpus(cfg) if served else 0.0


def server_cpus(cfg: ExperimentConfig) -> float:
    """CPUs a teacher server holds once started: every replica's ``teacher.num_cpus``."""
    return cfg.teacher.replicas * cfg.teacher.num_cpus


def cpus_beside_server(cfg: ExperimentConfig, cpus: float) -> float:
    """The CPUs of ``cpus`` left to trials, learners and peers once the sweep's teacher server holds its own."""
    return cpus - (server_cpus(cfg) if cfg.teacher.mode == "server" else 0)


def _check_peers(cfg: ExperimentConfig, cap: Capacity) -> None:
    """DML with peer actors: a trial's placement group holds one bundle per peer (and a sliver for the trial)."""
    learners, peers = cfg.learners, len(cfg.node_ids())
    if not (learners.peer_actors and any(m.name == "dml" for m in cfg.methods)):
        return
    free = cpus_beside_server(cfg, cap.cpus)
    if peers * learners.cpus_per_worker + WAITER_CPUS > free or learners.cpus_per_worker > cap.largest("CPU"):
        fits = min((free - WAITER_CPUS) / peers, cap.largest("CPU"))
        _refuse(
            "learners.peer_actors",
            f"DML with {peers} peer actors x {learners.cpus_per_worker:g} CPUs",
            f"{free:g} CPUs are free",
            f"learners.cpus_per_worker up to {fits:.2f}",
        )


def check_flower_pool(cfg: ExperimentConfig, cap: Capacity, beside: float = 0.0) -> None:
    """Flower sizes its actor pool from the whole cluster and waits for every actor: it must fit in what is free.

    ``beside`` is CPU held by the caller while the simulation runs (a Tune trial waiting on it).
    """
    f = cfg.federated
    largest = cap.largest("CPU")
    served = bool(simulation_teacher_cpus(cfg))  # its served teacher's replicas start before the clients
    check_gpus({"federated.client_gpus": f.client_gpus, "teacher.num_gpus": cfg.teacher.num_gpus * served}, cap)
    if served:
        check_server_gpus(cfg, cap)
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


def given_device() -> torch.device:
    """The ``torch.device`` of what Ray gave this task or actor: CUDA when its reservation holds a GPU, else the CPU.
    A shell passes it to the core, which never reads a reservation itself."""
    from raykd.engine import pick_device  # torch loads with the work, not with the command line

    return pick_device(len(ray.get_gpu_ids()))


def on_this_node(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` and, under ``NODE_ID``, the Ray node this process runs on: which machine ran a trial."""
    return {**metrics, NODE_ID: ray.get_runtime_context().get_node_id()}


def job_actors(class_name: str) -> list[dict[str, Any]]:
    """This job's actors of ``class_name``, alive or dead, from the GCS actor table (the public state API
    needs the dashboard, which raykd's local Ray does not start)."""
    job = ray.get_runtime_context().get_job_id()
    return [a for a in gcs_actor_table() if a.get("ActorClassName") == class_name and a.get("JobID") == job]


def actor_restarts(class_name: str) -> int:
    """How often Ray restarted this job's actors of ``class_name`` after they died."""
    return sum(int(a.get("NumRestarts", 0)) for a in job_actors(class_name))


def actor_nodes(class_name: str) -> dict[str, int]:
    """How many of this job's actors of ``class_name`` each Ray node held, by node id (a restarted actor counts
    where it last ran)."""
    return dict(Counter(a["Address"]["NodeID"] for a in job_actors(class_name)))
