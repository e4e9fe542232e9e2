"""``python -m raykd.export STUDENT --format onnx|torchscript [--out FILE]``: a student where raykd is not installed.

``model_dependencies`` says what a pickled student needs elsewhere (the MLflow model's requirements and code).

The exported file holds the model alone (traced with a dynamic batch); its preprocessing record rides along
as metadata (ONNX ``metadata_props`` key ``raykd_preprocess``; TorchScript extra file ``raykd_preprocess.json``),
so whoever serves it can make inputs the way training did. ONNX needs ``pip install "raykd[export]"``
(onnx, onnxscript; onnxruntime to run it).

    raykd.export_student("runs/.../students/kd-tuned/seed0.pt", "onnx")
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import warnings
from importlib.metadata import packages_distributions, version
from pathlib import Path

import torch
from torch import nn

from raykd.cli import run_command
from raykd.errors import ConfigError
from raykd.files import write_atomic
from raykd.students import load_student, read_student

#: Each format's file suffix, beside the student file when ``out`` is not given.
FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript.pt"}
PREPROCESS_KEY = "raykd_preprocess"
ONNX_PACKAGES = ("onnx", "onnxscript")
#: Folders that hold installed distributions: a model class from there is a requirement, not code to ship.
INSTALLED = ("site-packages", "dist-packages")
RAYKD = __name__.split(".")[0]


def export_student(student: str | Path, format: str, out: str | Path | None = None) -> Path:
    """Write the student file ``student`` as ``format`` (onnx or torchscript) to ``out``; returns the path written."""
    if format not in FORMATS:
        raise ConfigError(f"export --format: {format!r} is not a format; allowed: {', '.join(FORMATS)}")
    path = Path(student)
    about = read_student(path)
    if about.get("preprocess", {}).get("inputs") == "tokens":
        raise ConfigError(f"export: {path} is a language-model student; export covers classifiers (onnx, torchscript)")
    target = Path(out) if out is not None else path.with_name(path.stem + FORMATS[format])
    model, metadata = load_student(path), json.dumps(about.get("preprocess"))
    example = torch.zeros(2, *about["input_shape"])
    write = _onnx if format == "onnx" else _torchscript
    return write_atomic(target, lambda tmp: write(model, example, metadata, tmp))


def _torchscript(model: nn.Module, example: torch.Tensor, metadata: str, tmp: Path) -> None:
    """Traced, not scripted: a user's module needs no TorchScript-compatible Python, only a fixed graph. torch
    deprecates TorchScript (README: prefer ONNX); the user asked for it, so its warning is not repeated here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
        traced = torch.jit.trace(model, example)
        torch.jit.save(traced, str(tmp), _extra_files={f"{PREPROCESS_KEY}.json": metadata})


def _onnx(model: nn.Module, example: torch.Tensor, metadata: str, tmp: Path) -> None:
    """Through torch's ONNX exporter with a dynamic batch dimension, then the preprocessing as model metadata."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"export --format onnx: needs {', '.join(missing)}; pip install 'raykd[export]'")
    import onnx

    batch = torch.export.Dim("batch", min=1)
    program = torch.onnx.export(
        model,
        (example,),
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: batch},),
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(proto, {PREPROCESS_KEY: metadata})
    onnx.save(proto, str(tmp))


def model_dependencies(model: nn.Module) -> tuple[list[str], list[str], str]:
    """What loading the pickled ``model`` elsewhere needs: pip requirements (torch, and each installed
    distribution its classes come from), code paths (each package or module of its classes that is not
    installed, the user's own; raykd's for its GPT) and why a class cannot travel (defined in a script's
    ``__main__``), empty when all can."""
    requirements, code, why_not = {f"torch=={version('torch').split('+')[0]}"}, set(), ""
    owners = packages_distributions()
    for top in sorted({type(m).__module__.split(".")[0] for m in model.modules()} - {"torch", "builtins"}):
        source = getattr(sys.modules.get(top), "__file__", None)
        installed = source is not None and any(part in INSTALLED for part in Path(source).parts)
        if top == "__main__" or source is None:
            why_not = f"its class is defined in {top}, which has no module file to ship; define it in a module"
        elif installed and top in owners and top != RAYKD:  # raykd itself is on no index: its code travels
            requirements.add(f"{owners[top][0]}=={version(owners[top][0])}")
        else:
            code.add(str(Path(source).parent if Path(source).name == "__init__.py" else Path(source)))
    return sorted(requirements), sorted(code), why_not


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m raykd.export", description="Write a raykd student file as ONNX or TorchScript."
    )
    parser.add_argument("student", type=Path, help="a student file (students/<row>/seed<S>.pt of a sweep)")
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="onnx or torchscript")
    parser.add_argument("--out", type=Path, help="file to write (default: beside the student, .onnx / .torchscript.pt)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        written = export_student(args.student, args.format, args.out)
        print(f"wrote {written} ({args.format}; preprocessing in its metadata as {PREPROCESS_KEY})")
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
