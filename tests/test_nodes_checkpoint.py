"""Nodes that arrive pre-trained: a checkpoint is the node's model (evaluated, not trained), init is fine-tuned."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import ExperimentConfig, ModelSpec, validate_config
from raykd.data.preprocess import IDENTITY
from raykd.engine import accuracy
from raykd.errors import ConfigError
from raykd.models import build_model
from raykd.nodes import check_checkpoints, load_node, node_key, node_path, prepare, read_node
from raykd.students import load_student, read_student, read_weights, save_student
from tests.conftest import student_data, tiny_raw

SHAPE = (1, 40)
StateDict = dict[str, torch.Tensor]


def weights(tmp_path: Path, width: int = 16, seed: int = 123) -> Path:
    """A user's file: a plain state_dict of an MLP (width ``width``) for MNIST-1D."""
    torch.manual_seed(seed)
    path = tmp_path / f"mlp{width}-{seed}.pt"
    torch.save(build_model(ModelSpec(name="mlp", width=width), SHAPE, 10).state_dict(), path)
    return path


def config(tmp_path: Path, cache_dir: Path, node1: dict[str, str], lr: float = 1e-2) -> ExperimentConfig:
    train = {"epochs": 2, "lr": lr}
    raw = tiny_raw(tmp_path, cache_dir, nodes={"cache_dir": str(cache_dir), "train": train, "model": "mlp"})
    raw["nodes"]["models"] = {1: {"name": "mlp", "width": 16, **node1}}
    return validate_config(raw)


def as_node_file(tmp_path: Path, path: Path) -> Path:
    node_file = tmp_path / "node-file.pt"
    torch.save({"state_dict": torch.load(path, weights_only=True), "meta": {"test_acc": 0.5}}, node_file)
    return node_file


def as_student_file(tmp_path: Path, path: Path) -> Path:
    model = build_model(ModelSpec(name="mlp", width=16), SHAPE, 10)
    model.load_state_dict(torch.load(path, weights_only=True))
    return save_student(
        tmp_path / "student-file.pt", model, ModelSpec(name="mlp", width=16), student_data(SHAPE, 10, IDENTITY)
    )


def as_state_dict(tmp_path: Path, path: Path) -> Path:
    return path


@pytest.mark.parametrize("form", [as_state_dict, as_node_file, as_student_file], ids=["state_dict", "node", "student"])
def test_checkpoint_node_is_measured_not_trained_and_its_file_untouched(
    tmp_path: Path, cache_dir: Path, form: Callable[[Path, Path], Path]
) -> None:
    path = form(tmp_path, weights(tmp_path))
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns
    cfg = config(tmp_path, cache_dir, {"checkpoint": str(path)})
    setup = prepare(cfg, 0)
    model = load_node(cfg, setup, 1, 0)
    expected = read_weights(path, "test")
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())  # not trained
    meta = read_node(node_path(cfg, 1, 0))["meta"]
    assert meta["weights_from"] == "checkpoint" and meta["weights_file"] == str(path.resolve())
    assert meta["test_acc"] == accuracy(model, setup.dataset.test_x, setup.dataset.test_y)
    assert {"local_val_acc", "train_samples", "train_seconds"} <= meta.keys()
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime


def test_init_node_trains_from_the_file(tmp_path: Path, cache_dir: Path) -> None:
    path = weights(tmp_path)
    start = torch.load(path, weights_only=True)
    tiny_steps = config(tmp_path, cache_dir, {"init": str(path)}, lr=1e-9)
    tuned = load_node(tiny_steps, prepare(tiny_steps, 0), 1, 0).state_dict()
    assert all(torch.allclose(v, start[k], atol=1e-6) for k, v in tuned.items())  # it started from the file ...
    assert not all(torch.equal(v, start[k]) for k, v in tuned.items())  # ... and trained
    scratch = config(tmp_path, cache_dir, {}, lr=1e-9)
    fresh = load_node(scratch, prepare(scratch, 0), 1, 0).state_dict()
    assert not torch.allclose(fresh["1.weight"], tuned["1.weight"], atol=1e-3)
    assert read_node(node_path(tiny_steps, 1, 0))["meta"]["weights_from"] == "init"
    assert node_key(tiny_steps, 1, 0) != node_key(scratch, 1, 0)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: {**s, "1.weight": torch.zeros(32, 40)}, "key '1.weight' is (32, 40) in the file but (16, 40) in"),
        (lambda s: {k: v for k, v in s.items() if k != "5.bias"}, "1 missing keys (5.bias)"),
        (lambda s: {**s, "extra": torch.zeros(1)}, "1 unexpected keys (extra)"),
    ],
)
def test_weights_that_do_not_fit_are_one_line_before_any_work(
    tmp_path: Path, cache_dir: Path, change: Callable[[StateDict], StateDict], expected: str
) -> None:
    path = weights(tmp_path)
    torch.save(change(torch.load(path, weights_only=True)), path)
    cfg = config(tmp_path, cache_dir, {"init": str(path)})
    with pytest.raises(ConfigError) as err:
        check_checkpoints(cfg, SHAPE, 10)
    message = str(err.value)
    assert message.startswith(f"nodes.models.1.init: {path.resolve()} does not fit the model: ") and "\n" not in message
    assert expected in message


@pytest.mark.parametrize(
    ("node1", "expected"),
    [
        ({"checkpoint": "absent.pt"}, "nodes.models[1].checkpoint = 'absent.pt': no such file (expected a state_dict"),
        ({"checkpoint": "{w}", "init": "{w}"}, "give checkpoint (use the weights as they are) or init"),
    ],
)
def test_bad_start_files_are_config_errors(tmp_path: Path, node1: dict[str, str], expected: str) -> None:
    path = str(weights(tmp_path))
    with pytest.raises(ConfigError, match=r"^nodes\.models(\[1\]|\.1)") as err:
        config(tmp_path, tmp_path, {k: v.format(w=path) for k, v in node1.items()})
    assert expected in str(err.value)


@pytest.mark.parametrize(("content", "expected"), [({"a": 1}, "holds no state_dict"), (b"junk", "not a torch file")])
def test_unreadable_weights_are_one_line(tmp_path: Path, content: object, expected: str) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(ConfigError, match=f"^nodes.models.1.checkpoint: {path} .*{expected}") as err:
        check_checkpoints(config(tmp_path, tmp_path, {"checkpoint": str(path)}), SHAPE, 10)
    assert "\n" not in str(err.value)


def test_key_follows_the_file_content_not_its_name(tmp_path: Path) -> None:
    path = weights(tmp_path)
    cfg = config(tmp_path, tmp_path, {"checkpoint": str(path)})
    key = node_key(cfg, 1, 0)
    moved = shutil.copy2(path, tmp_path / "moved.pt")
    assert node_key(config(tmp_path, tmp_path, {"checkpoint": str(moved)}), 1, 0) == key
    old = path.stat()
    torch.save(torch.load(weights(tmp_path, seed=7), weights_only=True), path)  # edited in place, same size
    os.utime(path, ns=(old.st_atime_ns, old.st_mtime_ns))  # even with the old mtime (racy edit)
    assert node_key(cfg, 1, 0) != key
    assert node_key(cfg, 1, 0) != node_key(config(tmp_path, tmp_path, {"init": str(path)}), 1, 0)


def test_student_file_round_trip_reproduces_outputs_and_accuracy(tmp_path: Path, cache_dir: Path) -> None:
    cfg = config(tmp_path, cache_dir, {})
    setup = prepare(cfg, 0)
    student = load_node(cfg, setup, 0, 0).eval()
    data = setup.dataset
    info = {"label": "kd", "setting": {"temperature": 4.0}, "seed": 0, "test_acc": np.float64(0.5), "gain": 0.1}
    path = save_student(tmp_path / "out" / "student.pt", student, cfg.nodes.model, data, **info)
    loaded = load_student(path)
    assert not loaded.training and torch.equal(loaded(data.test_x), student(data.test_x))
    assert accuracy(loaded, data.test_x, data.test_y) == accuracy(student, data.test_x, data.test_y)
    about = read_student(path)
    assert about["info"] == {**info, "test_acc": 0.5} and about["model"]["name"] == "mlp"
    assert about["input_shape"] == [1, 40] and about["num_classes"] == 10 and "state_dict" not in about
    with pytest.raises(ConfigError, match="not a raykd student file"):
        read_student(node_path(cfg, 0, 0))
