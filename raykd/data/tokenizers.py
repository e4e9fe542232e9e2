"""Tokenizers for text data: bytes (no training), a BPE trained once on the training text, or a user's own.

Every tokenizer maps text to ids in ``0..vocab_size - 1`` and ends each document with ``eos``. The
BPE is Hugging Face ``tokenizers``' byte-level BPE (the GPT-2 recipe), trained on the non-test
documents and cached under the cache folder by a digest of that text and the vocabulary size, so
every process and later run reads the same merges. A user's tokenizer is a ``tokenizer.json`` file
(or a folder holding one, as ``transformers`` saves it).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from raykd.errors import ConfigError
from raykd.files import cached
from raykd.lm.hf import is_pretrained, load_tokenizer

EOS_TEXT = "<|endoftext|>"


class Tokenizer(Protocol):
    """What raykd needs of a tokenizer: ids for text, text for ids, the vocabulary size and the end id."""

    vocab_size: int
    eos: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes as ids 0..255 and ``eos`` = 256: no training, any text, a vocabulary of 257."""

    vocab_size: int = 257
    eos: int = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A Hugging Face ``tokenizers.Tokenizer``; its end-of-text id is ``<|endoftext|>``'s, else its last id."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        ends = (tokenizer.token_to_id(t) for t in (EOS_TEXT, "</s>", "<|im_end|>"))
        end = next((i for i in ends if i is not None), None)
        self.eos = end if end is not None else self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)


def _train_bpe(texts: list[str], vocab_size: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # the [lm] extra: only for a BPE

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TEXT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


def _tokenizers_module() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise ConfigError(
            "data.tokenizer: bpe and tokenizer files need Hugging Face tokenizers; pip install -e '.[lm]'"
        ) from None
    return tokenizers


def bpe(texts: list[str], vocab_size: int, cache_dir: Path) -> HFTokenizer:
    """A byte-level BPE of ``vocab_size`` trained on ``texts`` once, then read from the cache."""
    tokenizers = _tokenizers_module()
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:20]
    path = cache_dir / "tokenizers" / f"bpe-{digest}-{vocab_size}.json"
    raw, _ = cached(
        path,
        lambda p: tokenizers.Tokenizer.from_file(str(p)),
        lambda: _train_bpe(texts, vocab_size),
        lambda tmp, tok: tok.save(str(tmp)),
    )
    return HFTokenizer(raw)


def from_file(path: Path) -> HFTokenizer:
    """A user's ``tokenizer.json`` (or a folder that holds one)."""
    tokenizers = _tokenizers_module()
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"data.tokenizer: {path} is not a tokenizer.json file or a folder holding one")
    try:
        return HFTokenizer(tokenizers.Tokenizer.from_file(str(file)))
    except Exception as err:  # noqa: BLE001 - a malformed file fails in the Rust parser: one line
        raise ConfigError(f"data.tokenizer: {file} is not a tokenizers file ({type(err).__name__}: {err})") from None


def build_tokenizer(spec: str, vocab_size: int, train_texts: list[str], cache_dir: Path) -> Tokenizer:
    """``byte``, ``bpe`` (trained on ``train_texts``), a pre-trained model's (``hf:``/``gguf:``) or a path to a
    user's tokenizer."""
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        return bpe(train_texts, vocab_size, cache_dir)
    if is_pretrained(spec):  # a pre-trained teacher's own vocabulary, shared by its students
        return HFTokenizer(load_tokenizer(spec))
    return from_file(Path(spec))


def tokenizer_record(tokenizer: Tokenizer) -> dict[str, str]:
    """A tokenizer as plain text a student file can hold: ``byte``, or the Hugging Face tokenizer's JSON."""
    if isinstance(tokenizer, ByteTokenizer):
        return {"tokenizer": "byte"}
    return {"tokenizer": "json", "tokenizer_json": tokenizer.tokenizer.to_str()}  # type: ignore[attr-defined]


def tokenizer_from_record(record: dict[str, str]) -> Tokenizer:
    """The tokenizer ``tokenizer_record`` wrote."""
    if record.get("tokenizer") == "byte":
        return ByteTokenizer()
    tokenizers = _tokenizers_module()
    return HFTokenizer(tokenizers.Tokenizer.from_str(record["tokenizer_json"]))
