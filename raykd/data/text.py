"""Text for language models: documents in, token sequences out, split and partitioned by document.

Sources, none downloaded: ``pydoc`` (CPython's own documentation topics, ``pydoc_data.topics``, in
every Python), ``text`` (a ``.txt`` file or a folder of them under ``data.root``; a sub-folder or a
file is a topic) and a user's ``package.module:function`` returning documents (a list of strings, or
a mapping topic -> list of strings). Long texts are cut at paragraph breaks into documents of about
``data.doc_chars`` characters; each document keeps its topic, which is what non-IID partitions skew.

A document's tokens (with ``eos`` after it) are cut into rows of ``seq_len + 1`` tokens: inputs are
the first ``seq_len``, targets the last ``seq_len`` (the next token at every position). A document's
last row is padded: inputs with ``eos``, targets with ``UNLABELLED`` (-1), so no loss or metric counts
a padding position. The test documents are fixed (seed 0); validation, pool and node shares are
drawn per seed from the rest, whole documents at a time (``document_splits``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from raykd.config import DataConfig
from raykd.data.tokenizers import Tokenizer, build_tokenizer
from raykd.errors import ConfigError
from raykd.references import is_reference, resolve

PAD_TARGET = -1  # raykd.methods.base.UNLABELLED: ignored by cross-entropy, masked out of distillation
TEST_FRACTION = 0.1  # of the documents, fixed for a corpus (seed 0), as a classification test set is


@dataclass(frozen=True)
class Corpus:
    """Documents and their topic ids (``topic_names[topics[i]]`` is document i's topic)."""

    documents: list[str]
    topics: np.ndarray
    topic_names: list[str]


def paragraphs(text: str, doc_chars: int) -> list[str]:
    """``text`` cut at blank lines into pieces of about ``doc_chars`` characters (a longer paragraph stays whole)."""
    pieces, current = [], ""
    for paragraph in text.split("\n\n"):
        if current and len(current) + len(paragraph) > doc_chars:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{paragraph}" if current else paragraph
    return [p for p in [*pieces, current] if p.strip()]


def _corpus(by_topic: Mapping[str, list[str]], doc_chars: int, max_documents: int | None = None) -> Corpus:
    """The texts cut into documents; with ``max_documents``, a fixed (seed 0) sample of them, in corpus order, so a
    heavy model's run can shrink the corpus while keeping its mix of topics."""
    documents, topics = [], []
    names = sorted(by_topic)
    for topic, name in enumerate(names):
        for text in by_topic[name]:
            pieces = paragraphs(text, doc_chars)
            documents += pieces
            topics += [topic] * len(pieces)
    if max_documents is not None and max_documents < len(documents):
        kept = np.sort(np.random.default_rng(0).permutation(len(documents))[:max_documents])
        documents, topics = [documents[i] for i in kept], [topics[i] for i in kept]
    return Corpus(documents, np.array(topics, dtype=np.int64), names)


def _pydoc() -> dict[str, list[str]]:
    from pydoc_data.topics import topics  # about 465k characters of English that ship with every CPython

    return {name: [text] for name, text in topics.items()}


def _text_files(root: Path) -> dict[str, list[str]]:
    """A ``.txt`` file (one topic), or a folder: its ``*.txt`` files are topics, each sub-folder's files one topic."""
    if root.is_file():
        return {root.stem: [root.read_text(encoding="utf-8", errors="replace")]}
    if not root.is_dir():
        raise ConfigError(f"data.root: {root} is neither a .txt file nor a folder of them")
    by_topic: dict[str, list[str]] = {}
    for path in sorted(root.rglob("*.txt")):
        topic = path.stem if path.parent == root else path.parent.relative_to(root).as_posix()
        by_topic.setdefault(topic, []).append(path.read_text(encoding="utf-8", errors="replace"))
    return by_topic


def _user_documents(reference: str, kwargs: Mapping[str, Any]) -> dict[str, list[str]]:
    function = resolve(reference, "data.dataset")
    try:
        result = function(**kwargs)
    except Exception as err:  # noqa: BLE001 - user code may fail in any way; report it in one line
        raise ConfigError(f"data.dataset: {reference} raised {type(err).__name__}: {err}") from None
    by_topic = result if isinstance(result, Mapping) else {"all": result}
    if not all(isinstance(v, (list, tuple)) and all(isinstance(d, str) for d in v) for v in by_topic.values()):
        raise ConfigError(
            f"data.dataset: {reference} returned {type(result).__name__}; expected a list of strings or a mapping "
            "topic -> list of strings"
        )
    return {str(k): list(v) for k, v in by_topic.items()}


def load_corpus(cfg: DataConfig) -> Corpus:
    """The documents of ``cfg.dataset``; an empty corpus, or one too small to split, is one line."""
    if is_reference(cfg.dataset):
        by_topic = _user_documents(cfg.dataset, cfg.kwargs)
    elif cfg.dataset == "text":
        by_topic = _text_files(Path(cfg.root))  # type: ignore[arg-type]
    else:
        by_topic = _pydoc()
    corpus = _corpus(by_topic, cfg.doc_chars, cfg.max_documents)
    if len(corpus.documents) < 10:
        where = cfg.root if cfg.dataset == "text" else cfg.dataset
        raise ConfigError(
            f"data.dataset: {where} gave {len(corpus.documents)} non-empty documents of about data.doc_chars="
            f"{cfg.doc_chars} characters; at least 10 are needed (test, validation and node shares)"
        )
    return corpus


def test_documents(count: int) -> np.ndarray:
    """The fixed test documents: a seed-0 draw of TEST_FRACTION of them (at least one)."""
    chosen = np.random.default_rng(0).permutation(count)[: max(1, round(TEST_FRACTION * count))]
    return np.sort(chosen)


def sequences(token_docs: list[list[int]], seq_len: int, eos: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs (N, seq_len), targets (N, seq_len) and the document of each row, from tokenised documents."""
    xs, ys, owner = [], [], []
    for doc, tokens in enumerate(token_docs):
        ids = np.array([*tokens, eos], dtype=np.int64)
        rows = max(1, -(-(len(ids) - 1) // seq_len))
        padded = np.full(rows * seq_len + 1, eos, dtype=np.int64)
        padded[: len(ids)] = ids
        targets = padded[1:].copy()
        targets[len(ids) - 1 :] = PAD_TARGET
        xs.append(padded[:-1].reshape(rows, seq_len))
        ys.append(targets.reshape(rows, seq_len))
        owner += [doc] * rows
    return np.concatenate(xs), np.concatenate(ys), np.array(owner, dtype=np.int64)


@dataclass(frozen=True)
class TokenArrays:
    """A tokenised corpus: train/test rows, each training row's document, each training document's topic."""

    x: np.ndarray
    y: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    documents: np.ndarray
    topics: np.ndarray
    tokenizer: Tokenizer


def tokenise(cfg: DataConfig, cache_dir: Path) -> TokenArrays:
    """The corpus split into fixed test and training documents, tokenised and cut into rows."""
    corpus = load_corpus(cfg)
    test = test_documents(len(corpus.documents))
    train = np.setdiff1d(np.arange(len(corpus.documents)), test)
    train_texts = [corpus.documents[i] for i in train]
    tokenizer = build_tokenizer(cfg.tokenizer, cfg.vocab_size, train_texts, cache_dir)
    encode = [tokenizer.encode(text) for text in corpus.documents]
    x, y, owner = sequences([encode[i] for i in train], cfg.seq_len, tokenizer.eos)
    x_test, y_test, _ = sequences([encode[i] for i in test], cfg.seq_len, tokenizer.eos)
    return TokenArrays(x, y, x_test, y_test, owner, corpus.topics[train], tokenizer)
