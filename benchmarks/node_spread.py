"""Is a node's accuracy on a GPU the recipe's spread, or the GPU's doing? (issue 28: node 1 reached 39.4% on an H200
where node 0, same recipe, reached 85.9%; 74.5% and 65.4% on the CPU.)

    python benchmarks/node_spread.py CONFIG --device cuda --repeats 3 [--set KEY=VALUE ...]

Trains nodes 0 and 1 of ``CONFIG`` (the GPU check passes its shrunk CIFAR study) from scratch with raykd's own node
training (``raykd.nodes.train_node``: the recipe's model, optimiser, augmentation), ``--repeats`` seeds each, plus
seed 0 once more (the same draw twice: what the device's non-determinism alone moves). Prints each run's test
accuracy and, per node, the median and range; FAIL when a run falls more than ``--collapse`` points below its node's
median (a collapse like the H200's), so the log says which node, seed and device.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from raykd.config import load_config
from raykd.nodes import prepare, train_node


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", type=Path)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--collapse", type=float, default=20.0, help="points below the node's median that fail")
    p.add_argument("--set", action="append", default=[], dest="sets")
    a = p.parse_args()
    cfg, device = load_config(a.config, a.sets), torch.device(a.device)
    accs: dict[int, list[float]] = {0: [], 1: []}
    ok = True
    for seed in [*range(a.repeats), 0]:
        setup = prepare(cfg, seed)
        for node in accs:
            start = time.perf_counter()
            acc = 100 * train_node(cfg, setup, node, seed, device)["meta"]["test_acc"]
            accs[node].append(acc)
            took = time.perf_counter() - start
            print(f"RESULT node {node} seed {seed} on {a.device}: test acc {acc:.1f}% ({took:.0f}s)", flush=True)
    for node, runs in accs.items():
        median = statistics.median(runs)
        low = min(runs)
        ok &= median - low <= a.collapse
        print(
            f"RESULT node {node} on {a.device}: median {median:.1f}%, range {low:.1f}-{max(runs):.1f}% over "
            f"{len(runs)} runs; seed 0 twice: {runs[0]:.1f} and {runs[-1]:.1f}",
            flush=True,
        )
    print(
        f"{'PASS' if ok else 'FAIL'} nodes: no run more than {a.collapse:g} points below its node's median", flush=True
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
