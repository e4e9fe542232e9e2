"""raykd's language-model paths on a GPU, checked in one prepared run (one PASS/FAIL line each, plus the numbers).

    python benchmarks/gpu_lm_check.py --out DIR [--budget SECONDS]   # on a machine with CUDA (no network needed)
    python benchmarks/gpu_lm_check.py --out DIR --dry                # here, on the CPU: tiny sizes, every GPU knob 0

Data: tune_configs/lm_default.yaml's corpus (CPython's pydoc topics, byte tokens, vocabulary 257, nothing
downloaded), sequences of 128; a ``gpt`` teacher of width 256, depth 4 on node 1 and a ``gpt`` student of width 64,
depth 2 on node 0, both pre-trained by raykd on their node's documents (on CUDA: ``tune.gpus_per_trial`` 1).

1. inline   ``run_trial`` on ``device=cuda``: KD (T 2, alpha 0.5) from the inline teacher into the student on the
            pool. Tokens/s (sequences/s of ``samples_per_s`` x seq_len, padding included), test perplexity before
            and after each epoch. PASS: it trains, perplexity is finite and lower than before.
2. engine   raykd's ``fit`` + ``TransferBatches`` + ``InlineTeacher`` against a hand-written KD loop with the
            same student, teacher, loss, optimiser and data (all training sequences, batch 32 and 128), fp32; the
            contenders alternate, R rounds of 1 warm-up + E timed epochs each; median tokens/s and ratios. Also
            raykd with the token ids resident on the GPU, and the bare loop under bf16 autocast (what the hardware
            allows). PASS: every contender trains to a finite loss.
3. server   raykd's TeacherServer (``start_server``, Ray local with num_gpus=1) holding the teacher on CUDA, replying
            top-32 bf16 logits with the mass fill (values, ids, tail logsumexp taken on the GPU), then full float16
            logits; 1 and 4 concurrent requester actors driving ``ServedTeacher`` as a trial does (32 sequences =
            4,096 tokens a request, prefetch 1, dense rows rebuilt on the requester). Against plain in-process
            inference of the same model on the same batches producing the same reply (fp32 compute, as the server
            does; and under bf16 autocast). Tokens/s and served/plain. PASS: the server runs on CUDA, its replies
            match the in-process ones, and both requester counts were measured.
4. sweep    ``python -m raykd.tune --config tune_configs/lm_default.yaml`` shrunk (seed 0, no-kd and kd, 3 epochs)
            with teacher.mode=server on CUDA (bf16 top-32 mass), trials on CUDA (gpus_per_trial 0.25). PASS:
            exit 0 and results.md written. Skipped when the budget has too little time left.

Writes DIR/log.txt (everything printed), DIR/results.json, and for check 4 DIR/sweep.log and DIR/sweep_results.md.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from raykd.config import TeacherConfig, load_config  # noqa: E402
from raykd.engine import Batch, TransferBatches, fit  # noqa: E402
from raykd.experiment import run_trial  # noqa: E402
from raykd.files import file_digest  # noqa: E402
from raykd.methods.base import UNLABELLED  # noqa: E402
from raykd.methods.kd import KnowledgeDistillation  # noqa: E402
from raykd.models import build_model  # noqa: E402
from raykd.nodes import load_node, node_path, prepare, read_node  # noqa: E402
from raykd.teacher.cache import tail_logsumexp  # noqa: E402
from raykd.teacher.inline import InlineTeacher  # noqa: E402

T, ALPHA, LR, TOP_K = 2.0, 0.5, 2e-3, 32
STARTED = time.perf_counter()
RESULTS: dict[str, Any] = {}
LOG: Any = None


def say(*parts: Any) -> None:
    line = " ".join(str(p) for p in parts)
    print(line, flush=True)
    if LOG is not None:
        LOG.write(line + "\n")
        LOG.flush()


def elapsed() -> float:
    return time.perf_counter() - STARTED


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for log.txt, results.json and check 4's files")
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes: proves the code, not the speed")
    p.add_argument("--budget", type=float, default=420.0, help="seconds for all checks; check 4 needs ~120 left")
    p.add_argument("--only", default="inline,engine,server,sweep", help="comma-separated checks to run")
    a = p.parse_args()
    if a.dry:
        a.dev, a.seq, a.teacher, a.student = "cpu", 32, (32, 1), (16, 1)
        a.node_epochs, a.xfer_epochs, a.sweep_epochs = 1, 2, 1
        a.engine_rows, a.engine_batches, a.rounds, a.epochs = 256, (32,), 2, 1
        a.requesters, a.seconds, a.req_cpus, a.server_cpus, a.gpus = (1, 2), 1.0, 0.25, 0.5, 0.0
        a.budget = max(a.budget, 900.0)
    else:
        a.dev, a.seq, a.teacher, a.student = "cuda", 128, (256, 4), (64, 2)
        a.node_epochs, a.xfer_epochs, a.sweep_epochs = 15, 8, 3
        a.engine_rows, a.engine_batches, a.rounds, a.epochs = None, (32, 128), 3, 2
        a.requesters, a.seconds, a.req_cpus, a.server_cpus, a.gpus = (1, 4), 3.0, 1.0, 2.0, 1.0
    a.only = set(a.only.split(","))
    return a


def study_sets(a: argparse.Namespace, work: Path, epochs: int) -> list[str]:
    """lm_default.yaml's overrides: one seed, two method rows, the check's models and sizes, files under ``work``."""
    tw, td = a.teacher
    sw, sd = a.student
    heads = 4 if sw % 4 == 0 else 2
    return [
        "seeds=[0]",
        f"data.seq_len={a.seq}",
        f"nodes.model={{name: gpt, width: {sw}, depth: {sd}, kwargs: {{heads: {heads}}}}}",
        f"nodes.models={{1: {{name: gpt, width: {tw}, depth: {td}, kwargs: {{heads: 4}}}}}}",
        f"nodes.train={{epochs: {a.node_epochs}, batch_size: 32, lr: {LR}}}",
        f"nodes.cache_dir={work / 'cache'}",
        f"transfer.train={{epochs: {epochs}, batch_size: 32, lr: {LR}}}",
        f"methods=[{{name: ce, label: no-kd}}, {{name: kd, label: kd, temperature: {T}, alpha: {ALPHA}}}]",
        f"tune.gpus_per_trial={0.25 if a.dev == 'cuda' else 0}",
        f"output_dir={work / 'runs'}",
        f"tracking.uri=sqlite:///{work / 'mlflow.db'}",
    ]


def sync(dev: str) -> None:
    if dev == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- 1. an inline LM KD trial on the device


def check_inline(a: argparse.Namespace, cfg: Any) -> None:
    dev = torch.device(a.dev)
    cfg = cfg.model_copy(update={"tune": cfg.tune.model_copy(update={"gpus_per_trial": 1.0 if a.dev == "cuda" else 0})})
    t0 = time.perf_counter()
    setup = prepare(cfg, 0)
    data = setup.dataset
    say(
        f"   data: {len(data.train_x)} training sequences x {a.seq} tokens, {len(data.test_x)} test sequences, "
        f"vocabulary {data.num_classes}; pool {len(setup.splits.pool)}, node shares "
        f"{[len(n.train) for n in setup.nodes]} sequences ({time.perf_counter() - t0:.1f}s)"
    )
    t0 = time.perf_counter()
    for node in (1, 0):  # node pre-training on the device (tune.gpus_per_trial > 0)
        load_node(cfg, setup, node, 0)
        meta = (read_node(node_path(cfg, node, 0)) or {}).get("meta", {})
        say(
            f"   node {node} ({'teacher' if node == 1 else 'student'}) pre-trained in "
            f"{meta.get('train_seconds', 0):.1f}s: "
            f"test ppl {meta.get('test_ppl', float('nan')):.2f}"
        )
    RESULTS["inline_node_seconds"] = time.perf_counter() - t0
    epochs: list[dict[str, Any]] = []

    def report(m: dict[str, Any]) -> None:
        epochs.append(m)
        say(
            f"   epoch {m['epoch']}: {m['samples_per_s'] * a.seq:,.0f} tokens/s, loss {m['loss']:.3f}, "
            f"val ppl {m['val_ppl']:.2f}, test ppl {m['test_ppl']:.2f} (before {m['test_ppl_before']:.2f}), "
            f"train {m['epoch_seconds']:.2f}s + eval {m['eval_seconds']:.2f}s"
        )

    t0 = time.perf_counter()
    final = run_trial(cfg, "kd", {"temperature": T, "alpha": ALPHA}, 0, report=report, device=dev)
    wall = time.perf_counter() - t0
    rates = [m["samples_per_s"] * a.seq for m in epochs]
    before, after = final["test_ppl_before"], final["test_ppl"]
    r = {
        "tokens_per_s_median": statistics.median(rates[1:] or rates),
        "tokens_per_s_first_epoch": rates[0],
        "test_ppl_before": before,
        "test_ppl_after": after,
        "test_ppl_per_epoch": [m["test_ppl"] for m in epochs],
        "trial_wall_s": wall,
        "epochs": len(epochs),
    }
    RESULTS["inline"] = r
    ok = math.isfinite(after) and after < before and len(epochs) == cfg.transfer.train.epochs
    say(
        f"{'PASS' if ok else 'FAIL'} 1.inline: run_trial kd on {a.dev}, {len(epochs)} epochs in {wall:.1f}s: "
        f"{r['tokens_per_s_median']:,.0f} tokens/s (median of epochs 2+), test ppl {before:.2f} -> {after:.2f}"
    )


# ---------------------------------------------------------------- 2. raykd's fit against a bare KD loop


def new_student(a: argparse.Namespace, cfg: Any, shape: tuple[int, ...], vocab: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(cfg.nodes.model_of(0), shape, vocab, tokens=True).to(a.dev)


def raykd_run(a, cfg, teacher, x, y, batch, seed, shape, vocab):
    model = new_student(a, cfg, shape, vocab, seed)
    batches = TransferBatches(x, y, np.arange(len(y)), None, batch, True, seed)
    times, losses, last = [], [], [time.perf_counter()]

    def on_epoch(epoch: int, terms: dict[str, float]) -> None:  # fit syncs once per epoch (the loss totals)
        now = time.perf_counter()
        times.append(now - last[0])
        losses.append(terms["loss"])
        last[0] = now

    fit(
        [model],
        KnowledgeDistillation(T, ALPHA),
        batches,
        1 + a.epochs,
        LR,
        teacher=InlineTeacher([teacher]),
        on_epoch=on_epoch,
    )
    return times[1:], batches.rows_per_epoch * a.seq, losses[-1]


def bare_run(a, cfg, teacher, x, y, batch, seed, shape, vocab, amp=False):
    """The same KD step written out: per-token CE over real tokens + T^2 KL over real tokens, Adam, GPU data."""
    model = new_student(a, cfg, shape, vocab, seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    gen = torch.Generator(device=a.dev).manual_seed(seed)
    n = (len(y) // batch) * batch
    times, loss_sum = [], torch.zeros((), device=a.dev)
    for _ in range(1 + a.epochs):
        sync(a.dev)
        start = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=a.dev)
        for idx in torch.randperm(len(y), device=a.dev, generator=gen)[:n].view(-1, batch):
            xb, yb = x[idx], y[idx].reshape(-1)
            with torch.autocast(a.dev, dtype=torch.bfloat16, enabled=amp):
                logits = model(xb).reshape(-1, vocab)
                with torch.no_grad():
                    t = teacher(xb).reshape(-1, vocab)
            logits, t = logits.float(), t.float()
            real = (yb != UNLABELLED).float()
            ce = F.cross_entropy(logits, yb, ignore_index=UNLABELLED, reduction="sum") / real.sum().clamp_min(1)
            kl = F.kl_div(F.log_softmax(logits / T, 1), F.softmax(t / T, 1), reduction="none").sum(1)
            loss = (1 - ALPHA) * ce + ALPHA * T * T * kl.dot(real) / real.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        sync(a.dev)
        times.append(time.perf_counter() - start)
    return times[1:], n * a.seq, float(loss_sum) / (n // batch)


def check_engine(a: argparse.Namespace, cfg: Any) -> None:
    setup = prepare(cfg, 0)
    data = setup.dataset
    teacher = load_node(cfg, setup, 1, 0).to(a.dev).eval().requires_grad_(False)
    count = a.engine_rows or len(data.train_x)
    x_cpu, y_cpu = data.train_x[:count].contiguous(), data.train_y[:count].contiguous()
    x, y = x_cpu.to(a.dev), y_cpu.to(a.dev)
    shape, vocab = data.input_shape, data.num_classes
    say(
        f"   {count} sequences x {a.seq} tokens ({count * a.seq:,} tokens an epoch); teacher "
        f"{sum(p.numel() for p in teacher.parameters()) / 1e6:.2f}M weights, student "
        f"{sum(p.numel() for p in new_student(a, cfg, shape, vocab, 0).parameters()) / 1e6:.3f}M"
    )
    r: dict[str, Any] = {}
    finite = True
    for batch in a.engine_batches:
        contenders = {
            "raykd-kd": lambda s, b=batch: raykd_run(a, cfg, teacher, x_cpu, y_cpu, b, s, shape, vocab),
            "bare-kd": lambda s, b=batch: bare_run(a, cfg, teacher, x, y, b, s, shape, vocab),
            "raykd-kd-gpudata": lambda s, b=batch: raykd_run(a, cfg, teacher, x, y_cpu, b, s, shape, vocab),
            "bare-kd-bf16": lambda s, b=batch: bare_run(a, cfg, teacher, x, y, b, s, shape, vocab, amp=True),
        }
        names = list(contenders)
        rates: dict[str, list[float]] = {n: [] for n in names}
        last_loss: dict[str, float] = {}
        t0 = time.perf_counter()
        for rnd in range(a.rounds):
            for name in names[rnd % len(names) :] + names[: rnd % len(names)]:
                times, tokens, loss = contenders[name](rnd)
                rates[name] += [tokens / t for t in times]
                last_loss[name] = loss
        med = {n: statistics.median(v) for n, v in rates.items()}
        spread = {n: (min(v) / med[n], max(v) / med[n]) for n, v in rates.items()}
        finite &= all(math.isfinite(v) for v in last_loss.values())
        ratios = {
            "raykd/bare": med["raykd-kd"] / med["bare-kd"],
            "raykd-gpudata/bare": med["raykd-kd-gpudata"] / med["bare-kd"],
            "bare-bf16/bare": med["bare-kd-bf16"] / med["bare-kd"],
        }
        r[f"batch{batch}"] = {
            "tokens_per_s": med,
            "spread": spread,
            "ratios": ratios,
            "last_loss": last_loss,
            "seconds": time.perf_counter() - t0,
        }
        say(
            f"   batch {batch} ({a.rounds} rounds x {a.epochs} timed epochs, {time.perf_counter() - t0:.0f}s): "
            "median tokens/s " + ", ".join(f"{n} {med[n]:,.0f} [{spread[n][0]:.2f}-{spread[n][1]:.2f}]" for n in names)
        )
        say(
            f"   batch {batch}: "
            + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items())
            + "; last-epoch loss "
            + ", ".join(f"{n} {v:.3f}" for n, v in last_loss.items())
        )
    RESULTS["engine"] = r
    summary = ", ".join(
        f"batch {b}: raykd/bare {r[f'batch{b}']['ratios']['raykd/bare']:.2f} "
        f"({r[f'batch{b}']['tokens_per_s']['raykd-kd']:,.0f} vs "
        f"{r[f'batch{b}']['tokens_per_s']['bare-kd']:,.0f} tokens/s)"
        for b in a.engine_batches
    )
    say(f"{'PASS' if finite else 'FAIL'} 2.engine: fp32 KD on {a.dev}, {summary}")


# ---------------------------------------------------------------- 3. the TeacherServer on the device


def make_requester():
    import ray

    from raykd.teacher.server import ServedTeacher

    @ray.remote
    class Requester:
        """One trial's side of the server: raykd's ServedTeacher (prefetch 1) over 4 token batches."""

        def __init__(self, x: torch.Tensor, batch: int) -> None:
            torch.set_num_threads(1)
            self.batches = [
                Batch(
                    x[i * batch : (i + 1) * batch],
                    torch.zeros(batch * x.shape[1], dtype=torch.int64),
                    torch.ones(batch * x.shape[1], dtype=torch.bool),
                    torch.arange(batch * x.shape[1]),
                )
                for i in range(4)
            ]

        def ready(self) -> bool:
            return True

        def run(self, server: Any, key: str, classes: int, seconds: float) -> tuple[int, float]:
            refs = ServedTeacher(server, [key], None, prefetch=1, classes=classes)
            tokens, i, start = 0, 0, time.perf_counter()
            while time.perf_counter() - start < seconds:
                refs.prefetch(self.batches[(i + 1) % 4])
                teachers, _ = refs(self.batches[i % 4])
                tokens += teachers[0].shape[0] * teachers[0].shape[1]  # (batch, seq, vocab) rebuilt rows
                i += 1
            if refs.pending:  # collect the last prefetched reply: the server's queue ends empty
                refs(self.batches[i % 4])
            return tokens, time.perf_counter() - start

    return Requester


def reply(model: torch.nn.Module, xb: torch.Tensor, dev: str, top_k: int | None, autocast: bool) -> tuple:
    """What the server computes for one request, in this process: CPU ids in, the reply's tensors on the CPU."""
    with torch.no_grad(), torch.autocast(dev, dtype=torch.bfloat16, enabled=autocast):
        logits = model(xb.to(dev, non_blocking=True))[None]
    if top_k is None:
        return (logits.half().cpu(),)
    values, ids = logits.float().topk(top_k, dim=-1)
    return values.bfloat16().cpu(), ids.int().cpu(), tail_logsumexp(logits, ids).cpu()


def plain_rate(model, x_batches, dev, top_k, autocast, seconds) -> float:
    done, i = 0, 0
    reply(model, x_batches[0], dev, top_k, autocast)  # warm-up
    sync(dev)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds or i < 4:
        out = reply(model, x_batches[i % len(x_batches)], dev, top_k, autocast)
        done += out[0].shape[1] * out[0].shape[2]
        i += 1
    return done / (time.perf_counter() - start)


def check_server(a: argparse.Namespace, cfg: Any) -> None:
    import ray

    from raykd.teacher.server import served_model, start_server

    setup = prepare(cfg, 0)
    data = setup.dataset
    teacher = load_node(cfg, setup, 1, 0).to(a.dev).eval().requires_grad_(False)
    path = node_path(cfg, 1, 0)
    info = served_model(file_digest(path), path, cfg.nodes.model_of(1), data.input_shape, data.num_classes, True)
    batch = 32
    x_batches = [data.train_x[i * batch : (i + 1) * batch].contiguous() for i in range(4)]
    # Ray's workers import raykd from the checkout: an absolute path, whatever their working directory
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    )
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # as raykd.cluster.connect_ray
    t0 = time.perf_counter()
    ray.init(
        num_gpus=int(a.gpus),
        num_cpus=2 if a.dry else None,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
    )
    say(f"   ray.init {time.perf_counter() - t0:.1f}s; resources {ray.cluster_resources()}")
    requester = make_requester()
    pool = [
        requester.options(num_cpus=a.req_cpus).remote(
            data.train_x[j * 4 * batch : (j + 1) * 4 * batch].contiguous(), batch
        )
        for j in range(max(a.requesters))
    ]
    ray.get([p.ready.remote() for p in pool])
    r: dict[str, Any] = {}
    ok = True
    variants = {
        "top32-bf16-mass": {"dtype": "bfloat16", "top_k": TOP_K, "top_k_fill": "mass"},
        "full-fp16": {"dtype": "float16", "top_k": None},
    }
    for name, knobs in variants.items():
        tcfg = TeacherConfig(
            mode="server", device="cuda" if a.dev == "cuda" else "cpu", num_gpus=a.gpus, num_cpus=a.server_cpus, **knobs
        )
        t0 = time.perf_counter()
        server = start_server([info], tcfg)
        stats = server.stats()
        say(f"   {name}: server started in {time.perf_counter() - t0:.1f}s on {stats['device']}")
        # its replies against this process's, one batch (fp32 compute on both sides)
        got = ray.get(server.replicas[0].infer.remote((info.key,), x_batches[0]))
        want = reply(teacher, x_batches[0], a.dev, knobs["top_k"], False)
        err = float((got[0].float() - want[0].float()).abs().max())
        scale = float(want[0].float().abs().max())
        same_ids = float((got[1] == want[1])[..., 0].float().mean()) if len(got) > 1 else 1.0
        tail_err = float((got[2] - want[2]).abs().max()) if len(got) > 2 else 0.0
        match = err <= 0.02 * scale + 1e-3 and same_ids >= 0.99 and tail_err <= 1e-2 * (1 + scale)
        say(
            f"   {name}: reply vs in-process: max |value diff| {err:.4g} (max |value| {scale:.3g}), top-1 id agreement "
            f"{same_ids:.4f}, max |tail lse diff| {tail_err:.3g}, reply shapes {[tuple(t.shape) for t in got]}"
        )
        ray.get([p.run.remote(server, info.key, data.num_classes, 0.5) for p in pool[:2]])  # warm-up
        served = {}
        for k in a.requesters:
            before = server.stats()
            out = ray.get([p.run.remote(server, info.key, data.num_classes, a.seconds) for p in pool[:k]])
            after = server.stats()
            wall = max(w for _, w in out)
            served[k] = sum(t for t, _ in out) / wall
            merged = (after["rows"] - before["rows"]) / max(after["batches"] - before["batches"], 1) * a.seq
            busy = (after["compute_s"] - before["compute_s"]) / wall
            say(
                f"   {name}: {k} requester(s): {served[k]:,.0f} tokens/s, mean merged batch {merged:,.0f} tokens, "
                f"server compute busy {100 * busy:.0f}% of wall"
            )
        top_k = knobs["top_k"]
        plain = {
            "fp32": plain_rate(teacher, x_batches, a.dev, top_k, False, a.seconds / 2),
            "bf16-autocast": plain_rate(teacher, x_batches, a.dev, top_k, True, a.seconds / 2),
        }
        best = max(served, key=served.get)
        ratios = {f"served(K={k})/plain-{p}": served[k] / v for k in served for p, v in plain.items()}
        r[name] = {
            "served_tokens_per_s": served,
            "plain_tokens_per_s": plain,
            "ratios": ratios,
            "reply_max_abs_diff": err,
            "top1_id_agreement": same_ids,
            "tail_max_abs_diff": tail_err,
            "server_device": stats["device"],
            "match": match,
        }
        say(
            f"   {name}: plain in-process (same reply) tokens/s: fp32 {plain['fp32']:,.0f}, bf16 autocast "
            f"{plain['bf16-autocast']:,.0f}; served(K={best})/plain-fp32 {served[best] / plain['fp32']:.2f}, "
            f"/plain-bf16 {served[best] / plain['bf16-autocast']:.2f}"
        )
        on_device = stats["device"].startswith("cuda") if a.dev == "cuda" else True
        ok &= match and on_device and len(served) == len(a.requesters)
        s = server.stats()
        say(
            f"   {name}: server totals {s['requests']} requests, {s['batches']} batches, "
            f"peak RSS {s['peak_rss_mb']:.0f} MB"
        )
        server.kill()
    RESULTS["server"] = r
    ray.shutdown()
    t = r["top32-bf16-mass"]
    f = r["full-fp16"]
    say(
        f"{'PASS' if ok else 'FAIL'} 3.server: TeacherServer on {t['server_device']}, top-32 bf16 mass: "
        + ", ".join(f"K={k} {v:,.0f}" for k, v in t["served_tokens_per_s"].items())
        + f" tokens/s vs plain fp32 {t['plain_tokens_per_s']['fp32']:,.0f} / "
        + f"bf16 {t['plain_tokens_per_s']['bf16-autocast']:,.0f}; "
        + "full fp16: "
        + ", ".join(f"K={k} {v:,.0f}" for k, v in f["served_tokens_per_s"].items())
        + f" vs plain fp32 {f['plain_tokens_per_s']['fp32']:,.0f}"
    )


# ---------------------------------------------------------------- 4. the sweep through python -m raykd.tune


def check_sweep(a: argparse.Namespace, work: Path, left: float) -> None:
    sets = (
        study_sets(a, work, a.sweep_epochs)
        + [
            "name=gpu-lm-server",
            "teacher.mode=server",
            f"teacher.device={'cuda' if a.dev == 'cuda' else 'cpu'}",
            "teacher.dtype=bfloat16",
            f"teacher.top_k={TOP_K}",
            "teacher.top_k_fill=mass",
            f"teacher.num_gpus={0.25 if a.dev == 'cuda' else 0}",
            f"teacher.num_cpus={2 if a.dev == 'cuda' else 0.5}",
            f"tune.cpus_per_trial={2 if a.dev == 'cuda' else 0.5}",
        ]
        + (["ray.num_cpus=2"] if a.dry else [])
    )
    cmd = [sys.executable, "-m", "raykd.tune", "--config", str(REPO / "tune_configs" / "lm_default.yaml")]
    for s in sets:
        cmd += ["--set", s]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONUNBUFFERED="1",
    )
    timeout = max(30.0, left)
    say(f"   {' '.join(cmd[:5])} --set ... ({len(sets)} overrides: {'; '.join(sets)}), timeout {timeout:.0f}s")
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
    wall = time.perf_counter() - t0
    (a.out / "sweep.log").write_text(text[-4_000_000:])
    found = sorted(glob.glob(str(work / "runs" / "gpu-lm-server*" / "results.md")))
    if found:
        shutil.copy(found[-1], a.out / "sweep_results.md")
        rows_ = [line for line in Path(found[-1]).read_text().splitlines() if line.startswith("| ")]
        for line in rows_[:8]:
            say("   " + line)
    tail = [line for line in text.splitlines() if line.strip()][-3:]
    RESULTS["sweep"] = {"rc": rc, "wall_s": wall, "results_md": bool(found), "tail": tail}
    ok = rc == 0 and bool(found)
    say(
        f"{'PASS' if ok else 'FAIL'} 4.sweep: python -m raykd.tune lm_default (teacher.mode=server on "
        f"{'cuda' if a.dev == 'cuda' else 'cpu'}, bf16 top-32 mass), exit {rc} after {wall:.0f}s, "
        f"results.md {'written' if found else 'MISSING'}" + ("" if ok else f"; last lines: {' | '.join(tail)}")
    )


def main() -> int:
    global LOG
    a = parse()
    a.out.mkdir(parents=True, exist_ok=True)
    LOG = open(a.out / "log.txt", "a")
    say(
        f"== gpu_lm_check {'--dry ' if a.dry else ''}{time.strftime('%Y-%m-%d %H:%M:%S')}: "
        f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}, {os.cpu_count()} CPUs, "
        f"budget {a.budget:.0f}s"
    )
    if a.dev == "cuda" and not torch.cuda.is_available():
        say("FAIL all: torch sees no CUDA device")
        return 1
    if a.dry:
        torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="raykd-gpu-lm-"))
    cfg = load_config(REPO / "tune_configs" / "lm_default.yaml", study_sets(a, work, a.xfer_epochs))
    RESULTS["args"] = {
        k: (sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()
    }
    checks = [
        ("1.inline", lambda: check_inline(a, cfg)),
        ("2.engine", lambda: check_engine(a, cfg)),
        ("3.server", lambda: check_server(a, cfg)),
    ]
    failed = 0
    for name, run in checks:
        if name.split(".")[1] not in a.only:
            continue
        say(f"== {name} at {elapsed():.0f}s")
        t0 = time.perf_counter()
        try:
            run()
        except Exception as err:  # noqa: BLE001 - one check's failure is its line, the others still run
            failed += 1
            say(f"FAIL {name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            say(traceback.format_exc())
            RESULTS[f"{name}_error"] = f"{type(err).__name__}: {err}"
        RESULTS[f"{name}_seconds"] = time.perf_counter() - t0
        if a.dev == "cuda":
            torch.cuda.empty_cache()  # the check's models and data are gone with its frame
    if "sweep" in a.only:
        left = a.budget - elapsed()
        if left < (60 if a.dry else 100):
            say(f"SKIP 4.sweep: {left:.0f}s of the {a.budget:.0f}s budget left")
            RESULTS["sweep"] = {"skipped": f"{left:.0f}s left"}
        else:
            say(f"== 4.sweep at {elapsed():.0f}s")
            try:
                check_sweep(a, work, left - 10)
            except Exception as err:  # noqa: BLE001
                failed += 1
                say(f"FAIL 4.sweep: {type(err).__name__}: {err}")
                say(traceback.format_exc())
    RESULTS["total_s"] = elapsed()
    (a.out / "results.json").write_text(json.dumps(RESULTS, indent=1, default=str))
    say(f"== total {elapsed():.0f}s; work folder {work}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
