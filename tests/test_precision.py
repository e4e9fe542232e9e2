"""Data on the models' device and ``train.precision``, on the CPU: same results as before, clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raykd.config import DataConfig, ModelSpec, validate_config
from raykd.config.base import TrainConfig
from raykd.data import build_augment
from raykd.engine import TransferBatches, fit, seed_everything
from raykd.errors import ConfigError
from raykd.methods.kd import KnowledgeDistillation
from raykd.models import build_model
from raykd.nodes import train_key
from raykd.precision import Precision, serving_precision
from raykd.teacher.inline import InlineTeacher

# Epoch losses of the run below, recorded with the engine as it was before data moved to the device
# (batches built on the CPU and copied per step).
BEFORE = [
    {"loss": 0.714331865310669, "ce": 1.3757857084274292, "kd": 0.05287804454565048},
    {"loss": 0.7445822954177856, "ce": 1.4113340377807617, "kd": 0.07783065736293793},
]


def _kd_run(
    move_first: bool, precision: str = "fp32"
) -> tuple[list[dict[str, float]], list[torch.Tensor], TransferBatches]:
    """Two epochs of augmented KD with a labelled share and a pool; ``move_first`` puts the data on the CPU device
    explicitly before ``fit`` (which does it again), as a GPU run puts it on the GPU."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 3, 8, 8, generator=g), torch.randint(0, 4, (96,), generator=g)
    seed_everything(3)
    teacher = build_model(ModelSpec(name="cnn2d", width=4), (3, 8, 8), 4)
    student = build_model(ModelSpec(name="cnn2d", width=4), (3, 8, 8), 4)
    augment = build_augment(DataConfig(augment=["random_crop", "horizontal_flip"]).augment, 5)
    batches = TransferBatches(x, y, np.arange(40), np.arange(40, 96), 16, True, 7, augment)
    if move_first:
        batches.use_device(torch.device("cpu"))
    losses: list[dict[str, float]] = []
    teacher_logits = InlineTeacher([teacher])
    on_epoch = lambda epoch, means: losses.append(means)  # noqa: E731
    fit([student], KnowledgeDistillation(), batches, 2, 1e-2, 0.0, teacher_logits, on_epoch, precision)
    return losses, [p.detach().clone() for p in student.parameters()], batches


def test_device_resident_data_on_the_cpu_gives_identical_results() -> None:
    (losses, weights, batches), (moved_losses, moved_weights, _) = _kd_run(False), _kd_run(True)
    assert losses == moved_losses  # bit for bit
    # as before the change (within float noise: a sum's order depends on the machine's thread count)
    assert losses == [pytest.approx(epoch, rel=1e-5) for epoch in BEFORE]
    assert all(torch.equal(a, b) for a, b in zip(weights, moved_weights, strict=True))
    assert batches.x.device.type == "cpu" and batches.augment is not None
    assert batches.augment.generator.device.type == "cpu"


def test_batches_on_a_device_keep_row_indices_on_the_cpu() -> None:
    x, y = torch.arange(20.0).unsqueeze(1), torch.arange(20) % 4
    batches = TransferBatches(x, y, np.arange(20), None, 5, True, 0)
    batches.use_device(torch.device("cpu"))
    for batch in batches:
        assert batch.index.device.type == "cpu" and torch.equal(batch.x.squeeze(1).long(), batch.index)


def test_bf16_trains_on_the_cpu_close_to_fp32() -> None:
    fp32, _, _ = _kd_run(False)
    bf16, weights, _ = _kd_run(False, precision="bf16")
    assert all(np.isfinite(v) for epoch in bf16 for v in epoch.values())
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.05)  # bf16 keeps 8 bits of mantissa
    assert all(w.dtype == torch.float32 for w in weights)  # autocast: the weights stay float32


def test_fp16_on_the_cpu_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^train.precision: fp16 needs a CUDA device .* allowed there: fp32, bf16$"):
        Precision("fp16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="train.precision: fp16"):
        _kd_run(False, precision="fp16")
    with pytest.raises(ConfigError, match="allowed: fp32, bf16, fp16"):
        Precision("fp8", torch.device("cpu"))


@pytest.mark.parametrize("section", ["nodes", "transfer"])
def test_config_refuses_fp16_without_a_reserved_gpu(section: str) -> None:
    base = {"name": "x", "seeds": [0], "methods": [{"name": "kd"}], section: {"train": {"precision": "fp16"}}}
    with pytest.raises(ConfigError, match=rf"^{section}.train.precision: fp16 needs a GPU .*allowed: fp32, bf16"):
        validate_config(base)
    assert validate_config({**base, "tune": {"gpus_per_trial": 0.5}})  # the GPU is checked when training starts
    assert validate_config({**base, section: {"train": {"precision": "bf16"}}})


def test_fp32_is_plain_pytorch_and_keeps_node_keys() -> None:
    mixed = Precision("fp32", torch.device("cpu"))
    assert mixed.scaler is None and not mixed.channels_last
    x = torch.randn(2, 3, 4, 4)
    assert mixed.inputs(x) is x
    assert train_key(TrainConfig()) == TrainConfig().model_dump(mode="json", exclude={"precision"})
    assert train_key(TrainConfig(precision="bf16"))["precision"] == "bf16"


def test_server_inference_precision_follows_the_logits_dtype_on_cuda_only() -> None:
    assert serving_precision(torch.float16, torch.device("cpu")).name == "fp32"
    assert serving_precision(torch.float16, torch.device("cuda")).name == "fp16"
    assert serving_precision(torch.bfloat16, torch.device("cuda")).channels_last
    assert serving_precision(torch.float32, torch.device("cuda")).name == "fp32"
