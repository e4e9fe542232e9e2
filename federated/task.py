"""What clients and server compute, in raykd's terms: configs, models as Flower arrays, local updates.

Flower only carries arrays between these functions; every training step is ``raykd.engine.fit`` with
a raykd method, every partition is raykd's, and every model comes from raykd's model registry.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord
from torch import nn

from raykd.config import SERVER_TEMPERATURE, ExperimentConfig, load_config
from raykd.data import build_augment
from raykd.engine import (
    InlineReferences,
    TransferBatches,
    accuracy,
    fit,
    method_context,
    pick_device,
    seed_everything,
)
from raykd.methods.base import Method
from raykd.methods.ce import CrossEntropy
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.nodes import Setup, load_node, new_model, prepare
from raykd.students import save_student

#: Folder of ``output_dir`` where FML clients leave their private models until the run's records take them.
PRIVATE_FOLDER = ".fml-private"
#: How a failure reason starts when a loss or model went non-finite (a client's update, or the server's step).
DIVERGED = "diverged:"
#: The Flower app's folder (this repository, or the unpacked FAB under ``flwr run``): relative paths start here.
APP_DIR = Path(__file__).resolve().parents[1]


def settings(run_config: Mapping[str, Any], cfg: ExperimentConfig | None) -> ExperimentConfig:
    """The experiment: ``cfg`` when the simulate CLI built the apps, else pyproject's run config (``flwr run``).

    The run config names a YAML (``config``) and ``;``-separated ``--set`` overrides (``set``), read once.
    """
    return cfg if cfg is not None else _run_config(str(run_config["config"]), str(run_config.get("set", "")))


@cache
def _run_config(config: str, sets: str) -> ExperimentConfig:
    return load_config(APP_DIR / config, [s.strip() for s in sets.split(";") if s.strip()])


_SETUPS: dict[str, Setup] = {}


def setup_of(cfg: ExperimentConfig) -> Setup:
    """The first seed's data and partition, built once per process (clients are called every round)."""
    key = cfg.model_dump_json(include={"data", "partition", "nodes", "seeds"})
    if key not in _SETUPS:
        _SETUPS[key] = prepare(cfg, cfg.seeds[0])
    return _SETUPS[key]


def global_model(cfg: ExperimentConfig, setup: Setup) -> nn.Module:
    """The architecture every client shares (and FML's meme): ``nodes.model``."""
    return build_model(cfg.nodes.model, setup.dataset.input_shape, setup.dataset.num_classes)


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
    return row.build(row.grid()[0])


def server_temperature(cfg: ExperimentConfig) -> float:
    """The pool KD temperature (feddf, consolidation): the first method row with a ``temperature`` knob (at its
    first grid point), else ``SERVER_TEMPERATURE``."""
    return next(
        (row.grid()[0]["temperature"] for row in cfg.methods if "temperature" in row.knobs()), SERVER_TEMPERATURE
    )


def client_update(
    cfg: ExperimentConfig, node: int, server_round: int, received: ArrayRecord, private: ArrayRecord | None
) -> tuple[ArrayRecord, ArrayRecord | None, dict[str, float]]:
    """One client's round: (arrays to send, FML private model to keep, metrics).

    fedavg / feddf / consolidation: cross-entropy on the local partition. kd: the round's global model,
    frozen, teaches the local student started from it: the only teacher that has seen every client's
    classes (a peer's pre-trained node model has not, and on non-IID local data gave no gain in the
    measurements of ../shared/RESEARCH.md), and it costs no extra communication. fml: private and meme
    models learn mutually. kd and fml train with the first method row (``client_method``); its ``prepare``
    sees the client's local data and, for kd, the global model as the teacher.
    """
    setup, f = setup_of(cfg), cfg.federated
    device = pick_device(f.client_gpus)  # CUDA when the client reserved GPUs
    seed = cfg.seeds[0] * 100_003 + server_round * 101 + node  # distinct per (seed, round, client)
    seed_everything(seed)
    batches = _local_batches(cfg, setup, node, seed)
    losses: dict[str, float] = {}
    model = from_arrays(global_model(cfg, setup), received).to(device)
    kept: nn.Module | None = None
    if f.strategy == "fml":
        kept = new_model(cfg, setup, node)
        if private is not None:
            from_arrays(kept, private)
        kept = kept.to(device)
        trainable, method, references = [kept, model], client_method(cfg), None
    elif f.strategy == "kd":
        teacher = copy.deepcopy(model)
        trainable, method = [model], client_method(cfg)
        references = InlineReferences([teacher], teacher if method.uses_initial_student else None)
        method.prepare(method_context(batches, lambda: [teacher], setup.dataset.num_classes, seed))
    else:
        trainable, method, references = [model], CrossEntropy(), None
    fit(
        trainable,
        method,
        batches,
        f.local.epochs,
        f.local.lr,
        f.local.weight_decay,
        references,
        on_epoch=lambda epoch, terms: losses.update(terms),
    )
    if kept is not None and server_round == f.rounds:  # FML's product: the private model, saved in its last round
        save_student(
            private_model_path(cfg, node),
            kept,
            cfg.nodes.model_of(node),
            setup.dataset.input_shape,
            setup.dataset.num_classes,
            client=node,
            strategy="fml",
            seed=cfg.seeds[0],
        )
    metrics = {"train_loss": losses["loss"], "num-examples": float(len(setup.nodes[node].train))}
    return to_arrays(model), (to_arrays(kept) if kept is not None else None), metrics


def private_model_path(cfg: ExperimentConfig, node: int) -> Path:
    """Where an FML client leaves its private model; the server's records move it into the run's folder."""
    return Path(cfg.output_dir) / PRIVATE_FOLDER / f"{cfg.name}-seed{cfg.seeds[0]}" / f"client{node}.pt"


def client_accuracy(cfg: ExperimentConfig, node: int, received: ArrayRecord, private: ArrayRecord | None) -> float:
    """Accuracy on the client's own validation split of the model it would use: FML's private one, else global."""
    setup = setup_of(cfg)
    if private is not None:
        model = from_arrays(new_model(cfg, setup, node), private)
    else:
        model = from_arrays(global_model(cfg, setup), received)
    data, local = setup.dataset, setup.nodes[node]
    return accuracy(model, data.train_x[local.val], data.train_y[local.val])


def global_test_accuracy(cfg: ExperimentConfig, arrays: ArrayRecord) -> float:
    """The global model's accuracy on the global test set (the server's metric every round)."""
    data = setup_of(cfg).dataset
    return accuracy(from_arrays(global_model(cfg, setup_of(cfg)), arrays), data.test_x, data.test_y)


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
    fit([student], method, batches, budget.epochs, budget.lr, budget.weight_decay, InlineReferences(teachers))
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
    if cfg.federated.strategy != "consolidation":
        return {"": to_arrays(random_start)}
    nodes = [load_node(cfg, setup, node, seed) for node in range(cfg.partition.num_nodes)]
    sizes = [float(len(n.train)) for n in setup.nodes]
    averaged = global_model(cfg, setup)
    averaged.load_state_dict(average(nodes, sizes))
    seed_everything(seed)
    distilled = distil_on_pool(cfg, copy.deepcopy(averaged), nodes)
    return {"random": to_arrays(random_start), "average": to_arrays(averaged), "distilled": to_arrays(distilled)}
