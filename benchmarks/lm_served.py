"""One served language-model teacher for several concurrent students, against each student's own inline teacher.

    python benchmarks/lm_served.py [--steps 60] [--repeats 3]

tune_configs/lm_default.yaml's models and data (pydoc corpus, byte tokens, seq_len 64, node 1's 128x2 ``gpt``
teaching node 0's 16x1 ``gpt``, batches of 32 labelled + 32 pool sequences = 4,096 tokens a step), nodes
pre-trained for one epoch only (what is timed is the transfer). S = 1 and 2 student Ray actors (1 torch thread
each) run ``raykd.engine.fit`` with KD (T 2, alpha 0.5) for the same number of steps, started together; the
throughput is the student tokens of all of them over the wall time from the first start to the last finish.

Contenders, alternated in every repeat (the median of the repeats is reported):
- inline: each student runs its own copy of the teacher (``InlineTeacher``);
- server: one ``TeacherServer`` (1 torch thread) answers every student, full float32 logits (``ServedTeacher``
  with prefetch 1: the next batch's request is in flight during the step);
- server-top32-fp16: the same with ``teacher.top_k: 32``, ``top_k_fill: mass``, ``dtype: float16``.

Each server's counters are read before and after every run, so its mean batch (rows, requests merged), compute
time and queueing are per contender. "student waits" is the share of a student's time spent getting the
teacher's logits (inline: running the teacher; served: blocked on the reply, and expanding a top-k reply).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

from raykd.config import ExperimentConfig
from raykd.config.loading import deep_merge, load_raw, validate_config
from raykd.engine import Batch, fit
from raykd.experiment import transfer_batches
from raykd.files import file_digest
from raykd.nodes import load_node, node_path, prepare
from raykd.teacher.protocol import FrozenLogits, TeacherLogits
from raykd.teacher.server import served_model, start_server
from raykd.teacher.source import teacher_logits

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(tempfile.gettempdir()) / "raykd-bench-cache"
KD = {"temperature": 2.0, "alpha": 0.5}
TEACHER, STUDENT = 1, 0
CONTENDERS: dict[str, dict[str, Any]] = {  # teacher section overrides
    "inline": {},
    "server": {"mode": "server"},
    "server-top32-fp16": {"mode": "server", "top_k": 32, "top_k_fill": "mass", "dtype": "float16"},
}
COUNTERS = ("requests", "rows", "batches", "compute_s", "wait_s")


def experiment() -> ExperimentConfig:
    """lm_default with small budgets: one seed, one KD row, nodes pre-trained for one epoch, servers on half a CPU
    each (Ray's accounting: 2 servers + 2 students at 0.5 fit 2 CPUs; every process runs one torch thread)."""
    raw = deep_merge(
        load_raw(ROOT / "tune_configs" / "lm_default.yaml"),
        {
            "name": "bench-lm-served",
            "seeds": [0],
            "nodes": {"cache_dir": str(CACHE), "train": {"epochs": 1}},
            "methods": [{"name": "kd", **KD}],
            "teacher": {"num_cpus": 0.5},
        },
    )
    return validate_config(raw)


class Steps:
    """The first ``steps`` batches of ``batches``, cycling its epochs: every contender trains the same steps."""

    def __init__(self, batches: Any, steps: int) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Any:
        left = self.steps
        while left:
            for batch in self.batches:
                yield batch
                left -= 1
                if not left:
                    return


class Timed(TeacherLogits):
    """A student's teacher logits, timing how long its steps wait for them."""

    def __init__(self, inner: TeacherLogits) -> None:
        self.inner, self.ahead, self.seconds = inner, inner.ahead, 0.0

    def prefetch(self, batch: Batch) -> None:
        self.inner.prefetch(batch)

    def use_device(self, device: torch.device) -> None:
        self.inner.use_device(device)

    def __call__(self, batch: Batch) -> FrozenLogits:
        started = time.perf_counter()
        answer = self.inner(batch)
        self.seconds += time.perf_counter() - started
        return answer


@ray.remote(num_cpus=0.5, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
class Student:
    """One student process: the data, its own shuffle, and (for inline) its own copy of the teacher."""

    def __init__(self, cfg: ExperimentConfig, rank: int) -> None:
        torch.set_num_threads(1)
        self.cfg, self.setup = cfg, prepare(cfg, 0)
        self.teacher = load_node(cfg, self.setup, TEACHER, 0)
        self.batches = transfer_batches(cfg, self.setup, seed=rank)

    def ready(self) -> bool:
        return True

    def run(self, teacher: dict[str, Any], steps: int, server: Any, start_at: float) -> dict[str, float]:
        cfg = self.cfg.model_copy(update={"teacher": self.cfg.teacher.model_copy(update=teacher)})
        student = load_node(cfg, self.setup, STUDENT, 0)  # the same start for every run
        method = cfg.method("kd").build(KD)
        timed = Timed(teacher_logits(cfg, self.setup, 0, [TEACHER], None, lambda node: self.teacher, server))
        batches = Steps(self.batches, steps)
        tokens = steps * next(iter(self.batches)).x.numel()
        time.sleep(max(0.0, start_at - time.time()))  # all students start together
        started = time.time()
        fit([student], method, batches, 1, cfg.transfer.train.lr, teacher=timed)
        return {"start": started, "end": time.time(), "tokens": tokens, "waits": timed.seconds}


def counters(server: Any) -> dict[str, float]:
    stats = server.stats()
    return {k: float(stats[k]) for k in COUNTERS}


def run_once(students: list[Any], teacher: dict[str, Any], steps: int, server: Any) -> dict[str, float]:
    """S students at once; the summed tokens/s over the wall from the first start to the last end, with the
    server's counters over the run."""
    before = counters(server) if server is not None else {}
    start_at = time.time() + 1.0
    runs = ray.get([s.run.remote(teacher, steps, server, start_at) for s in students])
    wall = max(r["end"] for r in runs) - min(r["start"] for r in runs)
    out = {
        "tokens_per_s": sum(r["tokens"] for r in runs) / wall,
        "wall": wall,
        "waits": statistics.mean(r["waits"] / (r["end"] - r["start"]) for r in runs),
    }
    if server is not None:
        after = counters(server)
        out |= {k: after[k] - before[k] for k in COUNTERS}
    return out


def reply_bytes(teacher: dict[str, Any], vocab: int) -> int:
    """Bytes of teacher logits per token that travel to the student."""
    if "top_k" not in teacher:
        return 4 * vocab
    k, size = teacher["top_k"], torch.finfo(getattr(torch, teacher.get("dtype", "float32"))).bits // 8
    return k * (size + 4) + (4 if teacher.get("top_k_fill") == "mass" else 0)


def load_average() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per student per run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    began, load_at_start = time.perf_counter(), load_average()
    cfg = experiment()
    setup = prepare(cfg, 0)
    for node in (STUDENT, TEACHER):
        load_node(cfg, setup, node, 0)  # node pre-training is not what is compared
    path, vocab = node_path(cfg, TEACHER, 0), setup.dataset.num_classes
    served = served_model(file_digest(path), path, cfg.nodes.model_of(TEACHER), setup.dataset.input_shape, vocab, True)

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    servers = {
        name: start_server([served], cfg.teacher.model_copy(update=teacher))
        for name, teacher in CONTENDERS.items()
        if teacher.get("mode") == "server"
    }
    students = [Student.remote(cfg, rank) for rank in range(2)]
    ray.get([s.ready.remote() for s in students])
    for name, teacher in CONTENDERS.items():  # warm-up (first requests, thread pools): not timed
        run_once(students, teacher, 5, servers.get(name))
    print(f"set up and warmed up in {time.perf_counter() - began:.0f}s", flush=True)

    runs: dict[tuple[int, str], list[dict[str, float]]] = {}
    for repeat in range(args.repeats):
        for s in (1, 2):
            for name, teacher in CONTENDERS.items():
                result = run_once(students[:s], teacher, args.steps, servers.get(name))
                runs.setdefault((s, name), []).append(result)
                print(f"repeat {repeat + 1} S={s} {name}: {result['tokens_per_s']:,.0f} tokens/s", flush=True)
    for server in servers.values():
        server.kill()

    print(
        f"\n{args.steps} steps of {next(iter(transfer_batches(cfg, setup, 0))).x.numel():,} tokens per student and "
        f"run, median of {args.repeats} repeats; {os.cpu_count()} cores, Ray num_cpus=2; load average "
        f"{load_at_start} at start, {load_average()} at end; {time.perf_counter() - began:.0f}s in all\n"
    )
    print(
        "| S | teacher | bytes/token sent | student tokens/s | vs inline | student waits | server: mean batch rows "
        "| requests merged | compute ms/batch | server busy | queueing ms/request |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for s in (1, 2):
        inline = statistics.median(r["tokens_per_s"] for r in runs[(s, "inline")])
        for name, teacher in CONTENDERS.items():
            rs = runs[(s, name)]
            rate = statistics.median(r["tokens_per_s"] for r in rs)
            waits = statistics.median(r["waits"] for r in rs)
            cells = [str(s), name, f"{reply_bytes(teacher, vocab) if name != 'inline' else 0:,}", f"{rate:,.0f}"]
            cells += [f"{rate / inline:.2f}", f"{100 * waits:.0f}%"]
            if name in servers:
                total = {k: sum(r[k] for r in rs) for k in COUNTERS}
                batches = max(total["batches"], 1)
                cells += [
                    f"{total['rows'] / batches:.0f}",
                    f"{total['requests'] / batches:.2f}",
                    f"{1000 * total['compute_s'] / batches:.0f}",
                    f"{100 * total['compute_s'] / sum(r['wall'] for r in rs):.0f}%",
                    f"{1000 * total['wait_s'] / max(total['requests'], 1):.1f}",
                ]
            else:
                cells += ["-"] * 5
            print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
