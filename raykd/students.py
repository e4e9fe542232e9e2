"""Model files a user keeps: the distilled student (weights + how to rebuild it), and weights read back.

A student file is a plain torch file loadable with ``weights_only=True``: the state_dict, the model
spec (name, kwargs, width, depth), the input shape, the class count and an ``info`` dict (the row's
setting, seed, metrics, label). ``load_student`` rebuilds the model from it with no config at hand.
``read_weights`` accepts any of raykd's files or a plain state_dict, so one reader serves
``checkpoint``, ``init`` and ``load_student``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from raykd.config import ModelSpec
from raykd.errors import ConfigError
from raykd.files import write_atomic
from raykd.models import InputShape, build_model

STUDENT_FORMAT = "raykd-student-1"
SPEC_FIELDS = {"name", "kwargs", "width", "depth"}


def save_student(
    path: Path, model: nn.Module, spec: ModelSpec, input_shape: InputShape, num_classes: int, **info: Any
) -> Path:
    """Write the student atomically; ``info`` must hold plain values (numbers, text, lists, dicts)."""
    record = {
        "format": STUDENT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": spec.model_dump(mode="json", include=SPEC_FIELDS),
        "input_shape": [int(d) for d in input_shape],
        "num_classes": int(num_classes),
        "info": json.loads(json.dumps(info, default=_plain)),  # weights_only=True reads plain values only
    }
    return write_atomic(Path(path), lambda tmp: torch.save(record, tmp))


def _plain(value: Any) -> Any:
    """numpy / torch scalars and arrays as Python values, paths as text; anything else is refused."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"save_student info: {type(value).__name__} is not a plain value (number, text, list, dict)")


def read_student(path: Path) -> dict[str, Any]:
    """Everything in a student file but its weights: ``model`` (spec), ``input_shape``, ``num_classes``, ``info``."""
    return {k: v for k, v in _student(Path(path)).items() if k != "state_dict"}


def load_student(path: Path) -> nn.Module:
    """The student rebuilt from its file, in eval mode (a custom model's module must be importable)."""
    record, field = _student(Path(path)), f"student file {path}"
    tokens = record["info"].get("task") == "lm"
    shape, classes = tuple(record["input_shape"]), record["num_classes"]
    model = build_model(ModelSpec(**record["model"]), shape, classes, field, tokens)
    fit_weights(model, record["state_dict"], Path(path), field)
    return model.eval()


def _student(path: Path) -> dict[str, Any]:
    record = _read(path, f"student file {path}")
    if not isinstance(record, dict) or record.get("format") != STUDENT_FORMAT:
        raise ConfigError(f"student file {path}: not a raykd student file (no {STUDENT_FORMAT!r} format tag)")
    return record


def read_weights(path: Path, field: str) -> dict[str, Tensor]:
    """The state_dict in ``path``: a plain state_dict, a raykd node cache file, or a student file."""
    record = _read(Path(path), field)
    if isinstance(record, dict) and isinstance(record.get("state_dict"), dict):
        record = record["state_dict"]
    if not (isinstance(record, dict) and record and all(isinstance(v, Tensor) for v in record.values())):
        raise ConfigError(
            f"{field}: {path} holds no state_dict; expected model.state_dict(), a raykd node file or a student file"
        )
    return record


def _read(path: Path, field: str) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConfigError(f"{field}: no such file {str(path)!r}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not one raykd can read
        first = (str(err).strip().splitlines() or [""])[0][:200]  # torch's unpickling errors run to paragraphs
        raise ConfigError(
            f"{field}: {path} is not a torch file readable with weights_only=True ({type(err).__name__}: {first})"
        ) from None


def fit_weights(model: nn.Module, state: dict[str, Tensor], path: Path, field: str) -> None:
    """Load ``state`` into ``model``; keys or shapes that do not fit are one line naming the first mismatch."""
    own = model.state_dict()
    problems = [
        f"key {k!r} is {tuple(state[k].shape)} in the file but {tuple(v.shape)} in the model"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ][:1]
    odd = {"missing": [k for k in own if k not in state], "unexpected": [k for k in state if k not in own]}
    problems += [
        f"{len(keys)} {kind} keys ({', '.join(keys[:3])}{', ...' * (len(keys) > 3)})"
        for kind, keys in odd.items()
        if keys
    ]
    if problems:
        raise ConfigError(f"{field}: {path} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)
