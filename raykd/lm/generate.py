"""Text from a language model: greedy continuations for reports, sampled ones for on-policy distillation."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from raykd.data.tokenizers import Tokenizer
from raykd.engine import device_of


@torch.no_grad()
def continue_ids(
    model: nn.Module,
    prompt: Tensor,
    new_tokens: int,
    context: int,
    temperature: float = 0.0,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``prompt`` (batch, length) extended by ``new_tokens`` ids: greedy at temperature 0, else sampled.

    The model sees at most its last ``context`` tokens. Its train/eval mode is restored afterwards, so a
    student sampled mid-epoch keeps training as before.
    """
    training = model.training
    model.eval()
    ids = prompt.to(device_of(model))
    for _ in range(new_tokens):
        last = model(ids[:, -context:])[:, -1]
        if temperature > 0:
            probs = torch.softmax(last.float() / temperature, dim=-1)
            step = torch.multinomial(probs.cpu(), 1, generator=generator).to(ids.device)
        else:
            step = last.argmax(dim=-1, keepdim=True)
        ids = torch.cat([ids, step], dim=1)
    model.train(training)
    return ids.cpu()


def greedy_text(model: nn.Module, tokenizer: Tokenizer, prompt: str, new_tokens: int, context: int) -> str:
    """The greedy continuation of ``prompt`` as text (the prompt itself not repeated)."""
    ids = torch.tensor([tokenizer.encode(prompt)[-context:]], dtype=torch.int64)
    out = continue_ids(model, ids, new_tokens, context)
    return tokenizer.decode(out[0, ids.shape[1] :].tolist())
