"""A student logged to MLflow ships: its user's module travels as code, its requirements and own metrics and
setting are recorded, its name says sweep and row, and it loads in a process that has neither raykd nor the
module on its path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import mlflow
import pytest
import torch
import yaml
from torch import nn

import raykd
from raykd.config import ModelSpec
from raykd.data.preprocess import IDENTITY
from raykd.export import model_dependencies
from raykd.models import build_model
from raykd.students import load_student, read_student, save_student
from raykd.tracking import log_student_model
from tests.conftest import student_data

USER_MODULE = """
from math import prod

from torch import nn


class Residual(nn.Module):
    def __init__(self, size: int, classes: int) -> None:
        super().__init__()
        self.inner, self.out = nn.Linear(size, size), nn.Linear(size, classes)

    def forward(self, x):
        x = x.flatten(1)
        return self.out(x + self.inner(x).relu())


def residual(num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    return Residual(prod(input_shape), num_classes)
"""


@pytest.fixture
def user_student(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A student file of a model class from a user's own module (in the working folder, as the CLI finds it)."""
    name = f"user_net_{tmp_path.name}"
    (tmp_path / "project").mkdir()
    (tmp_path / "project" / f"{name}.py").write_text(USER_MODULE)
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.syspath_prepend(str(tmp_path / "project"))
    spec = ModelSpec(name=f"{name}:residual")
    model = build_model(spec, (1, 6), 3)
    info = {"label": "kd", "setting": {"temperature": 4.0, "alpha": 0.5}, "seed": 1}
    metrics = {"val_acc": 0.75, "test_acc": 0.625, "test_acc_before": 0.5}
    return save_student(
        tmp_path / "student.pt", model, spec, student_data((1, 6), 3, IDENTITY), metrics=metrics, **info
    )


def test_a_logged_student_carries_its_code_metrics_setting_and_loads_without_raykd(
    tmp_path: Path, user_student: Path
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("models")
    with mlflow.start_run():
        log_student_model("mysweep-kd", user_student)
    (logged,) = mlflow.search_logged_models(output_format="list")
    module = ModelSpec(**read_student(user_student)["model"]).name.split(":")[0]
    assert logged.name == "mysweep-kd"
    metrics = {m.key.removeprefix("mysweep-kd."): m.value for m in logged.metrics}
    assert metrics == {"val_acc": 0.75, "test_acc": 0.625, "test_acc_before": 0.5}
    assert logged.params == {"seed": "1", "temperature": "4.0", "alpha": "0.5"}
    assert mlflow.MlflowClient(uri).get_registered_model("mysweep-kd").latest_versions[0].version == 1
    folder = Path(mlflow.artifacts.download_artifacts(f"models:/{logged.model_id}", dst_path=str(tmp_path / "m")))
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["metadata"]["setting"] == {"temperature": 4.0, "alpha": 0.5}
    assert mlmodel["flavors"]["python_function"]["code"] == "code"
    assert [p.name for p in (folder / "code").iterdir()] == [f"{module}.py"]  # the user's module, nothing else
    requirements = (folder / "requirements.txt").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in requirements
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = (
        "import json, sys, mlflow, mlflow.pytorch, torch\n"
        f"mlflow.set_tracking_uri({uri!r})\n"
        "model = mlflow.pytorch.load_model('models:/mysweep-kd/latest')\n"
        "torch.manual_seed(0)\n"
        "print(json.dumps([type(model).__name__, 'raykd' in sys.modules, model(torch.randn(2, 1, 6)).tolist()]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", check], cwd=elsewhere, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    name, imported_raykd, outputs = json.loads(done.stdout.strip().splitlines()[-1])
    student = load_student(user_student)
    torch.manual_seed(0)
    expected = student(torch.randn(2, 1, 6)).tolist()
    assert (name, imported_raykd) == ("Residual", False)
    assert torch.allclose(torch.tensor(outputs), torch.tensor(expected), atol=1e-6)


def test_dependencies_name_installed_distributions_and_refuse_a_script_class() -> None:
    import torchvision

    requirements, code, why_not = model_dependencies(torchvision.models.resnet18(num_classes=3))
    assert f"torchvision=={version('torchvision')}" in requirements and code == [] and why_not == ""

    class Script(nn.Module):
        pass

    from raykd.lm.gpt import GPT

    assert model_dependencies(GPT(16, 4, 8, 1, 2))[1] == [str(Path(raykd.__file__).parent)]
    Script.__module__ = "__main__"  # as a class defined in a user's script is
    _, code, why_not = model_dependencies(nn.Sequential(Script()))
    assert code == [] and why_not.startswith("its class is defined in __main__")
