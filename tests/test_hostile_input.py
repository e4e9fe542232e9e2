"""Hostile but fair input: non-finite numbers, late cross-field rules, unusable paths and names, batches that
cannot fit. Each is one line naming the field, exit status 2, and nothing written in the working folder."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pydantic import BaseModel

from raykd.config import ExperimentConfig, check_paths, validate_config
from raykd.data import check_dataset, load_dataset
from raykd.engine import TransferBatches, fit
from raykd.errors import ConfigError
from raykd.files import MAX_COMPONENT, check_folder, held_writes, safe_component, write_atomic
from raykd.methods.ce import CrossEntropy
from raykd.methods.schema import METHOD_KNOBS

REPO = Path(__file__).resolve().parents[1]
#: A small sweep whose every written path is left at its default, in the working folder.
SMALL = {
    "name": "hostile",
    "seeds": [0],
    "partition": {"scheme": "dirichlet", "num_nodes": 3, "alpha": 0.5},
    "nodes": {"train": {"epochs": 1}},
    "transfer": {"train": {"epochs": 1}},
    "methods": [{"name": "ce", "label": "no-kd"}, {"name": "kd", "temperature": [1, 4], "alpha": 0.5}],
}
ROW = {"name": "ce"}


def _float_fields(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every float key of the schema, by dotted path (sections walked, method rows apart)."""
    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found += _float_fields(annotation, f"{prefix}{name}.")
        elif annotation is float or float in get_args(annotation):
            found.append(f"{prefix}{name}")
    return found


def _knob_rows() -> list[tuple[str, str, float]]:
    """(method, knob, default) for every float knob of every built-in method."""
    return [
        (method, knob.name, knob.default)
        for method, knobs in METHOD_KNOBS.items()
        for knob in knobs.knobs
        if float in (knob.annotation, *get_args(knob.annotation))
    ]


def _raw(**sections: Any) -> dict[str, Any]:
    raw = {"methods": [ROW]}
    raw.update(sections)
    return raw


def _set(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    node = raw
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return raw


def test_the_schema_has_float_keys_and_methods_float_knobs() -> None:
    """The walk below must see the floats it is meant to check (else the tests after it check nothing)."""
    fields = _float_fields(ExperimentConfig)
    assert {"transfer.train.lr", "data.val_fraction", "teacher.batch_wait_ms", "federated.local.lr"} <= set(fields)
    assert {"kd.temperature", "kd.alpha", "dpkd.alpha"} <= {f"{method}.{knob}" for method, knob, _ in _knob_rows()}


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("key", _float_fields(ExperimentConfig))
def test_every_float_key_refuses_non_finite_numbers(key: str, value: float) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_set(_raw(), key, value))
    assert str(err.value).startswith(f"{key} = ") and "finite number" in str(err.value), err.value


@pytest.mark.parametrize(("method", "knob", "default"), _knob_rows(), ids=[f"{m}.{k}" for m, k, _ in _knob_rows()])
def test_every_float_knob_refuses_non_finite_numbers(method: str, knob: str, default: float) -> None:
    for value in (math.inf, [default, math.nan]):  # a scalar, and a grid axis whose second point is not finite
        with pytest.raises(ConfigError) as err:
            validate_config(_raw(methods=[{"name": method, knob: value}]))
        assert str(err.value).startswith(f"methods[0].{knob} = ") and "finite number" in str(err.value), err.value


# (raw config changes, text the one-line message must contain)
CROSS_FIELD = [
    ({"data": {"val_fraction": 0.4, "pool_fraction": 0.6}}, "data.pool_fraction: 0.6 with data.val_fraction 0.4"),
    ({"seeds": [-1]}, "seeds[0] = -1: Input should be greater than or equal to 0"),
    ({"seeds": [0, 2**32]}, "seeds[1] = 4294967296: Input should be less than 4294967296"),
    ({"seeds": [0, 1, 0]}, "seeds: 0 is listed twice"),
    ({"data": {"dataset": "fake", "fake_samples": 100, "fake_classes": 80}}, "data.fake_classes: 80 classes are too"),
    (
        {"tune": {"select_on": "local_val_acc"}, "partition": {"local_val_fraction": 0}},
        "tune.select_on: local_val_acc needs a local validation split",
    ),
    ({"transfer": {"student": 0, "teachers": [1, 1]}}, "transfer.teachers: node 1 is listed twice"),
    ({"transfer": {"student": 4, "teachers": [1]}}, "transfer.student: node 4 does not exist; allowed: 0..3"),
    ({"name": "../../elsewhere"}, "name = '../../elsewhere': not a plain folder name"),
    ({"name": "a\0b"}, "name = 'a\\x00b': not a plain folder name"),
    ({"name": "n" * (MAX_COMPONENT + 1)}, "not a plain folder name; allowed: 1..100"),
    ({"name": ""}, "name = '': not a plain folder name"),
    ({"methods": [{"name": "ce", "label": "../up"}]}, "methods[0].label = '../up': Input should be 1..100 letters"),
    ({"methods": [{"name": "ce", "label": "kd(T=4)"}]}, "methods[0].label = 'kd(T=4)'"),
    ({"axes": {"d/x": {"a": {"partition.alpha": 1}}}}, "axes.d/x: 'd/x' is not a plain axis or variant name"),
    ({"axes": {"d": {"a\0": {"partition.alpha": 1}}}}, "axes.d: 'a\\x00' is not a plain axis or variant name"),
]


@pytest.mark.parametrize(("changes", "expected"), CROSS_FIELD, ids=[e.split(":")[0] for _, e in CROSS_FIELD])
def test_cross_field_rules_are_one_line_at_validation(changes: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate_config(_raw(**changes))
    assert expected in str(err.value) and "\n" not in str(err.value), err.value


def test_the_largest_seed_and_its_derived_seeds_still_draw() -> None:
    """Seeds up to 2**32 - 1 are allowed, so seeds derived from them (seed + 1, seed * 1000 + node) must work."""
    from raykd.engine import seed_everything
    from raykd.nodes import prepare

    cfg = validate_config(_raw(seeds=[2**32 - 1], data={"dataset": "digits"}, nodes={"model": "mlp"}))
    setup = prepare(cfg, 2**32 - 1)
    assert len(setup.nodes) == cfg.partition.num_nodes and len(setup.splits.pool) > 0
    seed_everything((2**32 - 1) * 1000 + 3)


@pytest.mark.parametrize(
    ("partition", "expected"),
    [
        ({"scheme": "iid", "num_nodes": 1000, "min_samples": 1}, "each needs 3 (partition.min_samples 1, and a local"),
        ({"scheme": "iid", "num_nodes": 500}, "samples fit at most"),
    ],
    ids=["no-local-validation", "too-small"],
)
def test_partitions_too_fine_are_refused_with_the_count_that_fits(
    tmp_path: Path, partition: dict[str, Any], expected: str
) -> None:
    cfg = validate_config(_raw(data={"dataset": "digits"}, partition=partition))
    with pytest.raises(ConfigError) as err:
        check_dataset(cfg, load_dataset(cfg.data, tmp_path))
    message = str(err.value)
    assert message.startswith("partition.num_nodes: iid over") and expected in message, message
    fits = int(message.split("fit at most ")[1].split(" ")[0])
    fitting = cfg.model_copy(update={"partition": cfg.partition.model_copy(update={"num_nodes": fits})})
    check_dataset(fitting, load_dataset(cfg.data, tmp_path))  # the count it names does fit


# --------------------------------------------------------------------------------------------- paths and names


def test_safe_component_stays_in_its_folder_is_bounded_and_keeps_names_apart(tmp_path: Path) -> None:
    texts = ["../../elsewhere", "..", ".", "", "a/b", "a_b", "a b", "a\0b", "x" * 500, "x" * 501, "/etc/passwd"]
    parts = [safe_component(t) for t in texts]
    assert len(set(parts)) == len(texts)  # distinct names never share a folder
    for part in parts:
        assert 0 < len(part) <= MAX_COMPONENT and "/" not in part and "\0" not in part and not part.startswith(".")
        assert (tmp_path / part).resolve().parent == tmp_path.resolve()
        assert safe_component(part) == part  # already safe: kept as it is
    assert safe_component("kd-tuned") == "kd-tuned"


def test_held_writes_land_only_when_the_block_succeeds(tmp_path: Path) -> None:
    with pytest.raises(ConfigError), held_writes():
        write_atomic(tmp_path / "cache" / "a.npz", b"built")
        raise ConfigError("refused")
    assert list(tmp_path.iterdir()) == []
    with held_writes():
        with held_writes():
            write_atomic(tmp_path / "cache" / "a.npz", b"first")
            write_atomic(tmp_path / "cache" / "a.npz.sha256", lambda tmp: tmp.write_text("digest"))
        assert list(tmp_path.iterdir()) == []  # the outer block has not ended yet
        write_atomic(tmp_path / "cache" / "a.npz", b"second")
    assert (tmp_path / "cache" / "a.npz").read_bytes() == b"second"
    assert (tmp_path / "cache" / "a.npz.sha256").read_text() == "digest"


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("/proc/raykd/out", "cannot write in /proc"),
        ("FILE/sub", "cannot be a folder"),
        ("FILE", "cannot be a folder"),
        ("bad\0name", "is not a usable path"),
    ],
    ids=["proc", "file-above", "file", "nul"],
)
def test_check_folder_refuses_folders_that_cannot_be_written(tmp_path: Path, where: str, expected: str) -> None:
    (tmp_path / "FILE").write_text("a regular file")
    path = Path(where) if where.startswith("/") else Path(str(tmp_path) + "/" + where)
    with pytest.raises(ConfigError) as err:
        check_folder(path, "output_dir")
    assert str(err.value).startswith("output_dir: ") and expected in str(err.value), err.value


def test_check_paths_names_each_written_folder_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "FILE").write_text("")
    good = {"output_dir": str(tmp_path / "a" / "runs"), "nodes": {"cache_dir": str(tmp_path / "b" / "cache")}}
    check_paths(validate_config(_raw(**good, tracking={"uri": f"sqlite:///{tmp_path}/m.db"})))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE"]  # probed, not created
    bad = {
        "output_dir": _raw(output_dir=str(tmp_path / "FILE" / "runs")),
        "nodes.cache_dir": _raw(nodes={"cache_dir": "/proc/raykd"}),
        "tracking.uri": _raw(tracking={"uri": "sqlite:////proc/mlflow.db"}),
    }
    for field, raw in bad.items():
        with pytest.raises(ConfigError, match=f"^{field}: "):
            check_paths(validate_config(raw))


# --------------------------------------------------------------------------------------------- sizes


def test_a_batch_larger_than_the_data_is_capped_at_the_data() -> None:
    x, y = torch.randn(300, 1, 8), torch.arange(300) % 3
    batches = TransferBatches(x, y, np.arange(40), np.arange(100, 300), 10_000_000, False, seed=0)
    steps = list(batches)
    assert len(steps) == 1 and len(steps[0].x) == 400  # one full batch of each set, the smaller one cycled
    assert sorted(set(steps[0].index[200:].tolist())) == list(range(100, 300))  # the pool, each row once
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8, 3))
    fit([model], CrossEntropy(), TransferBatches(x, y, np.arange(300), None, 10**9, True, 0), 2, 1e-2)


# --------------------------------------------------------------------------------------------- the command lines


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    """SMALL as a config file, a tiny image folder beside it, a regular file, and an empty working folder."""
    config = tmp_path / "config" / "experiment.yaml"
    config.parent.mkdir()
    config.write_text(yaml.safe_dump(SMALL))
    (tmp_path / "FILE").write_text("")
    rng = np.random.default_rng(0)
    for split, count in (("train", 30), ("test", 5)):
        for cls in ("cat", "dog"):
            (tmp_path / "images" / split / cls).mkdir(parents=True)
            for i in range(count):
                image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))
                image.save(tmp_path / "images" / split / cls / f"{i}.png")
    work = tmp_path / "work"
    work.mkdir()
    return config, work


def _arguments(tmp_path: Path, config: Path, overrides: list[str]) -> list[str]:
    return ["--config", str(config), *[a for o in overrides for a in ("--set", o.replace("TMP", str(tmp_path)))]]


def _assert_refused(tmp_path: Path, work: Path, rc: int, stderr: str, expected: str) -> None:
    """Exit 2, one line naming the field, no traceback, and nothing new in the working folder or beside it."""
    assert rc == 2, stderr[-2000:]
    assert stderr.strip() == stderr.strip().splitlines()[-1] and "Traceback" not in stderr
    assert stderr.startswith("raykd: error: ") and expected.replace("TMP", str(tmp_path)) in stderr, stderr
    assert list(work.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == [
        "FILE",
        "config",
        "images",
        "work",
    ]


# (command, overrides, text the one line must contain); TMP is the test's folder
REFUSED = [
    ("raykd.tune", ["methods.1.temperature=.inf"], "methods[1].temperature = inf: Input should be a finite number"),
    ("raykd.tune", ["transfer.train.lr=.nan"], "transfer.train.lr = nan: Input should be a finite number"),
    ("raykd.tune", ["data.val_fraction=0.4", "data.pool_fraction=0.6"], "data.pool_fraction: 0.6 with"),
    ("raykd.tune", ["seeds=[0, 0]"], "seeds: 0 is listed twice"),
    ("raykd.tune", ["name=../../elsewhere"], "name = '../../elsewhere': not a plain folder name"),
    ("raykd.tune", ["output_dir=/proc/raykd-runs"], "output_dir: cannot write in /proc"),
    ("raykd.tune", ["nodes.cache_dir=TMP/FILE/cache"], "nodes.cache_dir: TMP/FILE/cache cannot be a folder"),
    ("federated.simulate", ["federated.local.lr=.inf"], "federated.local.lr = inf: Input should be a finite number"),
    ("federated.simulate", ["output_dir=TMP/FILE"], "output_dir: TMP/FILE cannot be a folder"),
]


@pytest.mark.parametrize(("module", "overrides", "expected"), REFUSED, ids=[f"{m}:{o[-1]}" for m, o, _ in REFUSED])
def test_refused_input_is_one_line_exit_2_and_writes_nothing(
    tmp_path: Path, module: str, overrides: list[str], expected: str
) -> None:
    config, work = _folders(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", module, *_arguments(tmp_path, config, overrides)],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    _assert_refused(tmp_path, work, done.returncode, done.stderr, expected)


#: A tiny image folder, cached as .npz under nodes.cache_dir (here .raykd_cache/ in the working folder) once built.
IMAGES = ["data.dataset=imagefolder", "data.root=TMP/images", "data.image_size=8", "partition.scheme=iid"]


@pytest.mark.parametrize("command", ["raykd.tune", "federated.simulate"])
@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["partition.num_nodes=40"], "partition.num_nodes: iid over 40 nodes"),
        (["partition.num_nodes=2", "partition.min_samples=5", "nodes.model=cnn1d"], "nodes.model: model 'cnn1d' needs"),
    ],
    ids=["partition", "model"],
)
def test_refused_input_that_needs_the_data_caches_nothing(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    overrides: list[str],
    expected: str,
) -> None:
    """The dataset is built to check the config against, but its cache entry is written only once every check
    has passed (run in this process: the command lines' start-up is paid by the tests above)."""
    from federated.simulate import main as simulate
    from raykd.tune import main as tune

    config, work = _folders(tmp_path)
    monkeypatch.chdir(work)
    rc = {"raykd.tune": tune, "federated.simulate": simulate}[command](_arguments(tmp_path, config, IMAGES + overrides))
    _assert_refused(tmp_path, work, rc, capsys.readouterr().err, expected)


def test_a_sweep_the_cluster_cannot_hold_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ray_session: object
) -> None:
    """The capacity check runs after the data checks (it needs Ray), and still before anything is written."""
    from raykd.tune import main as tune

    config, work = _folders(tmp_path)
    monkeypatch.chdir(work)
    overrides = [*IMAGES, "partition.num_nodes=2", "partition.min_samples=5", "nodes.model=mlp"]
    rc = tune(_arguments(tmp_path, config, [*overrides, "tune.cpus_per_trial=64"]))
    _assert_refused(tmp_path, work, rc, capsys.readouterr().err, "tune.cpus_per_trial: 64 CPUs per trial")
