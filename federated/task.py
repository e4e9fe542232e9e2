"""What clients and server compute, in raykd's terms: configs, models as Flower arrays, local updates.

Flower only carries arrays between these functions; every local round is ``raykd.transfer.transfer`` with
a raykd method, every partition is raykd's, and every model comes from raykd's model registry.
"""

from __future__ import annotations

import copy
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from federated.exchange import ConsensusTeacher, predictions, public_rows
from raykd.config import SERVER_TEMPERATURE, ExperimentConfig, load_config
from raykd.data import build_augment
from raykd.engine import CPU, TransferBatches, accuracy, method_context, seed_everything, token_scores
from raykd.experiment import lm_info
from raykd.files import file_digest
from raykd.methods.base import Context, Method
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.nodes import ConfigKey, Setup, load_node, load_teacher, new_model, prepare, teacher_path
from raykd.students import save_student
from raykd.teacher.inline import InlineTeacher
from raykd.teacher.protocol import TeacherLogits
from raykd.transfer import TransferPlan, silent, transfer

#: Folder of ``output_dir`` where FML clients leave their private models until the run's records take them.
PRIVATE_FOLDER = ".fml-private"
#: How a failure reason starts when a loss or model went non-finite (a client's update, or the server's step).
DIVERGED = "diverged:"
#: The Ray namespace of the federated kd teacher's TeacherServer actor (teacher.mode server), where clients find it.
TEACHER_NAMESPACE = "raykd"
#: The Flower app's folder (this repository, or the unpacked FAB under ``flwr run``): relative paths start here.
APP_DIR = Path(__file__).resolve().parents[1]


def settings(run_config: Mapping[str, Any], cfg: ExperimentConfig | None) -> ExperimentConfig:
    """The experiment: ``cfg`` when the simulate CLI built the apps, else pyproject's run config (``flwr run``).

    The run config names a YAML (``config``) and ``;``-separated ``--set`` overrides (``set``), read once.
    """
    return cfg if cfg is not None else _run_config(str(run_config["config"]), str(run_config.get("set", "")))


def for_strategy(cfg: ExperimentConfig, strategy: str) -> ExperimentConfig:
    """``cfg`` as one of the strategies it compares runs it (``federated.compare``)."""
    if strategy == cfg.federated.strategy:
        return cfg
    return cfg.model_copy(update={"federated": cfg.federated.model_copy(update={"strategy": strategy})})


@cache
def _run_config(config: str, sets: str) -> ExperimentConfig:
    return load_config(APP_DIR / config, [s.strip() for s in sets.split(";") if s.strip()])


def setup_of(cfg: ExperimentConfig) -> Setup:
    """The first seed's data and partition, built once per process (clients are called every round)."""
    return _setup(ConfigKey(cfg, cfg.model_dump_json(include={"data", "partition", "nodes", "seeds"})))


@lru_cache(maxsize=4)
def _setup(key: ConfigKey) -> Setup:
    """A pure memo: a config's data, partition, nodes and seeds (the key) fix its splits and shares, so every
    simulation in the process with those may share them; the four newest are kept (a Flower client process
    serves one simulation at a time)."""
    return prepare(key.cfg, key.cfg.seeds[0])


def global_model(cfg: ExperimentConfig, setup: Setup) -> nn.Module:
    """The architecture every client shares (and FML's meme): ``nodes.model``."""
    data = setup.dataset
    return build_model(cfg.nodes.model, data.input_shape, data.num_classes, tokens=data.tokens, pixels=data.pixels)


def to_arrays(model: nn.Module) -> ArrayRecord:
    return ArrayRecord({name: value.cpu() for name, value in model.state_dict().items()})


def from_arrays(model: nn.Module, arrays: ArrayRecord) -> nn.Module:
    model.load_state_dict(arrays.to_torch_state_dict())
    return model


def payload_bytes(arrays: ArrayRecord) -> int:
    """Bytes of the tensors in ``arrays`` (what a round moves; serialisation headers not counted)."""
    return sum(array.numpy().nbytes for array in arrays.values())


def average(models: list[nn.Module], weights: list[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of same-architecture state dicts (FedAvg's aggregate)."""
    total = sum(weights)
    states = [m.state_dict() for m in models]
    return {k: sum(w / total * s[k].float() for w, s in zip(weights, states, strict=True)) for k in states[0]}


def scores(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy, and for a language model (per token) also perplexity: what every federated metric reports."""
    if y.ndim == 1:
        return {"acc": accuracy(model, x, y)}
    acc, nll = token_scores(model, x, y)
    return {"acc": acc, "ppl": math.exp(nll)}


def _local_batches(cfg: ExperimentConfig, setup: Setup, node: int, seed: int) -> TransferBatches:
    data, budget = setup.dataset, cfg.federated.local
    augment = build_augment(cfg.data.augment, seed)
    return TransferBatches(
        data.train_x, data.train_y, setup.nodes[node].train, None, budget.batch_size, True, seed=seed, augment=augment
    )


def client_method(cfg: ExperimentConfig) -> Method:
    """The clients' loss for strategies kd and fml: the first method row at its first grid point.

    One home for every knob: kd accepts any method that distils from frozen teachers (the global model)
    or from none; fml needs a ``federated.fml:FederatedMutualLearning`` row (its alpha, beta, temperature).
    """
    row = cfg.methods[0]
    return row.build(row.first())


def server_temperature(cfg: ExperimentConfig) -> float:
    """The pool KD temperature (feddf, consolidation): the first method row with a ``temperature`` knob (at its
    first grid point), else ``SERVER_TEMPERATURE``."""
    return next((row.first()["temperature"] for row in cfg.methods if "temperature" in row.knobs()), SERVER_TEMPERATURE)


def client_update(
    cfg: ExperimentConfig,
    node: int,
    server_round: int,
    received: ArrayRecord,
    private: ArrayRecord | None,
    served: str | None = None,
    device: torch.device = CPU,
) -> tuple[ArrayRecord, ArrayRecord | None, dict[str, float]]:
    """One client's round: (arrays to send, private model to keep, metrics); ``served``: the name of the
    simulation's TeacherServer actor, if it has one; ``device``: where the client app says its models train.

    fedavg / feddf / consolidation: cross-entropy on the local partition. kd: a frozen teacher distils into the local
    student started from the round's global model: ``federated.teacher`` (served by the TeacherServer, or loaded here)
    or else the global model itself, the only teacher that has seen every client's classes at no extra communication
    (a peer's pre-trained node model has not, and on non-IID local data gave no gain in the measurements of
    ../shared/RESEARCH.md). fml: private and meme models learn mutually. logit-exchange: the private model distils
    the received consensus on the public rows and sends its own predictions there. kd, fml and logit-exchange train
    with the first method row (``client_method``).
    """
    setup, f = setup_of(cfg), cfg.federated
    seed = cfg.seeds[0] * 100_003 + server_round * 101 + node  # distinct per (seed, round, client)
    seed_everything(seed)
    local = _local_round(cfg, setup, node, seed, received, private, served, device)
    losses: dict[str, float] = {}
    transfer(local.plan, lambda costs: lambda epoch, terms: losses.update(terms))  # keeps the last epoch's loss
    kept = local.kept
    if kept is not None and server_round == f.rounds:  # a private model is the product: saved in its last round
        _save_client_model(cfg, setup, node, kept)
    if f.strategy == "logit-exchange":
        sent = predictions(local.model, setup.dataset.train_x[public_rows(cfg, setup)], f.exchange.top_k)
    else:
        sent = to_arrays(local.model)
    metrics = {
        "train_loss": losses["loss"],
        "num-examples": float(len(setup.nodes[node].train)),
        "teacher_bytes": float(getattr(local.plan.teacher, "received_bytes", 0)),  # what a TeacherServer sent
    }
    return sent, (to_arrays(kept) if kept is not None else None), metrics


@dataclass
class LocalRound:
    """What a client trains in one round: the model it sends from, the private one it keeps, and how it trains (the
    round's RNG stream goes on: its plan does not re-seed)."""

    model: nn.Module
    kept: nn.Module | None
    plan: TransferPlan


def _local_round(
    cfg: ExperimentConfig,
    setup: Setup,
    node: int,
    seed: int,
    received: ArrayRecord,
    private: ArrayRecord | None,
    served: str | None,
    device: torch.device,
) -> LocalRound:
    """The strategy's local training: its models, loss, teacher and batches (see ``client_update``)."""
    f = cfg.federated
    budget, batches = f.local, _local_batches(cfg, setup, node, seed)
    own = new_model(cfg, setup, node) if private is None else from_arrays(new_model(cfg, setup, node), private)
    if f.strategy == "logit-exchange":
        own = own.to(device)
        if not len(received):  # round 1: no consensus yet
            return LocalRound(own, own, TransferPlan([own], CrossEntropy(), batches, budget))
        data, public = setup.dataset, public_rows(cfg, setup)
        with_public = TransferBatches(
            data.train_x, data.train_y, batches.labelled.numpy(), public, batches.batch_size, False, seed=seed
        )
        seq_len = data.train_y.shape[1] if data.tokens else 1
        consensus_of = ConsensusTeacher(received, public, seq_len, data.num_classes)
        return LocalRound(own, own, TransferPlan([own], client_method(cfg), with_public, budget, consensus_of))
    model = from_arrays(global_model(cfg, setup), received).to(device)
    if f.strategy == "fml":
        return LocalRound(model, own, TransferPlan([own, model], client_method(cfg), batches, budget))
    if f.strategy == "kd":
        method = client_method(cfg)
        teacher, context = kd_teacher(cfg, setup, model, method, batches, seed, served, device)
        return LocalRound(model, None, TransferPlan([model], method, batches, budget, teacher, context))
    return LocalRound(model, None, TransferPlan([model], CrossEntropy(), batches, budget))


def kd_teacher(
    cfg: ExperimentConfig,
    setup: Setup,
    model: nn.Module,
    method: Method,
    batches: TransferBatches,
    seed: int,
    served: str | None,
    device: torch.device,
) -> tuple[TeacherLogits, Context]:
    """kd's teacher for one client round, and what ``method.prepare`` sees of it: ``federated.teacher`` from the
    simulation's TeacherServer named ``served`` (top-k as ``teacher.top_k`` says) or else loaded in this process;
    without one, the round's global model (frozen)."""
    if cfg.federated.teacher is None:
        teacher = copy.deepcopy(model)
        source: TeacherLogits = InlineTeacher([teacher], teacher if method.uses_initial_student else None)
        teachers: Callable[[], list[nn.Module]] = lambda: [teacher]  # noqa: E731
    else:
        teachers = lambda: [federated_teacher(cfg).to(device)]  # noqa: E731
        source = served_teacher(cfg, setup, served) if served else InlineTeacher(teachers())
    data = setup.dataset
    return source, method_context(batches, teachers, data.num_classes, seed, view=data.model_view)


def serve_teacher(cfg: ExperimentConfig) -> tuple[str, Any] | None:
    """kd with ``federated.teacher``: the teacher made ready in the driver (trained once on the public pool when it has
    no weights of its own, cached) and, with ``teacher.mode: server``, served by ``teacher.replicas`` TeacherServer
    actors that every client asks: (the server's name, unique to this simulation, and its ``ServerPool``); None when
    no client asks a served teacher.
    The simulation's driver starts it before Flower's client actors take the cluster's CPUs; it ends with the driver."""
    f = cfg.federated
    if "kd" not in f.strategies or f.teacher is None:
        return None
    from raykd.cluster import simulation_teacher_cpus
    from raykd.nodes import read_node
    from raykd.teacher.server import served_model, start_server

    setup, seed = setup_of(cfg), cfg.seeds[0]
    path, data = teacher_path(cfg, seed), setup.dataset
    if not path.is_file():
        print(f"federated.teacher: training {f.teacher.name} on the public pool ({len(setup.splits.pool)} rows)")
    load_teacher(cfg, setup, seed)  # trains and caches it when missing
    meta = read_node(path)["meta"]  # type: ignore[index]
    score = f"test ppl {meta['test_ppl']:.1f}" if "test_ppl" in meta else f"test acc {100 * meta['test_acc']:.1f}%"
    print(f"federated.teacher: {f.teacher.name} ready, {score} ({meta['weights_from']})", flush=True)
    if not simulation_teacher_cpus(cfg):
        return None
    model = served_model(
        file_digest(path), path, f.teacher, data.input_shape, data.num_classes, data.tokens, data.pixels
    )
    name = f"raykd-federated-teacher-{uuid.uuid4().hex[:12]}"
    return name, start_server([model], cfg.teacher, name, TEACHER_NAMESPACE)


def served_teacher(cfg: ExperimentConfig, setup: Setup, actor: str) -> TeacherLogits:
    """The federated teacher's logits from the simulation's TeacherServer actor named ``actor`` (and its replicas)."""
    from raykd.teacher.replicas import ServerPool
    from raykd.teacher.server import ServedTeacher

    key = file_digest(teacher_path(cfg, cfg.seeds[0]))
    server = ServerPool.named(actor, TEACHER_NAMESPACE)
    return ServedTeacher(server, [key], None, cfg.teacher.prefetch, setup.dataset.num_classes)


def federated_teacher(cfg: ExperimentConfig) -> nn.Module:
    """``federated.teacher``, loaded once per process (a client actor serves many rounds)."""
    return _teacher(ConfigKey(cfg, str(teacher_path(cfg, cfg.seeds[0]))))


@lru_cache(maxsize=4)
def _teacher(key: ConfigKey) -> nn.Module:
    """A pure memo: the key is the teacher's cache file, whose name carries a digest of everything that trained it,
    so one path is one frozen model (never trained here) that every simulation in the process may share."""
    return load_teacher(key.cfg, setup_of(key.cfg), key.cfg.seeds[0])


def _save_client_model(cfg: ExperimentConfig, setup: Setup, node: int, model: nn.Module) -> None:
    info = {"client": node, "strategy": cfg.federated.strategy, "seed": cfg.seeds[0], **lm_info(setup.dataset)}
    save_student(private_model_path(cfg, node), model, cfg.nodes.model_of(node), setup.dataset, **info)


def private_model_path(cfg: ExperimentConfig, node: int) -> Path:
    """Where an FML or logit-exchange client leaves its private model (in a folder per strategy when strategies are
    compared); the server's records move them into the run's folder."""
    return private_folder(cfg) / (cfg.federated.strategy if cfg.federated.compare else "") / f"client{node}.pt"


def private_folder(cfg: ExperimentConfig) -> Path:
    """The folder of one simulation's private models, until its records take them."""
    return Path(cfg.output_dir) / PRIVATE_FOLDER / f"{cfg.name}-seed{cfg.seeds[0]}"


def client_scores(
    cfg: ExperimentConfig, node: int, received: ArrayRecord, private: ArrayRecord | None
) -> dict[str, float]:
    """``scores`` on the client's own validation split of the model it would use: its private one (fml,
    logit-exchange), else the global one; logit-exchange, which has no global model, adds its test scores."""
    setup = setup_of(cfg)
    if private is not None:
        model = from_arrays(new_model(cfg, setup, node), private)
    else:
        model = from_arrays(global_model(cfg, setup), received)
    data, local = setup.dataset, setup.nodes[node]
    out = scores(model, data.train_x[local.val], data.train_y[local.val])
    if cfg.federated.strategy == "logit-exchange":
        out |= {f"test_{name}": value for name, value in scores(model, data.test_x, data.test_y).items()}
    return out


def global_scores(cfg: ExperimentConfig, arrays: ArrayRecord) -> dict[str, float]:
    """The global model's ``scores`` on the global test set (the server's metric every round) and, prefixed
    ``val_``, on the global validation split: what a sweep over simulations chooses on, never the test set."""
    setup = setup_of(cfg)
    data, val = setup.dataset, setup.splits.val
    model = from_arrays(global_model(cfg, setup), arrays)
    validation = scores(model, data.train_x[val], data.train_y[val])
    return scores(model, data.test_x, data.test_y) | {f"val_{name}": value for name, value in validation.items()}


def distil_on_pool(cfg: ExperimentConfig, student: nn.Module, teachers: list[nn.Module]) -> nn.Module:
    """Server-side KD of the teachers' ensemble into ``student`` on the unlabelled pool (FedDF, consolidation).

    The pool has no labels, so the loss is the KD term alone (alpha = 1) on the teachers' mean softened
    probabilities.
    """
    setup, budget = setup_of(cfg), cfg.federated.server
    data = setup.dataset
    no_labelled = np.array([], dtype=np.int64)
    batches = TransferBatches(
        data.train_x, data.train_y, no_labelled, setup.splits.pool, budget.batch_size, False, seed=cfg.seeds[0]
    )
    method = KnowledgeDistillation(server_temperature(cfg), alpha=1.0)
    transfer(TransferPlan([student], method, batches, budget, InlineTeacher(teachers)), silent)
    return student


def starting_points(cfg: ExperimentConfig) -> dict[str, ArrayRecord]:
    """Initial global models, by name: one random start, or consolidation's three starts to compare.

    Consolidation loads raykd's pre-trained node models (trained on their partitions, cached) and
    offers: ``random`` (a fresh model), ``average`` (their plain weighted parameter mean) and
    ``distilled`` (their ensemble distilled on the shared pool into that average, as FedDF does; a
    fresh student started lower, 38% against 50% on federated_consolidation.yaml, and needed as many
    rounds as a random start).
    """
    setup, seed = setup_of(cfg), cfg.seeds[0]
    seed_everything(seed)
    random_start = global_model(cfg, setup)
    if cfg.federated.strategy == "logit-exchange":  # no global model: round 1 sends no consensus
        return {"": ArrayRecord()}
    if cfg.federated.strategy != "consolidation":
        return {"": to_arrays(random_start)}
    nodes = [load_node(cfg, setup, node, seed) for node in range(cfg.partition.num_nodes)]
    sizes = [float(len(n.train)) for n in setup.nodes]
    averaged = global_model(cfg, setup)
    averaged.load_state_dict(average(nodes, sizes))
    seed_everything(seed)
    distilled = distil_on_pool(cfg, copy.deepcopy(averaged), nodes)
    return {"random": to_arrays(random_start), "average": to_arrays(averaged), "distilled": to_arrays(distilled)}
