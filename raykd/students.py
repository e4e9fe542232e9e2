"""Model files a user keeps: the distilled student (weights + how to rebuild it), and weights read back.

A student file is a plain torch file loadable with ``weights_only=True``: the state_dict, the model
spec (name, kwargs, width, depth), the input shape, the class count and an ``info`` dict (the row's
setting, seed, metrics, label). ``load_student`` rebuilds the model from it with no config at hand.
``read_weights`` accepts any of raykd's files or a plain state_dict, so one reader serves
``checkpoint``, ``init`` and ``load_student``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from raykd.config import ModelSpec
from raykd.data.preprocess import model_inputs
from raykd.errors import ConfigError
from raykd.files import write_atomic
from raykd.models import InputShape, build_model

STUDENT_FORMAT = "raykd-student-1"
SPEC_FIELDS = {"name", "kwargs", "width", "depth"}


class StudentData(Protocol):
    """What a student file records of its data; a ``raykd.data.Dataset`` has it all, so no caller can forget the
    preprocessing (a test may pass a ``SimpleNamespace``)."""

    @property
    def input_shape(self) -> InputShape: ...

    @property
    def num_classes(self) -> int: ...

    @property
    def preprocess(self) -> dict[str, Any]: ...


def save_student(path: Path, model: nn.Module, spec: ModelSpec, data: StudentData, **info: Any) -> Path:
    """Write the student atomically, with its input shape, classes and the ``preprocess`` record its inputs need
    (``raykd.data.preprocess``); ``info`` must hold plain values (numbers, text, lists, dicts)."""
    record = {
        "format": STUDENT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "model": spec.model_dump(mode="json", include=SPEC_FIELDS),
        "input_shape": [int(d) for d in data.input_shape],
        "num_classes": int(data.num_classes),
        "preprocess": _json(data.preprocess),
        "info": _json(info),
    }
    return write_atomic(Path(path), lambda tmp: torch.save(record, tmp))


def _json(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` as plain JSON values: ``weights_only=True`` reads nothing else back."""
    return json.loads(json.dumps(values, default=_plain))


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
    """The student rebuilt from its file, in eval mode (a custom model's module must be importable); its file's
    preprocessing record and input shape ride along as ``raykd_preprocess`` and ``raykd_input_shape``, so
    ``raykd.predict`` can take the loaded model as well as the file."""
    record, field = _student(Path(path)), f"student file {path}"
    tokens = record["info"].get("task") == "lm"
    shape, classes = tuple(record["input_shape"]), record["num_classes"]
    model = build_model(ModelSpec(**record["model"]), shape, classes, field, tokens)
    fit_weights(model, record["state_dict"], Path(path), field)
    model.raykd_preprocess = record.get("preprocess")  # type: ignore[assignment]
    model.raykd_input_shape = shape  # type: ignore[assignment]
    return model.eval()


def predict(student: nn.Module | Path, inputs: Any) -> Tensor:
    """The student's logits (N, classes) for raw ``inputs``, made into model inputs by the preprocessing its file
    carries: image files or PIL images for an image-folder student, else raw arrays (``raykd.data.preprocess``)."""
    model = student if isinstance(student, nn.Module) else load_student(Path(student))
    record = getattr(model, "raykd_preprocess", None)
    if record is None:
        raise ConfigError(
            "raykd.predict: student: this model carries no preprocessing record; pass a student file or "
            "raykd.load_student(path) of one saved by this raykd version"
        )
    x = model_inputs(record, inputs, model.raykd_input_shape)  # type: ignore[arg-type]
    device = next(iter(model.parameters())).device
    with torch.no_grad():
        return model(x.to(device)).cpu()


def _student(path: Path) -> dict[str, Any]:
    record = _read(path, f"student file {path}")
    if not isinstance(record, dict) or record.get("format") != STUDENT_FORMAT:
        raise ConfigError(f"student file {path}: not a raykd student file (no {STUDENT_FORMAT!r} format tag)")
    return record


#: Where trainer-style checkpoints keep the model's weights (``torch.save({"model_state_dict": ..., ...})``).
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def read_weights(path: Path, field: str) -> dict[str, Tensor]:
    """The state_dict in ``path``: a plain state_dict, a trainer-style checkpoint (``WEIGHT_KEYS``), a raykd node
    cache file, or a student file."""
    record = _read(Path(path), field)
    if isinstance(record, dict):
        record = next((record[k] for k in WEIGHT_KEYS if isinstance(record.get(k), dict)), record)
    if not (isinstance(record, dict) and record and all(isinstance(v, Tensor) for v in record.values())):
        keys = f" (its keys: {', '.join(map(str, list(record)[:5]))})" if isinstance(record, dict) and record else ""
        raise ConfigError(
            f"{field}: {path} holds no state_dict{keys}; expected model.state_dict(), a checkpoint dict with "
            f"{', '.join(WEIGHT_KEYS)}, a raykd node file or a student file"
        )
    return record


def _read(path: Path, field: str) -> Any:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConfigError(f"{field}: no such file {str(path)!r}") from None
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not one raykd can read
        text = ANSI.sub("", str(err))
        pickled = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if pickled:  # torch.save(model): a pickled object, loadable only by running its code
            raise ConfigError(
                f"{field}: {path} holds a whole pickled model ({pickled.group(1)}), not weights; "
                "save them with torch.save(model.state_dict(), PATH)"
            ) from None
        first = (text.strip().splitlines() or [""])[0][:200]  # torch's unpickling errors run to paragraphs
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
