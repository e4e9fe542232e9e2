"""Before the trials: the node models the cache lacks, the teacher-logit cache, and the teacher server.

Node models train as parallel Ray tasks (one per model file, shared by every cell and trial that reads
it); in ``cache`` mode each task also fills that node's logit cache entry, so trials only read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import ray
import torch
from tqdm import tqdm

from raykd.cluster import given_device
from raykd.config import Cell, ExperimentConfig
from raykd.files import file_digest
from raykd.nodes import dataset_of, load_node, node_path, prepare, read_node
from raykd.teacher.cache import node_logits
from raykd.teacher.server import served_model, start_server

Job = tuple[ExperimentConfig, int, int]


def logit_nodes(cfg: ExperimentConfig) -> list[int]:
    """Nodes whose frozen logits some method row reads from the cache: teachers, and the initial student."""
    if cfg.teacher.mode != "cache":
        return []
    methods = [m.build(m.first()) for m in cfg.methods]
    frozen = cfg.transfer.teachers if any(m.teachers == "frozen" for m in methods) else []
    initial = [cfg.transfer.student] if any(m.uses_initial_student for m in methods) else []
    return initial + frozen


def prepare_node(cfg: ExperimentConfig, node: int, seed: int, logits: bool) -> dict[str, Any]:
    """Ray task: make sure a node's model (and, with ``logits``, its cached logits) exists, built on the device the
    task was given; say what it built."""
    torch.set_num_threads(1)
    setup, device = prepare(cfg, seed), given_device()
    load_node(cfg, setup, node, seed, device)
    built = node_logits(cfg, setup, node, seed, device)[1] if logits else False
    meta = read_node(node_path(cfg, node, seed))["meta"]  # type: ignore[index]
    return {"logits_built": built, "test_acc": meta["test_acc"], "test_ppl": meta.get("test_ppl")}


def node_jobs(cells: list[Cell]) -> list[Job]:
    """(cell config, node, seed) for every node model the study reads, once per model file.

    The sweep needs its students and teachers; a KD-consolidation follow-up needs every node of the partition.
    """
    jobs: dict[Path, Job] = {}
    for cell in cells:
        cfg = cell.config
        consolidates = cfg.federated.after_sweep and cfg.federated.strategy == "consolidation"
        nodes = range(cfg.partition.num_nodes) if consolidates else cfg.node_ids()
        for seed in cfg.seeds:
            for node in nodes:
                jobs.setdefault(node_path(cfg, node, seed), (cfg, node, seed))
    return list(jobs.values())


def prepare_nodes(cells: list[Cell]) -> None:
    """Train the node models the cache lacks (and fill the logit cache in cache mode) as parallel Ray tasks."""
    jobs = node_jobs(cells)
    cached = [read_node(node_path(c, n, s)) is not None for c, n, s in jobs]
    todo = [(c, n, s) for (c, n, s), hit in zip(jobs, cached, strict=True) if not hit or n in logit_nodes(c)]
    print(f"node models: {sum(cached)} of {len(jobs)} cached in {cells[0].config.nodes.cache_dir}")
    if not todo:
        return
    task = ray.remote(num_cpus=1, num_gpus=cells[0].config.tune.gpus_per_trial)(prepare_node)
    pending = {task.remote(c, n, s, n in logit_nodes(c)): (n, s) for c, n, s in todo}
    built = 0
    # a bar on a terminal; redirected to a file, one line per node (a bar's \r frames would pile up there)
    with tqdm(total=len(pending), desc="preparing node models", unit="model", disable=not sys.stderr.isatty()) as bar:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            node, seed = pending.pop(done[0])
            result = ray.get(done[0])
            built += result["logits_built"]
            score = (
                f"test ppl {result['test_ppl']:.2f}"
                if result["test_ppl"]
                else f"test acc {100 * result['test_acc']:.1f}%"
            )
            bar.set_postfix_str(f"node {node} seed {seed}: {score}")
            bar.update()
            if bar.disable:
                print(f"node model {node} seed {seed}: {score}", flush=True)
    logits = sum(n in logit_nodes(c) for c, n, _ in jobs)
    if logits:
        print(f"teacher-logit cache: {built} forward passes over the training split, {logits - built} reused")


def start_teacher_server(cells: list[Cell], name: str) -> Any:
    """One TeacherServer for the sweep, holding every cell's and seed's node models; trials find it by name."""
    models = {}
    for cell in cells:
        cfg, data = cell.config, dataset_of(cell.config)
        for seed in cfg.seeds:
            for node in cfg.node_ids():
                path = node_path(cfg, node, seed)
                spec = cfg.nodes.model_of(node)
                models[path] = served_model(
                    file_digest(path), path, spec, data.input_shape, data.num_classes, data.tokens, data.pixels
                )
    return start_server(list(models.values()), cells[0].config.teacher, name=name)
