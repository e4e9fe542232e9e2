"""Language models per token, in plain PyTorch: text data, tokenizers, the GPT, token rows, GKD, on-policy batches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from raykd.config import DataConfig, validate_config
from raykd.data import load_dataset
from raykd.data.documents import document_nodes, document_splits
from raykd.data.text import PAD_TARGET, paragraphs, sequences
from raykd.data.tokenizers import ByteTokenizer, bpe, tokenizer_from_record, tokenizer_record
from raykd.engine import Batch, TransferBatches, fit, rows, token_scores
from raykd.errors import ConfigError
from raykd.lm.gpt import gpt
from raykd.lm.onpolicy import OnPolicyBatches
from raykd.methods.base import UNLABELLED, Method, StepLogits
from raykd.methods.gkd import GeneralisedKD, generalised_jsd
from raykd.methods.kd import KnowledgeDistillation
from raykd.methods.skew import SkewKL
from raykd.teacher.protocol import TeacherLogits

TEXT = "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs; ünïcödé too."


def test_byte_and_bpe_tokenizers_round_trip(tmp_path: Path) -> None:
    byte = ByteTokenizer()
    assert byte.decode(byte.encode(TEXT)) == TEXT and max(byte.encode(TEXT)) < byte.vocab_size - 1
    trained = bpe([TEXT * 20, "another line of text " * 30], 300, tmp_path)
    assert trained.decode(trained.encode(TEXT)) == TEXT and trained.vocab_size <= 300
    again = bpe([TEXT * 20, "another line of text " * 30], 300, tmp_path)  # read from the cache, same merges
    assert again.encode(TEXT) == trained.encode(TEXT)
    assert len(list((tmp_path / "tokenizers").glob("bpe-*.json"))) == 1
    stored = tokenizer_from_record(tokenizer_record(trained))  # what a student file carries
    assert stored.encode(TEXT) == trained.encode(TEXT) and tokenizer_from_record(tokenizer_record(byte)) == byte


def test_documents_become_next_token_rows_with_padding_masked() -> None:
    x, y, owner = sequences([[1, 2, 3, 4, 5], [7, 8]], seq_len=4, eos=9)
    assert x.tolist() == [[1, 2, 3, 4], [5, 9, 9, 9], [7, 8, 9, 9]]
    assert y.tolist() == [[2, 3, 4, 5], [9, -1, -1, -1], [8, 9, -1, -1]]  # eos is a target; padding is not
    assert owner.tolist() == [0, 0, 1] and PAD_TARGET == UNLABELLED
    assert all(len(p) <= 60 or "\n\n" not in p for p in paragraphs("a" * 50 + "\n\n" + "b" * 50 + "\n\n" + "c", 60))


def _lm_data(tmp_path: Path) -> Any:
    cfg = DataConfig(task="lm", dataset="tests.conftest:lm_documents", seq_len=16, doc_chars=100)
    return cfg, load_dataset(cfg, tmp_path)


def test_splits_and_node_shares_take_whole_documents(tmp_path: Path) -> None:
    cfg, data = _lm_data(tmp_path)
    assert data.tokens and data.num_classes == 257 and data.train_x.dtype == torch.int64
    splits, rest = document_splits(data, cfg, seed=3)
    partition = validate_config(
        {"methods": [{"name": "ce"}], "partition": {"num_nodes": 2, "min_samples": 1}}
    ).partition
    nodes = document_nodes(data, rest, partition, seed=3)
    groups = [splits.val, splits.pool, *(n.train for n in nodes), *(n.val for n in nodes)]
    docs = [set(data.documents[g].tolist()) for g in groups]
    for i, a in enumerate(docs):  # no document is cut between two splits or two nodes
        assert all(not (a & b) for b in docs[i + 1 :])
    assert sum(len(g) for g in groups) == len(data.train_x)  # every training row is somewhere


def test_gpt_is_causal_and_gives_a_row_per_token() -> None:
    torch.manual_seed(0)
    model = gpt((8,), 50, 16, 2, heads=2).eval()
    ids = torch.randint(0, 50, (2, 8))
    changed = ids.clone()
    changed[:, 5] = (ids[:, 5] + 1) % 50
    out, out_changed = model(ids), model(changed)
    assert out.shape == (2, 8, 50) and rows(out).shape == (16, 50)
    assert torch.allclose(out[:, :5], out_changed[:, :5], atol=1e-6) and not torch.allclose(
        out[:, 5:], out_changed[:, 5:]
    )


class Recording(Method):
    """KD that keeps what the engine handed it, to compare with flattening by hand."""

    name = "recording"

    def __init__(self) -> None:
        self.seen: list[tuple[StepLogits, torch.Tensor, torch.Tensor]] = []

    def losses(self, logits: StepLogits, targets: torch.Tensor, distill: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append((logits, targets, distill))
        return KnowledgeDistillation(2.0, 0.5).losses(logits, targets, distill)


class FrozenTeacher(TeacherLogits):
    def __init__(self, teacher: torch.nn.Module) -> None:
        self.teacher = teacher

    def __call__(self, batch: Batch) -> tuple[list[torch.Tensor], None]:
        with torch.no_grad():
            return [self.teacher(batch.x)], None


def test_a_token_level_step_is_the_row_method_on_flattened_logits(tmp_path: Path) -> None:
    """Every method sees one row per real token: targets are next tokens, pool tokens are distill-only, padding is
    in no term, and the loss equals the row loss on the hand-flattened (batch * seq, vocab) logits."""
    _, data = _lm_data(tmp_path)
    torch.manual_seed(0)
    student, teacher = gpt((16,), 257, 16, 1, heads=2), gpt((16,), 257, 16, 1, heads=2)
    labelled, pool = np.arange(0, 10), np.arange(10, 20)
    method = Recording()
    fit(
        [student],
        method,
        TransferBatches(data.train_x, data.train_y, labelled, pool, 4, True, seed=0),
        1,
        lr=0.0,
        teacher=FrozenTeacher(teacher),
    )
    same = TransferBatches(data.train_x, data.train_y, labelled, pool, 4, True, seed=0)  # the same first epoch
    for (logits, targets, distill), batch in zip(method.seen, same, strict=True):
        seq = batch.index.view(-1, 16)[:, 0] // 16  # each row's sequence
        expected_targets = torch.where(seq[:, None] < 10, data.train_y[seq], UNLABELLED).reshape(-1)
        assert torch.equal(targets, expected_targets) and torch.equal(
            batch.index, (seq[:, None] * 16 + torch.arange(16)).reshape(-1)
        )
        assert torch.equal(distill, (data.train_y[seq] != PAD_TARGET).reshape(-1))  # real positions only
        by_hand = student(data.train_x[seq]).reshape(-1, 257)
        assert torch.allclose(logits.students[0], by_hand, atol=1e-5)
        for kind in (KnowledgeDistillation(2.0, 0.5), SkewKL(0.1, 1.0, 0.5), GeneralisedKD(0.5, 1.0, 0.9)):
            ours = kind.losses(logits, targets, distill)["loss"]
            flat = kind.losses(StepLogits([by_hand], [teacher(data.train_x[seq]).reshape(-1, 257)]), targets, distill)
            assert torch.allclose(ours, flat["loss"], atol=1e-5)


def test_generalised_jsd_ends_are_forward_and_reverse_kl_and_its_middle_the_formula() -> None:
    generator = torch.Generator().manual_seed(0)
    log_p = F.log_softmax(torch.randn(6, 9, generator=generator), 1)
    log_q = F.log_softmax(torch.randn(6, 9, generator=generator), 1)
    kl = lambda a, b: (a.exp() * (a - b)).sum(1)  # noqa: E731 - KL(a || b) from log-probabilities
    assert torch.allclose(generalised_jsd(log_p, log_q, 0.0), kl(log_p, log_q), atol=1e-6)
    assert torch.allclose(generalised_jsd(log_p, log_q, 1.0), kl(log_q, log_p), atol=1e-6)
    beta = 0.3
    log_m = torch.log(beta * log_p.exp() + (1 - beta) * log_q.exp())
    expected = beta * kl(log_p, log_m) + (1 - beta) * kl(log_q, log_m)
    assert torch.allclose(generalised_jsd(log_p, log_q, beta), expected, atol=1e-6)
    assert (generalised_jsd(log_p, log_p, beta).abs() < 1e-6).all()


def test_on_policy_batches_replace_a_fraction_with_the_students_own_continuations(tmp_path: Path) -> None:
    _, data = _lm_data(tmp_path)
    torch.manual_seed(0)
    student = gpt((16,), 257, 16, 1, heads=2)

    def batches() -> TransferBatches:  # two copies with the same first epoch
        return TransferBatches(data.train_x, data.train_y, np.arange(16), np.arange(16, 24), 8, True, seed=0)

    plain, sampled = list(batches()), list(OnPolicyBatches(batches(), student, 0.5, seed=0))
    for before, after in zip(plain, sampled, strict=True):
        changed = (before.x != after.x).any(dim=1)
        sampled_rows = (after.targets.view(-1, 16) == UNLABELLED).all(1) & (
            before.targets.view(-1, 16) != UNLABELLED
        ).any(1)
        assert int(sampled_rows.sum()) == 4  # half of the 8 labelled sequences, never a pool sequence
        assert not changed[~sampled_rows].any()  # the rest untouched
        assert torch.equal(after.x[sampled_rows, :8], before.x[sampled_rows, :8])  # the prompt is the text's first half
        assert after.distill.view(-1, 16)[sampled_rows].all() and torch.equal(after.index, before.index)


def test_token_scores_count_real_positions_only() -> None:
    class Fixed(torch.nn.Module):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            logits = torch.zeros(*ids.shape, 4)
            logits[..., 1] = 10.0  # always predicts token 1, almost surely
            return logits

    y = torch.tensor([[1, 1, 2, -1], [1, -1, -1, -1]])
    acc, nll = token_scores(Fixed(), torch.zeros(2, 4, dtype=torch.int64), y)
    ce = F.cross_entropy(torch.tensor([[0.0, 10, 0, 0]]), torch.tensor([2])).item()
    assert acc == pytest.approx(3 / 4) and nll == pytest.approx(
        (3 * F.cross_entropy(torch.tensor([[0.0, 10, 0, 0]]), torch.tensor([1])).item() + ce) / 4
    )
    assert math.isfinite(nll)


def test_a_checkpoint_made_for_another_vocabulary_is_one_line_before_any_work(tmp_path: Path) -> None:
    from raykd.nodes import dataset_of
    from tests.conftest import lm_raw

    other = tmp_path / "bpe300.pt"
    torch.save(gpt((16,), 300, 32, 1, heads=2).state_dict(), other)  # a teacher trained with a 300-token vocabulary
    raw = lm_raw(tmp_path, tmp_path / "cache")
    raw["nodes"]["models"][1]["checkpoint"] = str(other)
    with pytest.raises(ConfigError) as refused:
        dataset_of(validate_config(raw))
    assert str(refused.value).startswith(f"nodes.models.1.checkpoint: {other} does not fit the model: key ")
    assert "is (300, 32) in the file but (257, 32) in the model" in str(refused.value)
    assert not (tmp_path / "cache" / "nodes").exists()  # nothing trained or cached


def test_a_folder_of_text_files_gives_topics_by_sub_folder_and_a_loose_file_its_own(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    for topic in ("cooking", "sailing"):
        (root / topic).mkdir(parents=True)
        for i in range(6):
            (root / topic / f"{i}.txt").write_text(f"{topic} text number {i}. " * 20, encoding="utf-8")
    (root / "notes.txt").write_text("a loose file is a topic of its own. " * 20)
    (root / "ignored.md").write_text("not text")
    cfg = DataConfig(task="lm", dataset="text", root=root, seq_len=16, doc_chars=200)
    data = load_dataset(cfg, tmp_path / "cache")
    assert len(set(data.topics.tolist())) == 3  # cooking, sailing, notes (the .md is not read)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="gave 0 non-empty documents"):
        load_dataset(DataConfig(task="lm", dataset="text", root=empty), tmp_path / "cache")


def test_miniplm_keeps_the_documents_the_teacher_knows_best_and_the_transfer_runs_on_them(tmp_path: Path) -> None:
    from raykd.experiment import run_trial, transfer_rows
    from raykd.lm.miniplm import top_documents
    from raykd.nodes import load_node, prepare
    from tests.conftest import lm_raw

    documents = np.array([0, 0, 1, 2, 2, 2, 3])
    rows = np.arange(7)
    assert top_documents(rows, documents, {0: 0.5, 1: -1.0, 2: 2.0, 3: 0.0}, 0.5).tolist() == [0, 1, 3, 4, 5]
    raw = lm_raw(tmp_path, tmp_path / "cache")
    raw["transfer"]["miniplm"] = 0.5
    cfg = validate_config(raw)
    setup = prepare(cfg, 0)
    load = lambda node: load_node(cfg, setup, node, 0)  # noqa: E731
    cut = transfer_rows(cfg, setup, load, load(0))
    for before, after in ((setup.nodes[0].train, cut.nodes[0].train), (setup.splits.pool, cut.splits.pool)):
        kept, had = set(setup.dataset.documents[after]), set(setup.dataset.documents[before])
        assert kept < had and len(kept) == max(1, round(0.5 * len(had)))  # half of the documents, whole ones
    assert np.array_equal(cut.splits.val, setup.splits.val)  # evaluation splits untouched
    assert run_trial(cfg, "kd", {"temperature": 1.0, "alpha": 0.5}, 0)["epoch"] == 1
    with pytest.raises(Exception, match="transfer.miniplm: selects documents of text"):
        validate_config({"methods": [{"name": "ce"}], "transfer": {"miniplm": 0.5}})
