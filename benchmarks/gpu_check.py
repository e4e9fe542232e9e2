"""raykd's GPU paths and speed on a machine with a GPU and no network, in about 6 minutes (issue 28, item 5).

    python benchmarks/gpu_check.py LOG_DIR                 # on the GPU machine
    python benchmarks/gpu_check.py LOG_DIR --device cpu    # here: every path with its GPU knobs at 0, tiny sizes

Each path runs as its own process under its own timeout, all under one deadline (``--budget`` seconds), and
prints one ``PASS``/``FAIL`` line (exit 0 within its time); without CUDA and without ``--device cpu`` each GPU path
prints ``no GPU: skipped``. Logs: LOG_DIR/NAME.log for each, LOG_DIR/summary.txt for the lines printed here.
Ray, Flower and MLflow must import (on a bare GPU image: /work/shared/gpu/README.md's site bundle on PYTHONPATH).
  server    shrunk paper_study_cifar10 sweep on synthetic CIFAR-10: 4 trials sharing the GPU, TeacherServer on CUDA
            in float16 (fp16 autocast), trials in bf16 (``transfer.train.precision``)
  inline    the same sweep, teacher inline in each trial
  cache     the same sweep from the logit cache (no augmentation: cache mode refuses it)
  learners  the default MNIST-1D study on a 1-worker Ray Train learner with ``learners.use_gpu``
  flower    tune_configs/federated_kd.yaml as a Flower simulation, ``federated.client_gpus`` 0.25
  speed     benchmarks/gpu_speed.py: raykd fit (float32 inputs and uint8 pixels) / bare loop at batch 128 and 512,
            fp32 and bf16; served / plain fp16 inference for ResNet-20 (4 requesters) and ResNet-110, each as one
            server and as 2 replicas (PASS/FAIL lines of its own with the ratios)
  nodes     benchmarks/node_spread.py: nodes 0 and 1 of the server sweep's config trained 3 times each on the GPU,
            seed 0 twice (is a node's low accuracy the recipe's spread or the GPU's doing?)
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from cifar_data import synthetic

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "tune_configs" / "paper_study_cifar10.yaml"
FLOWER = ROOT / "tune_configs" / "federated_kd.yaml"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("logs", type=Path, help="folder for the logs (created)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda", help="cpu: smoke mode, tiny sizes")
    p.add_argument("--budget", type=float, default=None, help="seconds for all paths (default 390 cuda, 1500 cpu)")
    p.add_argument("--only", nargs="*", default=None, help="names of the paths to run (default: all)")
    a = p.parse_args()
    a.gpu = a.device == "cuda"
    a.budget = a.budget or (390.0 if a.gpu else 1500.0)
    return a


def write_cifar10(root: Path, train: int, test: int) -> Path:
    """A synthetic, learnable ``cifar-10-batches-py/`` (benchmarks/cifar_data.py's images as uint8 pixels)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x, y, x_test, y_test = synthetic(train=train, test=test)
    pixels = lambda v: np.clip(128 + 40 * v, 0, 255).astype(np.uint8).reshape(len(v), -1)  # noqa: E731
    per = train // 5
    parts = [(f"data_batch_{i + 1}", x[i * per : (i + 1) * per], y[i * per : (i + 1) * per]) for i in range(5)]
    for name, images, labels in [*parts, ("test_batch", x_test, y_test)]:
        record = {"batch_label": name, "labels": [int(v) for v in labels], "data": pixels(images), "filenames": []}
        (folder / name).write_bytes(pickle.dumps(record))
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": per}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


def commands(a: argparse.Namespace, work: Path) -> dict[str, tuple[float, list[str]]]:
    """Each path's share of the budget (a fraction) and its command line."""
    gpu, py = a.gpu, sys.executable
    node_ep, xfer_ep, rounds = (20, 8, 3) if gpu else (1, 1, 2)
    store = sets(f"nodes.cache_dir={work / 'cache'}", f"tracking.uri=sqlite:///{work / 'mlflow.db'}")
    cifar = [
        "--config", str(STUDY),
        *sets("seeds=[0]", "axes={}", "partition.scheme=iid", "partition.min_samples=5", "federated.after_sweep=false",
              "methods=[{name: ce, label: no-kd}, {name: kd, label: kd-tuned, temperature: [1, 2, 4], alpha: 0.5}]",
              f"nodes.train={{epochs: {node_ep}, batch_size: 128, lr: 0.003, weight_decay: 0.0005}}",
              f"transfer.train={{epochs: {xfer_ep}, batch_size: 128, lr: 0.001, weight_decay: 0.0005, "
              f"precision: {'bf16' if gpu else 'fp32'}}}",
              f"tune.cpus_per_trial={2 if gpu else 1}", f"tune.gpus_per_trial={0.2 if gpu else 0}",
              f"data.root={work / 'data'}"),
        *store,
    ]  # fmt: skip
    tune = [py, "-m", "raykd.tune"]
    device = "cuda" if gpu else "cpu"
    return {
        "server": (0.20, [*tune, *cifar, *sets("name=gpu-server", f"output_dir={work / 'runs-server'}",
                   "teacher.mode=server", f"teacher.device={device}", "teacher.dtype=float16",
                   f"teacher.num_gpus={0.2 if gpu else 0}", "teacher.num_cpus=1")]),
        "inline": (0.14, [*tune, *cifar, *sets("name=gpu-inline", f"output_dir={work / 'runs-inline'}",
                   "teacher.mode=inline", "teacher.num_gpus=0")]),
        "cache": (0.12, [*tune, *cifar, *sets("name=gpu-cache", f"output_dir={work / 'runs-cache'}",
                  "teacher.mode=cache", "teacher.num_gpus=0", "data.augment=[]")]),
        "learners": (0.14, [*tune, *store, *sets("name=gpu-learners", "seeds=[0]", "nodes.train.epochs=5",
                     "methods=[{name: kd, label: kd-tuned, temperature: [2, 4], alpha: 0.5}]",
                     "transfer.train.epochs=3", "learners.num_workers=1", f"learners.use_gpu={str(gpu).lower()}",
                     "tune.max_concurrent_trials=1", f"output_dir={work / 'runs-learners'}")]),
        "flower": (0.12, [py, "-m", "federated.simulate", "--config", str(FLOWER), *store,
                   *sets(f"federated.rounds={rounds}", f"federated.client_gpus={0.25 if gpu else 0}",
                         f"output_dir={work / 'runs-flower'}")]),
        "speed": (0.24, [py, str(ROOT / "benchmarks" / "gpu_speed.py"), "--device", device]),
        "nodes": (0.08, [py, str(ROOT / "benchmarks" / "node_spread.py"), str(STUDY), *cifar[2:], "--device", device,
                  "--repeats", "3" if gpu else "1"]),
    }  # fmt: skip


def run_path(name: str, argv: list[str], seconds: float, log: Path, cwd: Path) -> tuple[str, list[str]]:
    """One path in its own process group under ``seconds``: PASS/FAIL and the ``RESULT``/PASS/FAIL lines it printed."""
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        out.write(f"== {name}: up to {seconds:.0f}s: {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)
        try:
            rc: int | str = proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # the path's own session: its Ray workers and children
            proc.wait()
            rc = "timeout"
    took = time.perf_counter() - started
    lines = [s.strip() for s in log.read_text(errors="replace").splitlines()]
    found = [s for s in lines if s.startswith(("RESULT", "PASS", "FAIL"))]
    last = next((s for s in reversed(lines) if s), "")[:200]
    verdict = "PASS" if rc == 0 else "FAIL"
    return f"{verdict} {name}: exit {rc} after {took:.0f}s" + ("" if rc == 0 else f"; last line: {last}"), found


def main() -> int:
    a = parse()
    t0 = time.perf_counter()
    a.logs.mkdir(parents=True, exist_ok=True)
    work = a.logs / "work"
    (work / "cwd").mkdir(parents=True, exist_ok=True)
    summary: list[str] = []

    def say(line: str) -> None:
        print(line, flush=True)
        summary.append(line)

    cuda = torch.cuda.is_available()
    say(f"== torch {torch.__version__}, cuda available {cuda}"
        + (f" ({torch.cuda.get_device_name()})" if cuda else "") + f", mode {a.device}")  # fmt: skip
    write_cifar10(work / "data", *((5000, 1000) if a.gpu else (500, 200)))
    failed = False
    for name, (share, argv) in commands(a, work).items():
        if a.only is not None and name not in a.only:
            continue
        if a.gpu and not cuda:
            say(f"SKIP {name}: no GPU: skipped")
            continue
        left = a.budget - (time.perf_counter() - t0)
        seconds = min(share * a.budget * 1.5, left)  # a fast path leaves its time to the next ones
        if seconds < 20:
            say(f"FAIL {name}: not run, {left:.0f}s of the budget left")
            failed = True
            continue
        line, found = run_path(name, argv, seconds, a.logs / f"{name}.log", work / "cwd")
        failed |= line.startswith("FAIL")
        say(line)
        for result in found:
            say(f"   {result}")
    say(f"== total {time.perf_counter() - t0:.0f}s of {a.budget:.0f}s; logs in {a.logs}")
    (a.logs / "summary.txt").write_text("\n".join(summary) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
