"""Sampling text from a trained model."""

from __future__ import annotations

import torch
from torch import Tensor

from growformer.config import is_finite
from growformer.model import Transformer


@torch.no_grad()
def sample(
    model: Transformer,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.8,
    top_k: int | None = 50,
    seed: int = 0,
) -> Tensor:
    """Extend ``prompt`` (1-D int64 token ids) by ``max_new_tokens`` sampled tokens.

    ``temperature``: a finite number ≥ 0; 0 is greedy decoding. Every positive one gives a
    distribution (the logits less their maximum, divided in float64): one so small that the
    quotients pass the float range samples greedily (ties at random), one so large that they
    vanish samples the ``top_k`` tokens uniformly. The context is cropped to the model's
    ``max_seq_len`` (the last tokens are kept). Reproducible for a seed. Returns prompt + new
    tokens, 1-D.
    """
    if not (is_finite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number ≥ 0, got {temperature}")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = prompt.clone()
    for _ in range(max_new_tokens):
        context = tokens[-model.config.max_seq_len :].unsqueeze(0)
        logits = model(context)[0, -1].float()
        if temperature == 0:
            next_token = logits.argmax()
        else:
            if top_k is not None and top_k < logits.numel():
                cutoff = logits.topk(top_k).values[-1]
                logits = logits.masked_fill(logits < cutoff, float("-inf"))
            probs = torch.softmax((logits.double() - logits.max()) / temperature, dim=-1)
            next_token = torch.multinomial(probs.cpu(), 1, generator=generator)[0]
        tokens = torch.cat([tokens, next_token.view(1).to(tokens.device)])
    return tokens
