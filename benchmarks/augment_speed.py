"""raykd's batched per-sample augmentation vs torchvision.transforms.v2 applied image by image.

    python benchmarks/augment_speed.py [--repeats 30] [--threads 1]

One CPU training step of a small CIFAR-shaped model (raykd's cnn2d, 3x32x32 inputs, batch 128) with
random crop (padding 4) and horizontal flip, done either by ``raykd.data.build_augment`` on the whole
batch or by ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip()`` in a loop over the images
(torchvision on a batch tensor would draw one crop for the whole batch, so the loop is its per-sample
equivalent). The two sides alternate within each repeat so outside load hits both alike; medians.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torchvision.transforms import v2

from raykd.config import DataConfig, ModelSpec
from raykd.data import build_augment
from raykd.models import build_model

BATCH, SHAPE = 128, (3, 32, 32)


def torchvision_per_sample() -> Callable[[Tensor], Tensor]:
    """The same transforms drawn per image by torchvision, one image at a time."""
    transform = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    return lambda x: torch.stack([transform(image) for image in x])


def timed_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, augment: Callable[[Tensor], Tensor]
) -> tuple[float, float]:
    """Seconds for (augmentation, augmentation + one forward/backward/step) on a fresh batch."""
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, 10, (BATCH,))
    start = time.perf_counter()
    views = augment(x)
    augmented = time.perf_counter()
    loss = nn.functional.cross_entropy(model(views), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return augmented - start, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steadier on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(ModelSpec(name="cnn2d"), SHAPE, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    sides = {
        "raykd": build_augment(DataConfig(augment=["random_crop", "horizontal_flip"]).augment, seed=0),
        "torchvision loop": torchvision_per_sample(),
    }
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    load_at_start = os.getloadavg()[0]
    for repeat in range(args.repeats + 2):  # two warm-up rounds, not counted
        for name, augment in sides.items():
            result = timed_step(model, optimizer, augment)  # type: ignore[arg-type]
            if repeat >= 2:
                times[name].append(result)
    print(f"load average {load_at_start:.2f} -> {os.getloadavg()[0]:.2f}; torch threads {args.threads}; batch {BATCH}")
    medians = {}
    for name, pairs in times.items():
        aug, step = (statistics.median(p[i] for p in pairs) * 1e3 for i in (0, 1))
        medians[name] = (aug, step)
        print(f"{name:>17}: augmentation {aug:7.2f} ms, augmentation + training step {step:7.2f} ms")
    (ra, rs), (ta, ts) = medians["raykd"], medians["torchvision loop"]
    print(f"ratio torchvision loop / raykd: augmentation {ta / ra:.1f}x, whole step {ts / rs:.2f}x")


if __name__ == "__main__":
    main()
