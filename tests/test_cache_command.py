"""``python -m raykd.cache``: entries listed with kind, size, age and use; prune removes only unused ones, and only
with ``--yes``."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raykd.cache import main
from raykd.config import validate_config
from raykd.nodes import node_path
from tests.conftest import tiny_raw


def _plant(cache: Path, name: str, size: int) -> Path:
    path = cache / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    return path


def test_prune_removes_only_what_no_config_uses_and_only_with_yes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cache = tmp_path / "cache"
    raw = tiny_raw(tmp_path, cache)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    cfg = validate_config(raw)
    used = [_plant(cache, "datasets/mnist1d.npz", 10), node_path(cfg, 1, 0)]
    used[1].parent.mkdir(parents=True, exist_ok=True)
    used[1].write_bytes(b"weights")
    stale = [
        _plant(cache, "nodes/node1-seed0-0123456789abcdef.pt", 2048),
        _plant(cache, "datasets/imagefolder-old-32px.npz", 5),
    ]
    unknown = _plant(cache, "tokenizers/bpe-abc-512.json", 3)

    assert main(["list", "--config", str(config)]) == 0
    lines = {line.split()[-1]: line.split() for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert lines["nodes/node1-seed0-0123456789abcdef.pt"][:3] == ["nodes", "2.0", "KiB"]
    assert {name: row[4] for name, row in lines.items()} == {
        "datasets/mnist1d.npz": "yes",
        str(used[1].relative_to(cache)): "yes",
        "nodes/node1-seed0-0123456789abcdef.pt": "no",
        "datasets/imagefolder-old-32px.npz": "no",
        "tokenizers/bpe-abc-512.json": "?",
    }

    assert main(["prune", "--config", str(config)]) == 0  # a dry run: nothing removed
    assert "would remove (dry run; add --yes to remove): 2 unused entries" in capsys.readouterr().out
    assert all(p.is_file() for p in [*used, *stale, unknown])
    assert main(["prune", "--config", str(config), "--yes"]) == 0
    assert "removed: 2 unused entries" in capsys.readouterr().out
    assert all(p.is_file() for p in [*used, unknown]) and not any(p.exists() for p in stale)


def test_prune_without_a_config_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["prune", "--cache-dir", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err
        == "raykd: error: --config: prune needs the configs whose entries to keep (repeat --config)\n"
    )
