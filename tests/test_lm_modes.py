"""Language models through raykd's shells: the teacher served, cached and inline per token; a sweep end to end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

import raykd
from raykd.config import validate_config
from raykd.experiment import run_trial
from raykd.files import file_digest
from raykd.nodes import load_node, node_path, prepare
from raykd.teacher.cache import node_logits
from raykd.teacher.server import served_model, start_server
from raykd.tune import main
from tests.conftest import lm_raw


@pytest.mark.slow
def test_served_and_cached_token_logits_equal_inline_and_top_k_agrees_between_them(
    ray_session: Any, tmp_path: Path, cache_dir: Path
) -> None:
    cfg = validate_config(lm_raw(tmp_path, cache_dir))
    setup = prepare(cfg, 0)
    load_node(cfg, setup, 1, 0)
    path = node_path(cfg, 1, 0)
    served = served_model(file_digest(path), path, cfg.nodes.model_of(1), setup.dataset.input_shape, 257, True)
    kd = {"temperature": 2.0, "alpha": 0.5}
    results = {}
    for name, teacher in {
        "inline": {},
        "cache": {"mode": "cache"},
        "server": {"mode": "server", "num_cpus": 0.5},
        "cache-top8": {"mode": "cache", "top_k": 8},
        "server-top8": {"mode": "server", "num_cpus": 0.5, "top_k": 8},
    }.items():
        c = cfg.model_copy(update={"teacher": cfg.teacher.model_copy(update=teacher)})
        server = start_server([served], c.teacher) if c.teacher.mode == "server" else None
        results[name] = run_trial(c, "kd", kd, 0, server=server)
        if server is not None:
            server.kill()
    for mode in ("cache", "server"):  # full float32 logits: the same run as inline
        assert results[mode]["loss"] == pytest.approx(results["inline"]["loss"], rel=1e-4)
        assert results[mode]["test_ppl"] == pytest.approx(results["inline"]["test_ppl"], rel=1e-4)
    assert results["server-top8"]["loss"] == pytest.approx(results["cache-top8"]["loss"], rel=1e-4)
    assert results["cache-top8"]["loss"] != pytest.approx(results["inline"]["loss"], rel=1e-6)  # it was cut


def test_token_cache_has_a_row_per_token_and_a_changed_teacher_is_never_read(tmp_path: Path, cache_dir: Path) -> None:
    cfg = validate_config(lm_raw(tmp_path, cache_dir, teacher={"mode": "cache", "top_k": 4}))
    setup = prepare(cfg, 0)
    records, built = node_logits(cfg, setup, 1, 0)
    assert len(records) == setup.dataset.train_x.numel() and records["ids"].shape == (len(records), 4)
    assert records.dtype.itemsize == 4 * (4 + 2) + 4  # 28 bytes a token (the mass fill's tail) against 257 * 4
    assert not node_logits(cfg, setup, 1, 0)[1]  # built once, then read
    raw = lm_raw(tmp_path, cache_dir, teacher={"mode": "cache", "top_k": 4})
    raw["nodes"]["train"]["epochs"] = 3  # the teacher node trained longer: new weights, a new cache key
    longer = validate_config(raw)
    again, rebuilt = node_logits(longer, prepare(longer, 0), 1, 0)  # another teacher: a new entry, never the old one
    assert rebuilt and not np.array_equal(again["values"], records["values"])


@pytest.mark.slow
def test_a_language_model_sweep_reports_perplexity_and_its_students_generate(
    tmp_path: Path, cache_dir: Path, ray_session: Any, capsys: pytest.CaptureFixture
) -> None:
    raw = lm_raw(
        tmp_path,
        cache_dir,
        methods=[
            {"name": "ce", "label": "no-kd"},
            {"name": "kd", "label": "kd-tuned", "temperature": [1, 2], "alpha": 0.5},
            {"name": "gkd", "on_policy": 0.25},
        ],
    )
    config = tmp_path / "lm.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(config)]) == 0
    out = next((tmp_path / "runs").iterdir())
    text = (out / "results.md").read_text()
    assert "| method | setting | start ppl | val ppl | test ppl | next-token acc % | test gain (nats/token) |" in text
    assert "(best of 2 on val_ppl)" in text and "## Samples (greedy, from each row's chosen student)" in text
    assert "test ppl" in capsys.readouterr().out
    student = next((out / "students" / "gkd").glob("seed*.pt"))
    model = raykd.load_student(student)
    assert model(torch.zeros(1, 16, dtype=torch.int64)).shape == (1, 16, 257)  # (batch, seq, vocab) logits
    continuation = raykd.generate(student, "alpha beta", new_tokens=8)
    assert isinstance(continuation, str) and len(continuation.encode()) <= 8  # 8 byte tokens at most
