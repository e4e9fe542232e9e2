"""What every config section shares (its rules), and what several sections hold: a training budget, a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded, and no number may be
    NaN or infinite (an infinite lr or temperature would only fail later, inside every trial)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


PrecisionName = Literal["fp32", "bf16", "fp16"]


class TrainConfig(Section):
    """A plain training budget (Adam)."""

    epochs: int = Field(30, ge=1, description="passes over the training rows")
    batch_size: int = Field(64, ge=1, description="rows per optimisation step")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (L2 penalty)")
    precision: PrecisionName = Field(
        "fp32",
        description="fp32; bf16 (autocast, CPU or CUDA); fp16 (autocast + grad scaler, CUDA only); reduced precision "
        "on CUDA also trains convolutional models in channels_last",
    )


class ModelSpec(Section):
    """An architecture (registry, torchvision or ``package.module:callable``), optionally with weights to start from.

    Names are checked when the model is built (raykd.models), so this schema imports no torch.
    """

    name: str = Field(
        description="registry name (mlp, cnn1d, cnn2d, resnet, gpt), a torchvision model, package.module:callable, "
        "or a pre-trained causal LM from local files: hf:FOLDER, gguf:FILE, gguf:smollm2"
    )
    width: int | None = Field(None, gt=0, description="channels / hidden units (model default if unset)")
    depth: int | None = Field(None, gt=0, description="layers (mlp) or ResNet depth 6n+2 (resnet)")
    kwargs: dict[str, Any] = Field(
        {}, description="keyword arguments of a package.module:callable or torchvision model"
    )
    checkpoint: Path | None = Field(None, description="pre-trained weights: the node's model is this file, not trained")
    init: Path | None = Field(None, description="weights to start from; the node is then trained (fine-tuned)")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("checkpoint", "init")
    @classmethod
    def _existing_file(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError("no such file (expected a state_dict, node or student file saved by torch.save)")
        return path.resolve() if path is not None else None  # absolute: Ray workers run in other folders

    @model_validator(mode="after")
    def _one_start(self) -> ModelSpec:
        if self.checkpoint is not None and self.init is not None:
            raise ValueError("give checkpoint (use the weights as they are) or init (train from them), not both")
        return self
