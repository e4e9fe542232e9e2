"""Mixed precision and memory layout of a training step (``train.precision``).

fp32 is the default and leaves the step exactly as plain PyTorch writes it (no autocast context, no grad
scaler, the models' layout untouched), so CPU runs keep their results bit for bit. bf16 runs the forward
passes under autocast (on the CPU too: ``torch.autocast("cpu", bfloat16)``); fp16 adds a grad scaler and
needs CUDA. Reduced precision on CUDA also puts convolutional models and their image batches in
channels_last, the layout tensor cores read without a transpose. Logits leave autocast as float32, so every
method's loss is computed in full precision whatever ran the models.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import get_args

import torch
from torch import Tensor, nn

from raykd.config.base import PrecisionName
from raykd.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(name: str, device: torch.device, field: str = "train.precision") -> None:
    """One ConfigError line when ``name`` cannot run on ``device`` (fp16 on the CPU: no fast kernels there)."""
    if name not in get_args(PrecisionName):
        raise ConfigError(f"{field}: {name!r} is not a precision; allowed: {', '.join(get_args(PrecisionName))}")
    if name == "fp16" and device.type != "cuda":
        raise ConfigError(
            f"{field}: fp16 needs a CUDA device and this run trains on the {device.type}; allowed there: fp32, bf16"
        )


class Precision:
    """How one ``fit`` runs its steps on ``device``: autocast, grad scaling and the models' memory layout."""

    def __init__(self, name: str, device: torch.device, field: str = "train.precision", train: bool = True) -> None:
        check_precision(name, device, field)
        self.name, self.device = name, device
        self.dtype = DTYPES.get(name)
        self.channels_last = self.dtype is not None and device.type == "cuda"
        self.scaler = torch.amp.GradScaler(device.type) if name == "fp16" and train else None  # inference: none

    def autocast(self) -> AbstractContextManager[object]:
        """The forward passes' context: nothing at fp32 (no per-step cost), autocast otherwise."""
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def full(self, logits: Tensor) -> Tensor:
        """Logits as float32 for the loss; at fp32 returned as they are (no cast op in the step)."""
        return logits if self.dtype is None else logits.float()

    def layout(self, models: list[nn.Module]) -> None:
        """Convolutional weights in channels_last where that is the fast layout (reduced precision on CUDA)."""
        if self.channels_last:
            for model in models:
                model.to(memory_format=torch.channels_last)

    def inputs(self, x: Tensor) -> Tensor:
        """An image batch (N, C, H, W) in the models' layout; anything else unchanged."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def step(self, loss: Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward and optimizer step; with fp16, through the grad scaler (which skips steps with inf grads)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            optimizer.step()
            return
        self.scaler.scale(loss).backward()
        self.scaler.step(optimizer)
        self.scaler.update()


def serving_precision(dtype: torch.dtype, device: torch.device) -> Precision:
    """A teacher server's inference in the dtype its logits travel in (``teacher.dtype``): float16 or bfloat16
    autocast and channels_last on CUDA; on the CPU full precision, as before, since there the logits are only cast."""
    names = {torch.float16: "fp16", torch.bfloat16: "bf16"}
    name = names.get(dtype, "fp32") if device.type == "cuda" else "fp32"
    return Precision(name, device, "teacher.dtype", train=False)
