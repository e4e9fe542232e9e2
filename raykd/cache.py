"""``python -m raykd.cache list|prune``: what ``nodes.cache_dir`` holds, and removing what no config uses.

raykd never deletes a cache entry by itself: a node model, its logits or a built dataset is kept for the next
sweep, and an edited dataset or model leaves the old entries behind (they have other keys). ``list`` shows
every entry (kind, size, age) and, given configs, whether one of them uses it; ``prune`` removes the entries
none of the given configs uses. ``prune`` is a dry run unless ``--yes`` is given.

Entries it cannot tie to a config (tokenizers, text corpora) are listed as ``?`` and never pruned.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from raykd.cli import absolute_paths, run_command
from raykd.config import ExperimentConfig, load_config, study_cells
from raykd.errors import ConfigError

#: The cache's sub-folders whose entries a config's keys name (the rest are listed, never pruned).
KEYED = ("nodes", "logits", "datasets")


@dataclass(frozen=True)
class Entry:
    """One cache file and whether a given config uses it (None: not known)."""

    path: Path
    kind: str
    size: int
    age_days: float
    used: bool | None


def used_files(cfg: ExperimentConfig) -> set[Path]:
    """Every cache file ``cfg`` reads: its node models (every cell, node and seed), their logits, its dataset."""
    from raykd.nodes import node_path, teacher_path
    from raykd.teacher.cache import logits_key  # the core (torch) loads after parsing

    used = set[Path]()
    for cell in study_cells(cfg):
        c = cell.config
        for seed in c.seeds:
            for node in c.node_ids():
                used.add(node_path(c, node, seed))
                if node_path(c, node, seed).is_file():  # the logits' key is over the model file's content
                    used.add(c.nodes.cache_dir / "logits" / f"{logits_key(c, node, seed)}.npy")
            if c.federated.teacher is not None:
                used.add(teacher_path(c, seed))
        used |= dataset_files(c)
    return {p.resolve() for p in used}


def dataset_files(cfg: ExperimentConfig) -> set[Path]:
    """The dataset cache files ``cfg`` reads (built-in MNIST-1D, or an image folder keyed by its content)."""
    from raykd.data.sources import folder_digest, split_files

    folder = cfg.nodes.cache_dir / "datasets"
    if cfg.data.dataset == "mnist1d":
        return {folder / "mnist1d.npz"}
    if cfg.data.dataset == "imagefolder" and cfg.data.root is not None and cfg.data.root.is_dir():
        key = folder_digest(cfg.data.root, split_files(cfg.data.root, "train") + split_files(cfg.data.root, "test"))
        return set(folder.glob(f"imagefolder-{key[:24]}-*"))
    return set()


def entries(cache_dir: Path, configs: list[ExperimentConfig]) -> list[Entry]:
    """Every file in ``cache_dir`` (lock and temporary files left out), oldest first."""
    used = set[Path]().union(*(used_files(c) for c in configs)) if configs else set[Path]()
    now, found = time.time(), []
    for path in sorted(p for p in cache_dir.rglob("*") if p.is_file() and not p.name.startswith(".")):
        if path.suffix == ".lock":
            continue
        kind = path.relative_to(cache_dir).parts[0] if path.parent != cache_dir else "other"
        known = bool(configs) and kind in KEYED
        stat = path.stat()
        age = (now - stat.st_mtime) / 86400
        found.append(Entry(path, kind, stat.st_size, age, path.resolve() in used if known else None))
    return sorted(found, key=lambda e: -e.age_days)


def size_text(size: float) -> str:
    """``size`` bytes in the largest unit that keeps it at 1 or more (up to GiB)."""
    units = ["B", "KiB", "MiB", "GiB"]
    while size >= 1024 and len(units) > 1:
        size, units = size / 1024, units[1:]
    return f"{size:.0f} B" if units[0] == "B" else f"{size:.1f} {units[0]}"


def show(found: list[Entry], cache_dir: Path) -> None:
    """One line per entry: kind, size, age, used (yes / no / ? when no config was given or it cannot tell)."""
    print(f"{'kind':<10} {'size':>10} {'age':>8}  used  file (in {cache_dir})")
    for e in found:
        used = "?" if e.used is None else ("yes" if e.used else "no")
        name = e.path.relative_to(cache_dir)
        print(f"{e.kind:<10} {size_text(e.size):>10} {e.age_days:>7.1f}d  {used:<4}  {name}")
    print(f"{len(found)} entries, {size_text(sum(e.size for e in found))}")


def prune(found: list[Entry], yes: bool) -> int:
    """Remove the entries no given config uses (only with ``yes``); how many it removed or would remove."""
    unused = [e for e in found if e.used is False]
    for e in unused:
        if yes:
            e.path.unlink(missing_ok=True)
        print(f"{'removed' if yes else 'would remove'} {e.kind} {e.path.name} ({size_text(e.size)})")
    total = size_text(sum(e.size for e in unused))
    verb = "removed" if yes else "would remove (dry run; add --yes to remove)"
    print(f"{verb}: {len(unused)} unused entries, {total}")
    return len(unused)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raykd.cache",
        description="Show what a raykd cache holds; remove the entries none of the given configs uses.",
        epilog="example:\n  python -m raykd.cache prune --config tune_configs/default.yaml --yes",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["list", "prune"], help="list entries, or remove unused ones")
    parser.add_argument("--config", type=Path, action="append", default=[], help="a config whose entries to keep")
    parser.add_argument("--cache-dir", type=Path, help="the cache (default: the first config's nodes.cache_dir)")
    parser.add_argument("--yes", action="store_true", help="prune: remove for real (without it: a dry run)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: 0 done, 2 bad input (one line)."""
    args = build_parser().parse_args(argv)

    def body() -> int:
        configs = [absolute_paths(load_config(path)) for path in args.config]
        if args.action == "prune" and not configs:
            raise ConfigError("--config: prune needs the configs whose entries to keep (repeat --config)")
        cache_dir = args.cache_dir or (configs[0].nodes.cache_dir if configs else None)
        if cache_dir is None or not cache_dir.is_dir():
            raise ConfigError(f"--cache-dir: {cache_dir} is not a folder; give a cache folder or a --config")
        found = entries(cache_dir.resolve(), configs)
        if args.action == "list":
            show(found, cache_dir.resolve())
        else:
            prune(found, args.yes)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
