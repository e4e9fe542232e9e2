"""What every config section shares (its rules), and the training budget several sections hold."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Section(BaseModel):
    """A config section: unknown keys are errors, values are immutable once loaded, and no number may be
    NaN or infinite (an infinite lr or temperature would only fail later, inside every trial)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class TrainConfig(Section):
    """A plain training budget (Adam)."""

    epochs: int = Field(30, ge=1, description="passes over the training rows")
    batch_size: int = Field(64, ge=1, description="rows per optimisation step")
    lr: float = Field(1e-2, gt=0, description="Adam learning rate")
    weight_decay: float = Field(0.0, ge=0, description="Adam weight decay (L2 penalty)")
