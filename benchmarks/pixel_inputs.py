"""What keeping pixels as uint8 buys and costs: memory, ``fit`` speed, and a served teacher's request.

    PYTHONPATH=$PWD python benchmarks/pixel_inputs.py [--rows 2048] [--rounds 3] [--seconds 2]

CIFAR-shaped (3, 32, 32) images, stored two ways: float32 standardised at load (raykd before) and uint8 pixels that
the models standardise themselves (``build_model(..., pixels=record)``, raykd now). Contenders alternate within every
round, in one process, one torch thread:
1. memory: bytes of a 50,000-image training set each way.
2. fit: samples/s of raykd's ``fit`` (cross-entropy, ``cnn2d`` width 8, batch 128, random crop + flip) on each.
3. serving: a ``cnn2d`` (width 4, one block) TeacherServer (0.5 CPU) asked by K requesters driving ``ServedTeacher``
   on 256-row batches of each kind: the request's bytes on Ray's wire, one request's latency and rows/s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import gpu_speed  # a sibling script: the requesting loop
import numpy as np
import ray
import torch
from gpu_speed import served_rows

from raykd.config import DataConfig, ModelSpec, TeacherConfig
from raykd.data import build_augment
from raykd.data.datasets import BUILTIN_PREPROCESS
from raykd.data.preprocess import Standardise
from raykd.engine import Batch, TransferBatches, fit
from raykd.files import file_digest
from raykd.methods.ce import CrossEntropy
from raykd.models import build_model
from raykd.teacher.server import Carried, ServedTeacher, narrowed, served_model, start_server

ray.cloudpickle.register_pickle_by_value(gpu_speed)
SHAPE, CLASSES, ROWS = (3, 32, 32), 10, 256
RECORD = BUILTIN_PREPROCESS["cifar10"]
KINDS = ("float32", "uint8")


def images(rows: int, seed: int) -> dict[str, torch.Tensor]:
    """The same random pixels as uint8 and as the float32 they standardise to."""
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (rows, *SHAPE), generator=g, dtype=torch.uint8)
    return {"uint8": pixels, "float32": Standardise(RECORD)(pixels)}


def fit_rate(x: torch.Tensor, y: torch.Tensor, seed: int) -> float:
    """raykd's fit over ``x`` (uint8: the model standardises it), samples/s of one epoch after a warm-up one."""
    torch.manual_seed(seed)
    pixels = RECORD if x.dtype == torch.uint8 else None
    model = build_model(ModelSpec(name="cnn2d", width=8), SHAPE, CLASSES, pixels=pixels)
    augment = build_augment(DataConfig(augment=["random_crop", "horizontal_flip"]).augment, seed)
    batches = TransferBatches(x, y, np.arange(len(y)), None, 128, True, seed, augment)
    times = [time.perf_counter()]
    fit([model], CrossEntropy(), batches, 2, 1e-3, on_epoch=lambda *_: times.append(time.perf_counter()))
    return batches.rows_per_epoch / (times[2] - times[1])


@ray.remote(num_cpus=0)
class Requester:
    """One student's side: ``ServedTeacher`` over 4 cycled 256-row batches of either kind."""

    def __init__(self, seed: int) -> None:
        torch.set_num_threads(1)
        rows, keep = torch.arange(ROWS), torch.ones(ROWS, dtype=torch.bool)
        made = [images(ROWS, seed * 4 + i) for i in range(4)]
        self.batches = {kind: [Batch(m[kind], rows * 0, keep, rows) for m in made] for kind in KINDS}

    def run(self, server: Any, key: str, kind: str, seconds: float, prefetch: int) -> tuple[int, float]:
        return served_rows(ServedTeacher(server, [key], None, prefetch=prefetch), self.batches[kind], seconds)


def wire_bytes(x: torch.Tensor) -> int:
    ctx = ray._private.worker.global_worker.get_serialization_context()
    return ctx.serialize(Carried(narrowed(x), as_dtype=x.dtype)).total_bytes


def serving(a: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="raykd-pixels-"))
    spec = ModelSpec(name="cnn2d", width=4, depth=1)
    torch.manual_seed(0)
    path = folder / "teacher.pt"
    torch.save({"state_dict": build_model(spec, SHAPE, CLASSES).state_dict()}, path)
    key, cfg = file_digest(path), TeacherConfig(mode="server", num_cpus=0.5, device="cpu")
    servers = {
        kind: start_server([served_model(key, path, spec, SHAPE, CLASSES, False, RECORD)], cfg) for kind in KINDS
    }
    sample = images(ROWS, 0)
    print("wire: a 256-row request " + ", ".join(f"{k} {wire_bytes(sample[k]):,} B" for k in KINDS), flush=True)
    pool = [Requester.remote(i) for i in range(max(a.requesters))]
    got: dict[tuple[str, int], list[float]] = {}
    for r in range(a.rounds):
        for k in (1, *a.requesters):
            for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
                prefetch = 0 if k == 1 else 1  # K=1 without prefetch: one request's latency
                done = ray.get([q.run.remote(servers[kind], key, kind, a.seconds, prefetch) for q in pool[:k]])
                got.setdefault((kind, k), []).append(sum(n for n, _ in done) / max(w for _, w in done))
    for k in (1, *a.requesters):
        rate = {kind: statistics.median(got[kind, k]) for kind in KINDS}
        what = (
            f"one request {1000 * ROWS / rate['float32']:.2f} ms float32, {1000 * ROWS / rate['uint8']:.2f} ms uint8"
            if k == 1
            else (f"K={k}: float32 {rate['float32']:,.0f} rows/s, uint8 {rate['uint8']:,.0f} rows/s")
        )
        print(f"serve {what} (uint8 / float32 rows/s {rate['uint8'] / rate['float32']:.2f})", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--requesters", type=int, nargs="+", default=[4])
    a = p.parse_args()
    torch.set_num_threads(1)
    full = images(50_000, 0)
    print("memory: 50,000 images " + ", ".join(f"{k} {v.nbytes / 2**20:,.0f} MiB" for k, v in full.items()), flush=True)
    del full
    data, y = images(a.rows, 1), torch.randint(0, CLASSES, (a.rows,), generator=torch.Generator().manual_seed(2))
    rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
    for r in range(a.rounds):
        for kind in KINDS if r % 2 == 0 else KINDS[::-1]:
            rates[kind].append(fit_rate(data[kind], y, r))
    med = {kind: statistics.median(v) for kind, v in rates.items()}
    each = [round(u / f, 3) for u, f in zip(rates["uint8"], rates["float32"], strict=True)]
    print(
        f"fit: float32 {med['float32']:.0f}, uint8 {med['uint8']:.0f} samples/s "
        f"(uint8 / float32 {med['uint8'] / med['float32']:.3f}; each round {each})",
        flush=True,
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    serving(a)
    ray.shutdown()


if __name__ == "__main__":
    main()
