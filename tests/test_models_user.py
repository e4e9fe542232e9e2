"""A user's own model, named ``package.module:callable`` in the YAML, is built, checked and trained like any other."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from raykd.config import validate_config
from raykd.errors import ConfigError
from raykd.models import build_model
from raykd.nodes import load_node, prepare
from raykd.students import load_student, save_student
from tests.conftest import tiny_raw

USER_MODULE = """
from math import prod

from torch import nn


def tiny(num_classes: int, input_shape: tuple[int, ...], hidden: int = 8) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), hidden), nn.ReLU(), nn.Linear(hidden, num_classes))


def wrong(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(prod(input_shape), 3))


def broken(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    raise ValueError("boom")


def not_a_model(num_classes: int, input_shape: tuple[int, ...]) -> int:
    return 42
"""


@pytest.fixture
def module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user model module in the working folder, under a name no other test imports."""
    name = f"user_models_{tmp_path.name}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    return name


def nodes(tmp_path: Path, model: object, **more: object) -> dict[str, object]:
    return {"cache_dir": str(tmp_path / "cache"), "train": {"epochs": 1}, "model": model, **more}


def test_user_model_gets_shape_classes_and_kwargs_and_trains_beside_a_registry_teacher(
    tmp_path: Path, module: str
) -> None:
    spec = {"name": f"{module}:tiny", "kwargs": {"hidden": 5}}
    cfg = validate_config(tiny_raw(tmp_path, tmp_path, nodes=nodes(tmp_path, spec, models={1: "mlp"})))
    setup = prepare(cfg, 0)
    student, teacher = load_node(cfg, setup, 0, 0), load_node(cfg, setup, 1, 0)
    assert student[1].out_features == 5 and student[3].out_features == 10
    assert type(student[1]) is torch.nn.Linear and len(teacher) != len(student)  # different architectures
    path = save_student(
        tmp_path / "student.pt",
        student,
        cfg.nodes.model,
        setup.dataset,
        seed=0,
    )
    x = setup.dataset.test_x[:50]
    assert torch.equal(load_student(path)(x), student.eval()(x))  # a custom model rebuilds from its module


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{m}:wrong", "nodes.model: model '{m}:wrong' gave output (2, 3) for a batch of 2; expected (2, 10) logits"),
        ("{m}:broken", "nodes.model: '{m}:broken' raised ValueError: boom"),
        ("{m}:not_a_model", "nodes.model: '{m}:not_a_model' returned int, not a torch.nn.Module"),
        ("{m}:absent", "nodes.model.name: module '{m}' has no 'absent'"),
        ("no_such_module:net", "nodes.model.name: cannot import module 'no_such_module'"),
        ({"name": "{m}:tiny", "width": 4}, "nodes.model: width/depth are for registry models"),
        ({"name": "mlp", "kwargs": {"hidden": 4}}, "nodes.model.kwargs: registry model 'mlp' takes width and depth"),
        ("vgg99", "nodes.model.name = 'vgg99': unknown model 'vgg99'; allowed: mlp, cnn1d, cnn2d, resnet, gpt, a"),
    ],
)
def test_a_model_that_cannot_be_built_is_one_line(tmp_path: Path, module: str, spec: object, expected: str) -> None:
    spec = {**spec, "name": spec["name"].format(m=module)} if isinstance(spec, dict) else spec.format(m=module)
    cfg = validate_config(tiny_raw(tmp_path, tmp_path, nodes=nodes(tmp_path, spec)))
    with pytest.raises(ConfigError) as err:
        build_model(cfg.nodes.model, (1, 40), 10)
    assert str(err.value).startswith(expected.format(m=module)) and "\n" not in str(err.value)


def test_config_does_not_import_the_model_registry() -> None:
    code = "import sys, raykd.config; assert 'raykd.models' not in sys.modules and 'torchvision' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
