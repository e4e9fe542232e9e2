"""What a top-k row's dropped classes read as (``teacher.top_k_fill``): the row's smallest kept logit (``min``) or
the teacher's own tail mass spread evenly over them (``mass``), in the cache and in the server's replies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import validate_config
from raykd.engine import predict, rows
from raykd.files import file_digest
from raykd.nodes import load_node, node_path, prepare
from raykd.teacher.cache import LogitCache, dense_logits, node_logits, read_rows, top_k_rows
from raykd.teacher.server import ServedTeacher, TeacherServer, served_model
from raykd.teacher.source import teacher_logits
from tests.conftest import lm_raw, tiny_raw

CPU = torch.device("cpu")


def expanded(logits: torch.Tensor, k: int, fill: str) -> torch.Tensor:
    """``logits`` through a top-k record and back."""
    return read_rows(top_k_rows(logits, k, "float32", fill), np.arange(len(logits)), logits.shape[1], CPU)


def test_mass_fill_gives_the_kept_their_probabilities_and_the_dropped_the_tail_evenly() -> None:
    logits = torch.randn(64, 500, generator=torch.Generator().manual_seed(0), dtype=torch.float64).float() * 3
    k, truth = 8, logits.double().softmax(dim=1)
    probs = expanded(logits, k, "mass").double().softmax(dim=1)
    kept = logits.topk(k, dim=1).indices
    assert torch.allclose(probs.gather(1, kept), truth.gather(1, kept), rtol=1e-5, atol=0)  # the kept: exactly
    dropped = torch.ones_like(probs, dtype=torch.bool).scatter_(1, kept, False)
    tail = 1 - truth.gather(1, kept).sum(dim=1)
    even = probs[dropped].reshape(len(logits), -1)
    assert torch.allclose(even, (tail / (500 - k))[:, None].expand_as(even), rtol=1e-4)  # the dropped: the tail, even
    assert top_k_rows(logits, k, "float32", "mass").itemsize == k * (4 + 2) + 4  # one float32 logsumexp a row


def test_mass_fill_keeps_a_vanishing_tail_finite_and_a_flat_row_flat() -> None:
    sure = torch.tensor([[50.0, 49.0, -60.0, -60.0, -60.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    dense = expanded(sure, 2, "mass")
    assert torch.allclose(dense[0, 2:], torch.full((3,), -60.0))  # a tail of 3e-48 of the mass, kept, finite
    assert torch.allclose(dense[1], torch.ones(5))  # a flat row: its tail per class is the kept ones' probability


def test_min_fill_is_unchanged_and_the_default() -> None:
    logits = torch.tensor([[1.0, 5.0, -2.0, 3.0], [0.0, -1.0, 4.0, 2.0]])
    records = top_k_rows(logits, 2, "float32")
    assert records.dtype.names == ("values", "ids") and top_k_rows(logits, 2, "float32", "min").dtype == records.dtype
    assert expanded(logits, 2, "min").tolist() == [[3.0, 5.0, 3.0, 3.0], [2.0, 2.0, 4.0, 2.0]]
    values, ids = logits.topk(2, dim=1)
    assert torch.equal(dense_logits(values, ids, 4), expanded(logits, 2, "min"))


def test_the_cache_key_names_the_mass_fill_only(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"weights")
    cache = LogitCache(tmp_path)
    key = cache.key(checkpoint, "text", "train", "float32", 8)
    assert cache.key(checkpoint, "text", "train", "float32", 8, "min") == key  # existing min entries stay valid
    assert cache.key(checkpoint, "text", "train", "float32", 8, "mass") != key
    assert cache.key(checkpoint, "text", "train", "float32", None, "mass") == cache.key(
        checkpoint, "text", "train", "float32"
    )  # full logits have no fill


def _lm(tmp_path: Path, cache_dir: Path, fill: str) -> object:
    return validate_config(lm_raw(tmp_path, cache_dir, teacher={"mode": "cache", "top_k": 4, "top_k_fill": fill}))


@pytest.mark.slow
def test_a_cached_language_model_expands_with_its_tail_mass_and_the_server_agrees(
    tmp_path: Path, cache_dir: Path
) -> None:
    cfg, min_cfg = _lm(tmp_path, cache_dir, "mass"), _lm(tmp_path, cache_dir, "min")
    assert validate_config(tiny_raw(tmp_path, cache_dir)).teacher.top_k_fill == "min"
    setup = prepare(cfg, 0)
    records, _ = node_logits(cfg, setup, 1, 0)
    cut, _ = node_logits(min_cfg, setup, 1, 0)
    assert records.dtype.names == ("values", "ids", "tail") and cut.dtype.names == ("values", "ids")
    assert np.array_equal(records["ids"], cut["ids"])  # one top-k, two fills, two entries
    x, vocab = setup.dataset.train_x, setup.dataset.num_classes
    full = rows(predict(load_node(cfg, setup, 1, 0), x))
    ids = torch.from_numpy(records["ids"].astype(np.int64))
    dropped = full.scatter(1, ids, float("-inf")).logsumexp(dim=1)  # the tail's logsumexp, taken where it was built
    assert np.allclose(records["tail"], dropped.numpy(), atol=1e-5)
    dense = teacher_logits(cfg, setup, 0, [1], None, lambda node: load_node(cfg, setup, node, 0)).train_logits()[0]
    assert torch.allclose(dense.softmax(1).gather(1, ids), full.softmax(1).gather(1, ids), atol=1e-6)
    assert dense.softmax(1).sum(1).sub(1).abs().max() < 1e-5
    path = node_path(cfg, 1, 0)  # the server's reply, taken in this process (no Ray): the same rows
    model = served_model(file_digest(path), path, cfg.nodes.model_of(1), setup.dataset.input_shape, vocab, True)
    server = TeacherServer([model], "cpu", "float32", 4096, 0.0, top_k=4, top_k_fill="mass")
    answer = tuple(part.transpose(0, 1) for part in server._forward((model.key,), [x[:3]]))  # as a reply arrives
    assert len(answer) == 3 and answer[2].shape == (1, 3, 16)
    served = ServedTeacher(None, [model.key], None, prefetch=0, classes=vocab)._dense(*answer)
    assert torch.allclose(rows(served[0]), dense[: 3 * 16], atol=1e-5)
