"""The canonical transformer: pure PyTorch, one module per idea.

Parameter names (the contract every expansion and adapter relies on)::

    tok_emb.weight              [vocab, hidden]
    pos_emb.weight              [max_seq_len, hidden]        (position == "learned")
    emb_norm.weight/.bias       [hidden]                      (norm_placement == "post")
    layers.{i}.attn_norm.weight/.bias                         (.bias with norm == "layer")
    layers.{i}.attn.q.weight    [n_heads * qk_head_dim, hidden]     .bias with attn_bias
    layers.{i}.attn.k.weight    [n_kv_heads * qk_head_dim, hidden]  .bias with attn_bias
    layers.{i}.attn.v.weight    [n_kv_heads * v_head_dim, hidden]   .bias with attn_bias
    layers.{i}.attn.o.weight    [hidden, n_heads * v_head_dim]      .bias with attn_out_bias
    layers.{i}.mlp_norm.weight/.bias
    layers.{i}.mlp.up.weight    [ffn, hidden]   (.gate.weight too with mlp == "swiglu")
    layers.{i}.mlp.down.weight  [hidden, ffn]                   .bias on up/gate/down with mlp_bias
    final_norm.weight/.bias                                   (final_norm)
    lm_head.weight              [vocab, hidden]               (not tie_embeddings)
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from growformer.config import ConfigError, ModelConfig

# The weight dtypes a model computes in (growth draws normals in them; float8 cannot).
WEIGHT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def device_memory(device: torch.device | str) -> int | None:
    """Bytes of memory on ``device``: the machine's physical memory for CPU, the GPU's for
    CUDA; None where it is not known (meta and other devices)."""
    device = torch.device(device)
    if device.type == "cpu":
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(device).total_memory
    return None


def check_fits_in_memory(
    config: ModelConfig, dtype: torch.dtype, device: torch.device | str, what: str = "the model"
) -> None:
    """``ConfigError`` when the weights of ``config`` alone, in ``dtype``, are larger than all
    of ``device``'s memory: sizes that validate but could never be allocated fail by name
    instead of in the allocator (or the out-of-memory killer). Nothing when its memory is
    unknown."""
    have = device_memory(device)
    n = config.num_parameters()
    need = n * dtype.itemsize
    if have is not None and need > have:
        raise ConfigError(
            f"{what} has {n:,} parameters, {need / 2**30:,.1f} GiB in {_dtype_name(dtype)}: "
            f"more than the {have / 2**30:,.1f} GiB of memory of {torch.device(device)}"
        )


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def check_weight_dtypes(state: Mapping[str, Tensor], *, one: bool = False) -> None:
    """Raise ``ValueError`` unless every weight has one of ``WEIGHT_DTYPES`` (and, with
    ``one``, all the same); the message counts each dtype found and names one weight of it."""
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, tensor in state.items():
        by_dtype.setdefault(tensor.dtype, []).append(name)
    if set(by_dtype) <= set(WEIGHT_DTYPES) and not (one and len(by_dtype) > 1):
        return
    found = "; ".join(
        f"{_dtype_name(dtype)} ({len(names)}, e.g. {names[0]})" for dtype, names in by_dtype.items()
    )
    allowed = ", ".join(_dtype_name(d) for d in WEIGHT_DTYPES)
    share = "share one dtype of" if one else "be of"
    raise ValueError(f"weights must {share} {allowed}; got {found}")


class Norm(nn.Module):
    """RMSNorm (gain only) or LayerNorm (gain and bias); low-precision inputs compute in float32."""

    def __init__(self, hidden: int, kind: str, eps: float) -> None:
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden))
        self.bias = nn.Parameter(torch.zeros(hidden)) if kind == "layer" else None

    def forward(self, x: Tensor) -> Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        if self.kind == "rms":
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
            y = y * self.weight.to(y.dtype)
        else:
            y = F.layer_norm(
                x, x.shape[-1:], self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps
            )
        return y.to(dtype)


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, dtype: torch.dtype, device: torch.device
) -> tuple[Tensor, Tensor]:
    """cos and sin tables, [seq_len, head_dim // 2], for frequencies ``theta^(-2i/head_dim)``.

    Computed in float64 and cast, so two models whose frequencies agree mathematically (a grown
    qk head dim with base ``theta^(k_new/k_old)``) agree to the round-off of ``dtype``.
    """
    exponent = torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim
    inv_freq = theta**-exponent
    angles = torch.arange(seq_len, dtype=torch.float64, device=device)[:, None] * inv_freq
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` [..., T, D] in the rotate-half layout: dimension i pairs with i + D/2."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class Linear(nn.Linear):
    """``nn.Linear`` that skips its default init on the meta device, where it writes nothing:
    ``model_from_state`` builds every growth's model there and assigns the weights, and
    ``Transformer.reset_parameters`` initializes real ones."""

    def reset_parameters(self) -> None:
        if not self.weight.is_meta:
            super().reset_parameters()


class Attention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.q = Linear(c.hidden, c.n_heads * c.qk_head_dim, bias=c.attn_bias)
        self.k = Linear(c.hidden, c.n_kv_heads * c.qk_head_dim, bias=c.attn_bias)
        self.v = Linear(c.hidden, c.n_kv_heads * c.v_head_dim, bias=c.attn_bias)
        self.o = Linear(c.n_heads * c.v_head_dim, c.hidden, bias=c.attn_out_bias)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        c = self.config
        b, t, _ = x.shape
        q = self.q(x).view(b, t, c.n_heads, c.qk_head_dim).transpose(1, 2)
        k = self.k(x).view(b, t, c.n_kv_heads, c.qk_head_dim).transpose(1, 2)
        v = self.v(x).view(b, t, c.n_kv_heads, c.v_head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if c.group_size > 1:
            k = k.repeat_interleave(c.group_size, dim=1)
            v = v.repeat_interleave(c.group_size, dim=1)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=c.causal, scale=1.0 / math.sqrt(c.qk_head_dim)
        )
        return self.o(y.transpose(1, 2).reshape(b, t, c.n_heads * c.v_head_dim))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.kind = c.mlp
        self.up = Linear(c.hidden, c.ffn, bias=c.mlp_bias)
        self.gate = Linear(c.hidden, c.ffn, bias=c.mlp_bias) if c.mlp == "swiglu" else None
        self.down = Linear(c.ffn, c.hidden, bias=c.mlp_bias)

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "gelu":
            h = F.gelu(self.up(x))
        elif self.kind == "gelu_tanh":
            h = F.gelu(self.up(x), approximate="tanh")
        else:
            h = F.relu(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.post_norm = config.norm_placement == "post"
        self.attn_norm = Norm(config.hidden, config.norm, config.norm_eps)
        self.attn = Attention(config)
        self.mlp_norm = Norm(config.hidden, config.norm, config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor] | None) -> Tensor:
        if self.post_norm:
            x = self.attn_norm(x + self.attn(x, rope))
            return self.mlp_norm(x + self.mlp(x))
        x = x + self.attn(self.attn_norm(x), rope)
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nn.Module):
    """Decoder (``causal=True``) or encoder over token ids [B, T] → logits [B, T, vocab]."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        self.tok_emb = nn.Embedding(c.vocab_size, c.hidden)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.hidden) if c.position == "learned" else None
        self.emb_norm = Norm(c.hidden, c.norm, c.norm_eps) if c.norm_placement == "post" else None
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.final_norm = Norm(c.hidden, c.norm, c.norm_eps) if c.final_norm else None
        self.lm_head = None if c.tie_embeddings else Linear(c.hidden, c.vocab_size, bias=False)
        if not self.tok_emb.weight.is_meta:
            self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, residual writers scaled by 1/sqrt(2·n_layers), zero
        biases, unit norm gains."""
        std = self.config.init_std
        writer_std = std / math.sqrt(2 * self.config.n_layers)
        for name, p in self.named_parameters():
            if name.endswith("norm.weight"):
                nn.init.ones_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            elif name.endswith(("attn.o.weight", "mlp.down.weight")):
                nn.init.normal_(p, 0.0, writer_std)
            else:
                nn.init.normal_(p, 0.0, std)

    @property
    def output_embedding(self) -> Tensor:
        return self.tok_emb.weight if self.lm_head is None else self.lm_head.weight

    def hidden_states(self, tokens: Tensor, layer_order: Sequence[int] | None = None) -> Tensor:
        """The residual stream after the last block and the final norm: [B, T, hidden].

        ``layer_order``: the blocks to run, by index; repeats share weights (Apollo's deeper
        effective models). Default: every block once, in order.
        """
        c = self.config
        t = tokens.shape[1]
        if t > c.max_seq_len:
            raise ValueError(f"sequence length {t} exceeds max_seq_len={c.max_seq_len}")
        x = self.tok_emb(tokens)
        if self.pos_emb is not None:
            x = x + self.pos_emb.weight[:t]
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        rope = None
        if c.position == "rope":
            rope = rope_cos_sin(t, c.qk_head_dim, c.rope_theta, x.dtype, x.device)
        for index in range(len(self.layers)) if layer_order is None else layer_order:
            x = self.layers[index](x, rope)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def forward(self, tokens: Tensor, layer_order: Sequence[int] | None = None) -> Tensor:
        return F.linear(self.hidden_states(tokens, layer_order), self.output_embedding)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def model_from_state(config: ModelConfig, state: dict[str, Tensor]) -> Transformer:
    """A Transformer whose parameters *are* the given tensors (no copy, no random init).

    Raises ``KeyError`` naming missing or unexpected weights, ``ValueError`` on a shape mismatch
    or when the weights are not all of one floating-point dtype.
    """
    with torch.device("meta"):
        model = Transformer(config)
    expected = {name: p.shape for name, p in model.named_parameters()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise KeyError(
            f"weights do not match the config: missing {missing}, unexpected {unexpected}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != tuple(shape):
            raise ValueError(
                f"weight {name} has shape {tuple(state[name].shape)}, "
                f"the config needs {tuple(shape)}"
            )
    check_weight_dtypes(state, one=True)
    model.load_state_dict(state, assign=True)
    return model
