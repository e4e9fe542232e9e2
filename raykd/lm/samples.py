"""Greedy samples from distilled language-model students, for the report and for ``raykd.generate``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from raykd.data.tokenizers import Tokenizer, tokenizer_from_record
from raykd.lm.generate import greedy_text
from raykd.students import load_student, read_student


def student_tokenizer(path: Path) -> Tokenizer:
    """The tokenizer a language-model student file carries (it was trained with it)."""
    info = read_student(path)["info"]
    if info.get("task") != "lm":
        raise ValueError(f"student file {path} is not a language model (data.task lm)")
    return tokenizer_from_record(info)


def loaded(path: Path) -> tuple[nn.Module, Tokenizer, int]:
    """A language-model student file's model, tokenizer and context (its sequence length), read once."""
    return load_student(path), student_tokenizer(path), read_student(path)["input_shape"][0]


def generate(path: str | Path, prompt: str, new_tokens: int = 60) -> str:
    """The greedy continuation of ``prompt`` by the language-model student saved at ``path``."""
    model, tokenizer, context = loaded(Path(path))
    return greedy_text(model, tokenizer, prompt, new_tokens, context)


def prompts(test_x: torch.Tensor, tokenizer: Tokenizer, count: int = 2, length: int = 32) -> list[str]:
    """``count`` prompts: the first ``length`` tokens of the test sequences that read most like prose (the largest
    share of letters; documentation is full of grammar and code whose continuation is mostly whitespace)."""
    texts = [tokenizer.decode(row[:length].tolist()) for row in test_x]
    letters = torch.tensor([sum(c.isalpha() for c in text) / max(len(text), 1) for text in texts])
    return [texts[i] for i in sorted(letters.argsort(descending=True, stable=True)[:count].tolist())]


def samples_section(students: dict[str, Path], test_x: torch.Tensor, new_tokens: int = 48) -> str:
    """A Markdown section: each prompt continued greedily by each row's chosen student, side by side."""
    if not students:
        return ""
    models = {name: loaded(path) for name, path in students.items()}  # one read of each file
    lines = ["\n## Samples (greedy, from each row's chosen student)\n"]
    for prompt in prompts(test_x, next(iter(models.values()))[1]):
        lines.append(f"\nPrompt: `{_one_line(prompt)}`\n\n| method | continuation |\n|---|---|")
        for name, (model, tokenizer, context) in models.items():
            lines.append(f"| {name} | `{_one_line(greedy_text(model, tokenizer, prompt, new_tokens, context))}` |")
    return "\n".join(lines) + "\n"


def _one_line(text: str) -> str:
    """Text for a Markdown table cell: newlines shown as ⏎, pipes and backticks escaped."""
    return text.replace("\n", "⏎").replace("|", "\\|").replace("`", "'")
