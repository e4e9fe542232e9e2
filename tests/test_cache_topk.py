"""The top-k logit cache (``teacher.top_k``): what it keeps, what it refuses, what it costs, and a trial on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from raykd.config import check_requests, validate_config
from raykd.data import check_dataset, load_dataset
from raykd.engine import Batch
from raykd.errors import ConfigError
from raykd.experiment import run_trial
from raykd.methods.base import StepLogits
from raykd.methods.kd import KnowledgeDistillation
from raykd.nodes import prepare
from raykd.teacher.cache import CachedTeacher, LogitCache, node_logits, read_rows, top_k_rows
from tests.conftest import tiny_raw

CPU = torch.device("cpu")


def expanded(logits: torch.Tensor, k: int) -> torch.Tensor:
    """``logits`` through the cache and back: top-k records, then dense rows."""
    return read_rows(top_k_rows(logits, k, "float32"), np.arange(len(logits)), logits.shape[1], CPU)


def kd_term(teacher: torch.Tensor, student: torch.Tensor, temperature: float) -> float:
    method = KnowledgeDistillation(temperature=temperature, alpha=1.0)
    rows = torch.ones(len(student), dtype=torch.bool)
    return float(method.losses(StepLogits([student], [teacher]), torch.zeros_like(rows, dtype=torch.long), rows)["kd"])


def test_the_k_largest_are_kept_and_the_rest_read_as_the_smallest_kept() -> None:
    logits = torch.tensor([[1.0, 5.0, -2.0, 3.0], [0.0, -1.0, 4.0, 2.0]])
    records = top_k_rows(logits, 2, "float32")
    assert records["ids"].tolist() == [[1, 3], [2, 3]] and records["values"].tolist() == [[5.0, 3.0], [4.0, 2.0]]
    assert expanded(logits, 2).tolist() == [[3.0, 5.0, 3.0, 3.0], [2.0, 2.0, 4.0, 2.0]]


def test_records_are_k_times_6_bytes_with_int32_ids_only_past_uint16() -> None:
    assert top_k_rows(torch.randn(3, 100), 5, "float32").itemsize == 5 * (4 + 2)
    assert top_k_rows(torch.randn(1, 32768), 2, "float32")["ids"].dtype == np.int16
    for classes, kind in ((49152, np.uint16), (65536, np.uint16), (65537, np.int32)):  # SmolLM2's vocabulary: uint16
        wide = torch.zeros(1, classes)
        wide[0, classes - 1], wide[0, 0] = 2.0, 1.0
        records = top_k_rows(wide, 2, "float32")
        assert records["ids"].dtype == kind and records["ids"].tolist() == [[classes - 1, 0]]
        assert read_rows(records, np.array([0]), classes, torch.device("cpu")).argmax().item() == classes - 1


def test_kd_loss_is_exact_when_the_dropped_logit_ties_and_close_for_a_sure_teacher() -> None:
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(32, 10, generator=generator)
    tied = torch.randn(32, 10, generator=generator)
    tied[:, 0] = tied[:, 1] = tied.min(dim=1).values - 1  # the two lowest logits are equal: K = C - 1 loses nothing
    assert kd_term(expanded(tied, 9), student, 4.0) == pytest.approx(kd_term(tied, student, 4.0), rel=1e-6)
    sure = torch.randn(32, 10, generator=generator) * 8  # a trained teacher's wide logit gaps
    errors = [abs(kd_term(expanded(sure, k), student, 1.0) / kd_term(sure, student, 1.0) - 1) for k in (1, 3, 6, 9)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_cached_teacher_reads_memory_mapped_rows_as_read_rows_does(tmp_path: Path, dtype: str) -> None:
    """Dense arrays are looked up through a tensor over the memory map, top-k records through ``read_rows``."""
    logits = torch.randn(20, 7) * 4
    dense, records = logits.to(getattr(torch, dtype)).numpy(), top_k_rows(logits, 3, dtype)
    np.save(tmp_path / "dense.npy", dense)
    np.save(tmp_path / "records.npy", records)
    arrays = [np.load(tmp_path / f"{name}.npy", mmap_mode="r") for name in ("dense", "records")]
    index = torch.tensor([5, 0, 19, 5])
    batch = Batch(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.bool), index)
    teachers, initial = CachedTeacher(arrays, arrays[0], classes=7)(batch)
    for got, array in zip([*teachers, initial], [*arrays, arrays[0]], strict=True):
        assert got.dtype == torch.float32
        assert torch.equal(got, read_rows(array, index.numpy(), 7, CPU))
    assert torch.equal(teachers[0], logits.to(getattr(torch, dtype)).float()[index])


def test_k_below_1_or_in_inline_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^teacher.top_k = 0: Input should be greater than or equal to 1$"):
        validate_config(tiny_raw(tmp_path, tmp_path, teacher={"mode": "cache", "top_k": 0}))
    inline = validate_config(tiny_raw(tmp_path, tmp_path, teacher={"top_k": 3}))
    with pytest.raises(ConfigError) as refused:
        check_requests(inline)
    assert str(refused.value) == (
        "teacher.top_k: 3 cuts what a teacher server sends or the offline cache holds, but teacher.mode is inline "
        "(full logits in the trial); allowed: unset, or teacher.mode server or cache"
    )


def test_k_of_all_classes_is_refused_in_one_line(tmp_path: Path, cache_dir: Path) -> None:
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, teacher={"mode": "cache", "top_k": 10}))
    with pytest.raises(ConfigError) as refused:
        check_dataset(cfg, load_dataset(cfg.data, cache_dir))
    assert str(refused.value) == (
        "teacher.top_k: 10 would keep every one of the 10 classes of mnist1d; allowed: 1..9, or unset for full logits"
    )


def test_the_entry_is_keyed_by_k_smaller_by_its_ratio_and_checked(tmp_path: Path) -> None:
    checkpoint = tmp_path / "teacher.pt"
    checkpoint.write_bytes(b"weights")
    cache, logits = LogitCache(tmp_path / "logits"), torch.randn(1000, 100)
    keys = {k: cache.key(checkpoint, "fake", "train", "float32", k) for k in (None, 5, 10)}
    assert len({cache.path(key) for key in keys.values()}) == 3
    assert keys[None] == cache.key(checkpoint, "fake", "train", "float32")  # full-logit entries keep their key
    full, _ = cache.get_or_build(keys[None], lambda: logits.numpy())
    cut, _ = cache.get_or_build(keys[5], lambda: top_k_rows(logits, 5, "float32"))
    payload = {name: Path(a.filename).stat().st_size - a.offset for name, a in (("full", full), ("cut", cut))}
    assert payload == {"full": 1000 * 100 * 4, "cut": 1000 * 5 * 6}  # 7.5% of the full entry
    path = cache.path(keys[5])
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF  # flipped bits in the payload: the checksum refuses them
    path.write_bytes(bytes(data))
    assert cache.load(keys[5]) is None
    rebuilt, built = cache.get_or_build(keys[5], lambda: top_k_rows(logits, 5, "float32"))
    assert built and np.array_equal(rebuilt, top_k_rows(logits, 5, "float32"))  # ``cut`` maps the damaged bytes


def test_a_trial_distils_from_top_k_cached_logits(tmp_path: Path, cache_dir: Path) -> None:
    cfg = validate_config(tiny_raw(tmp_path, cache_dir, teacher={"mode": "cache", "top_k": 3}))
    setup = prepare(cfg, 0)
    records, _ = node_logits(cfg, setup, 1, 0)
    assert records.dtype.names == ("values", "ids") and records.shape == (len(setup.dataset.train_x),)
    setting = {"temperature": 4.0, "alpha": 0.5}
    cut = run_trial(cfg, "kd", setting, 0)
    assert cut["epoch"] == cfg.transfer.train.epochs and np.isfinite(cut["loss"])
    full_cfg = validate_config(tiny_raw(tmp_path, cache_dir, teacher={"mode": "cache"}))
    full = run_trial(full_cfg, "kd", setting, 0)
    assert cut["loss"] != full["loss"]  # the cut rows, not the full ones, reached the KD term
