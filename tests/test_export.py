"""A student ships: trainer-style checkpoints are read, a whole pickled model is one clean line, and a student
exports to ONNX and TorchScript files that give its outputs without raykd."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import raykd
from raykd.config import ModelSpec
from raykd.data.preprocess import array_record
from raykd.errors import ConfigError
from raykd.export import PREPROCESS_KEY, export_student, main
from raykd.models import build_model
from raykd.students import load_student, read_weights, save_student
from tests.conftest import student_data

SHAPE = (1, 8, 8)
RECORD = array_record(1 / 255, [0.5], [0.25])


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN student file (batch norm, pooling: layers an exporter must get right)."""
    torch.manual_seed(0)
    spec = ModelSpec(name="cnn2d", width=4)
    model = build_model(spec, SHAPE, 3)
    return save_student(
        tmp_path_factory.mktemp("export") / "student.pt", model, spec, student_data(SHAPE, 3, RECORD), seed=0
    )


@pytest.mark.parametrize("key", ["model_state_dict", "state_dict", "model"])
def test_trainer_style_checkpoints_are_read(tmp_path: Path, key: str) -> None:
    weights = build_model(ModelSpec(name="mlp", width=8), SHAPE, 3).state_dict()
    path = tmp_path / "trainer.pt"
    torch.save({key: weights, "epoch": 7, "optimizer_state_dict": {"state": {}, "param_groups": []}}, path)
    assert all(torch.equal(v, weights[k]) for k, v in read_weights(path, "nodes.model.checkpoint").items())


def test_a_whole_pickled_model_is_one_clean_line_saying_how_to_save_weights(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(build_model(ModelSpec(name="mlp", width=8), SHAPE, 3), path)
    with pytest.raises(ConfigError) as caught:
        read_weights(path, "nodes.model.checkpoint")
    message = str(caught.value)
    assert message.startswith(f"nodes.model.checkpoint: {path} holds a whole pickled model (torch.nn.")
    assert "torch.save(model.state_dict(), PATH)" in message
    assert "\n" not in message and "\x1b" not in message


def test_a_checkpoint_without_weights_names_its_keys(tmp_path: Path) -> None:
    path = tmp_path / "optimiser.pt"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(ConfigError, match=r"holds no state_dict \(its keys: epoch, optimizer\); expected"):
        read_weights(path, "nodes.model.checkpoint")


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_export_gives_the_students_outputs(student: Path, tmp_path: Path) -> None:
    out = export_student(student, "torchscript", tmp_path / "student.ts")
    extra = {f"{PREPROCESS_KEY}.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    x = torch.randn(5, *SHAPE)  # another batch size than the traced one
    assert torch.allclose(loaded(x), load_student(student)(x), atol=1e-6)
    assert json.loads(extra[f"{PREPROCESS_KEY}.json"]) == RECORD


def test_onnx_export_runs_in_onnxruntime_with_the_students_outputs(student: Path, tmp_path: Path) -> None:
    import onnx
    import onnxruntime

    assert main([str(student), "--format", "onnx", "--out", str(tmp_path / "student.onnx")]) == 0
    session = onnxruntime.InferenceSession(str(tmp_path / "student.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(5, *SHAPE)).astype(np.float32)
    (logits,) = session.run(None, {session.get_inputs()[0].name: x})
    expected = load_student(student)(torch.from_numpy(x)).detach().numpy()
    assert np.allclose(logits, expected, atol=1e-5)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "student.onnx")).metadata_props}
    assert json.loads(props[PREPROCESS_KEY]) == RECORD


def test_export_defaults_beside_the_student_and_refuses_unknown_formats(
    student: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert raykd.export_student(student, "torchscript") == student.with_name("student.torchscript.pt")
    with pytest.raises(ConfigError, match=r"^export --format: 'tflite' is not a format; allowed: onnx, torchscript$"):
        export_student(student, "tflite")
    assert main([str(student.with_name("absent.pt")), "--format", "onnx"]) == 2
    assert capsys.readouterr().err.startswith("raykd: error: student file")
