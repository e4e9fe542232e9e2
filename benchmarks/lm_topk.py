"""Top-k teacher logits for a language model: what the dropped vocabulary becomes (``teacher.top_k_fill``).

    python benchmarks/lm_topk.py

Data: the embedded pydoc corpus (CPython's documentation topics), raykd's BPE tokenizer with a vocabulary of
1,024 trained on the training documents, sequences of 64 tokens; raykd's fixed test documents are the held-out
text. The training documents are split in two, whole documents at a time: the teacher's (a ``gpt`` of width
128, depth 2, pre-trained here with cross-entropy) and the transfer set (the student's only text). The student
is a ``gpt`` of width 64, depth 1, trained from scratch on the transfer set with raykd's KD loss (T = 1,
alpha = 0.9) against the teacher's logits: full, or top-k for k in 8, 32, 128 through raykd's own cache
records (``top_k_rows``) and expansion (``read_rows``), with each fill: ``min`` (every dropped token at the
row's smallest kept logit) and ``mass`` (the teacher's own tail probability spread evenly over them).
Same seed, same initial student and same batch order for every variant. Reported:
- bytes per token of the cache record (full: float32 logits);
- the teacher's probability mass on its top k (T = 1), and the tail mass the expanded rows give the dropped
  tokens at T = 1 (the teacher's own tail is 1 minus the kept mass);
- the KD term's error against full logits for one fixed student (the CE-only student, seed 0) on the held-out
  text: mean over tokens of |KL_k - KL_full| divided by the mean of KL_full, at T = 1 and T = 2;
- the student's test perplexity after distillation (mean ± std over seeds), and plain CE on the same budget;
  and its difference from the full-logit student's, seed by seed (the seeds' students differ far more than
  the variants of one seed do).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from raykd.config import DataConfig
from raykd.data import load_dataset
from raykd.data.datasets import Dataset
from raykd.engine import rows, token_scores
from raykd.lm.gpt import gpt
from raykd.methods.base import UNLABELLED, StepLogits, distillation_kl, soft_probabilities
from raykd.methods.kd import KnowledgeDistillation
from raykd.teacher.cache import read_rows, top_k_rows

TOP_K, FILLS, SEEDS = (8, 32, 128), ("min", "mass"), (0, 1, 2)
SEQ_LEN, VOCAB, BATCH = 64, 1024, 32
TEACHER = {"width": 128, "depth": 2, "epochs": 8, "lr": 3e-3}
STUDENT = {"width": 64, "depth": 1, "epochs": 4, "lr": 3e-3}
KD = KnowledgeDistillation(temperature=1.0, alpha=0.9)
TRANSFER_SHARE = 0.4  # of the training documents: the student's text; the rest is the teacher's
CPU = torch.device("cpu")

Variant = tuple[int, str] | None  # (k, fill), or None for full logits


def split(data: Dataset) -> tuple[Tensor, Tensor]:
    """Training rows of the teacher's documents and of the transfer set's, whole documents apart (seed 0)."""
    documents = np.unique(data.documents)
    transfer = np.random.default_rng(0).permutation(documents)[: round(TRANSFER_SHARE * len(documents))]
    mask = torch.from_numpy(np.isin(data.documents, transfer))
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def train(model: nn.Module, x: Tensor, epochs: int, lr: float, seed: int, loss: Callable[..., Tensor]) -> nn.Module:
    """AdamW over shuffled batches (the order fixed by ``seed``); ``loss(model, rows_index)`` per batch."""
    optimiser, order = torch.optim.AdamW(model.parameters(), lr=lr), torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=order).split(BATCH):
            optimiser.zero_grad()
            loss(model, batch).backward()
            optimiser.step()
    return model.eval()


def ce_loss(x: Tensor, y: Tensor) -> Callable[..., Tensor]:
    return lambda model, b: F.cross_entropy(rows(model(x[b])), y[b].reshape(-1), ignore_index=UNLABELLED)


def kd_loss(x: Tensor, y: Tensor, teacher: Callable[[Tensor], Tensor]) -> Callable[..., Tensor]:
    """raykd's KD loss per token; ``teacher(batch)`` gives the batch's teacher rows (batch * seq_len, vocab)."""

    def loss(model: nn.Module, b: Tensor) -> Tensor:
        targets = y[b].reshape(-1)
        logits = StepLogits([rows(model(x[b]))], [teacher(b)])
        return KD.losses(logits, targets, targets != UNLABELLED)["loss"]

    return loss


def token_index(batch: Tensor) -> np.ndarray:
    return (batch[:, None] * SEQ_LEN + torch.arange(SEQ_LEN)).flatten().numpy()


@torch.no_grad()
def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([rows(model(x[i : i + 64])) for i in range(0, len(x), 64)])


def new_student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return gpt((SEQ_LEN,), VOCAB, STUDENT["width"], STUDENT["depth"])


def perplexity(model: nn.Module, data: Dataset) -> float:
    return float(np.exp(token_scores(model, data.test_x, data.test_y)[1]))


def expanded(full: Tensor, variant: tuple[int, str]) -> tuple[np.ndarray, Tensor]:
    """The cache's records of ``full`` for (k, fill), and the dense rows raykd reads back from them."""
    records = top_k_rows(full, variant[0], "float32", variant[1])
    return records, read_rows(records, np.arange(len(records)), VOCAB, CPU)


def kd_errors(full: Tensor, dense: Tensor, student: Tensor, real: Tensor) -> dict[str, float]:
    """mean |KL_k - KL_full| / mean KL_full over the real held-out tokens, at T = 1 and T = 2."""
    errors = {}
    for t in (1.0, 2.0):
        exact = distillation_kl(soft_probabilities([full], t), student, t)[real]
        cut = distillation_kl(soft_probabilities([dense], t), student, t)[real]
        errors[f"err_T{t:g}"] = float((cut - exact).abs().mean() / exact.mean())
    return errors


def held_out(data: Dataset, teacher: nn.Module, fixed: nn.Module) -> dict[Variant, dict[str, float]]:
    """Per variant: bytes per token, kept and read tail mass, KD-term errors, on the held-out text."""
    full, student = logits_of(teacher, data.test_x), logits_of(fixed, data.test_x)
    real = data.test_y.reshape(-1) != UNLABELLED
    out: dict[Variant, dict[str, float]] = {None: {"bytes": VOCAB * 4, "kept": 1.0, "tail_read": 0.0}}
    for variant in ((k, fill) for k in TOP_K for fill in FILLS):
        records, dense = expanded(full, variant)
        ids = torch.from_numpy(records["ids"].astype(np.int64))
        kept = full.softmax(1).gather(1, ids).sum(1)[real]
        tail_read = 1 - dense.softmax(1).gather(1, ids).sum(1)[real]
        out[variant] = {
            "bytes": records.itemsize,
            "kept": float(kept.mean()),
            "tail_read": float(tail_read.mean()),
            **kd_errors(full, dense, student, real),
        }
    return out


def distil(
    data: Dataset, x: Tensor, y: Tensor, teacher_full: Tensor, seed: int
) -> tuple[dict[Variant | str, float], nn.Module]:
    """Test perplexity of a student distilled from full and from each top-k variant, and of plain CE (also the
    CE student itself: the fixed student of the KD-term errors)."""
    ppl: dict[Variant | str, float] = {}
    ce = train(new_student(seed), x, STUDENT["epochs"], STUDENT["lr"], seed, ce_loss(x, y))
    ppl["ce"] = perplexity(ce, data)
    full_rows = kd_loss(x, y, lambda b: teacher_full[token_index(b)])
    ppl[None] = perplexity(train(new_student(seed), x, STUDENT["epochs"], STUDENT["lr"], seed, full_rows), data)
    for variant in ((k, fill) for k in TOP_K for fill in FILLS):
        records = top_k_rows(teacher_full, variant[0], "float32", variant[1])
        cut = kd_loss(x, y, lambda b, r=records: read_rows(r, token_index(b), VOCAB, CPU))
        ppl[variant] = perplexity(train(new_student(seed), x, STUDENT["epochs"], STUDENT["lr"], seed, cut), data)
    return ppl, ce


def spread(values: list[float], sign: str = "") -> str:
    mean = f"{statistics.mean(values):{sign}.1f}"
    return f"{mean} ± {statistics.stdev(values):.1f}" if len(values) > 1 else mean


def paired(ppl: dict[Variant | str, list[float]], variant: Variant | str) -> str:
    """The variant's perplexity minus full logits', seed by seed (same initial student and batches)."""
    return spread([a - b for a, b in zip(ppl[variant], ppl[None], strict=True)], "+")


def table(errors: dict[Variant, dict[str, float]], ppl: dict[Variant | str, list[float]], teacher_ppl: float) -> str:
    lines = [
        "| teacher logits | fill | bytes / token | teacher mass on top-k (T=1) | tail mass as read (T=1) "
        "| KD-term error T=1 | KD-term error T=2 | student test ppl | minus full's, paired |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| full (float32) | - | {VOCAB * 4} | 1 | 0 | 0 (reference) | 0 (reference) | {spread(ppl[None])} | 0 |",
    ]
    for variant in ((k, fill) for k in TOP_K for fill in FILLS):
        e = errors[variant]
        lines.append(
            f"| top-{variant[0]} | {variant[1]} | {e['bytes']} | {e['kept']:.3f} | {e['tail_read']:.3f} "
            f"| {100 * e['err_T1']:.1f} % | {100 * e['err_T2']:.1f} % | {spread(ppl[variant])} "
            f"| {paired(ppl, variant)} |"
        )
    ce = f"{spread(ppl['ce'])} | {paired(ppl, 'ce')}"
    lines.append(f"| no KD (plain CE, same budget) | - | - | - | - | - | - | {ce} |")
    return "\n".join([*lines, f"\nTeacher test perplexity: {teacher_ppl:.1f}."])


def main() -> None:
    torch.set_num_threads(1)
    started, load = time.perf_counter(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache:
        cfg = DataConfig(task="lm", dataset="pydoc", tokenizer="bpe", vocab_size=VOCAB, seq_len=SEQ_LEN)
        data = load_dataset(cfg, Path(cache))
    assert data.num_classes == VOCAB
    own, transfer = split(data)
    x, y = data.train_x[transfer], data.train_y[transfer]
    print(f"{len(own)} teacher rows, {len(x)} transfer rows, {len(data.test_x)} test rows of {SEQ_LEN}", flush=True)
    torch.manual_seed(0)
    teacher = gpt((SEQ_LEN,), VOCAB, TEACHER["width"], TEACHER["depth"])
    tx, ty = data.train_x[own], data.train_y[own]
    train(teacher, tx, TEACHER["epochs"], TEACHER["lr"], 0, ce_loss(tx, ty)).requires_grad_(False)
    print(f"teacher: test ppl {perplexity(teacher, data):.1f} ({time.perf_counter() - started:.0f} s)", flush=True)
    teacher_full = logits_of(teacher, x)
    ppl: dict[Variant | str, list[float]] = {}
    for seed in SEEDS:
        result, ce_student = distil(data, x, y, teacher_full, seed)
        if seed == SEEDS[0]:
            errors = held_out(data, teacher, ce_student)
        for variant, value in result.items():
            ppl.setdefault(variant, []).append(value)
        print(f"seed {seed} done ({time.perf_counter() - started:.0f} s)", flush=True)
    print(table(errors, ppl, perplexity(teacher, data)))
    print(f"\n{time.perf_counter() - started:.0f} s; load average {load:.2f} -> {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
