"""Training FLOPs estimate per token."""

from __future__ import annotations

from growformer.config import ModelConfig


def matmul_params(config: ModelConfig) -> int:
    """Parameters that take part in a matrix multiply per token: every block's projections and
    the output head (embedding lookups and norms cost no multiply)."""
    c = config
    attn = c.hidden * (c.n_heads * c.qk_head_dim + c.n_kv_heads * (c.qk_head_dim + c.v_head_dim))
    attn += c.n_heads * c.v_head_dim * c.hidden
    mlp = c.hidden * c.ffn * (3 if c.mlp == "swiglu" else 2)
    return c.n_layers * (attn + mlp) + c.hidden * c.vocab_size


def train_flops_per_token(config: ModelConfig, seq_len: int) -> float:
    """Forward + backward FLOPs per trained token: ``6·N`` for the ``N`` matmul parameters plus
    ``6·L·H·T·(d_qk + d_v)`` for attention scores and weighted values over a sequence of ``T``
    (the PaLM appendix count, causal masking not discounted)."""
    c = config
    attention = 6 * c.n_layers * c.n_heads * seq_len * (c.qk_head_dim + c.v_head_dim)
    return 6.0 * matmul_params(c) + attention
