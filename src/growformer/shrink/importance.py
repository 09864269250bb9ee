"""How much each part of a model matters, measured with forward hooks over calibration batches.

The model runs one block at a time over all calibration batches: only that block's weights are
read from ``state`` (which may load lazily from disk), so a large parent never needs to be
in memory whole; the activations of every batch at the current depth are kept instead.

- Hidden dimension ``j``: the mean of ``|x_j|`` over tokens, averaged over the residual stream
  at every block boundary (the embeddings' output and each block's output). One ranking is
  shared by all layers, since the residual stream ties them.
- FFN neuron ``n`` of a layer: the mean norm of what it writes, ``|a_n| · ‖W_down[:, n]‖``
  (``a`` the input of the down projection).
- Query head ``h`` of a layer: the mean norm of its write ``‖W_O[:, h] y_h‖`` (``y_h`` the
  head's attention output). A kv group's importance is the sum of its query heads'.
- Block change: the mean over tokens of ``1 - cos(input, output)`` of each block; a block that
  barely changes its input is the cheapest to remove.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from growformer.config import ModelConfig
from growformer.model import Transformer


@dataclass(frozen=True)
class Importance:
    """Importance scores of a model (float64, CPU), all ≥ 0; see the module docstring.

    ``hidden`` [hidden], ``heads`` [n_layers, n_heads], ``ffn`` [n_layers, ffn],
    ``block_change`` [n_layers]; for a post-norm model, ``norm_sq[name]`` [hidden] is the mean
    square of each coordinate of the normalized input of norm ``name`` (``emb_norm``,
    ``layers.{i}.attn_norm``, ``layers.{i}.mlp_norm``) before its gain (empty for pre-norm);
    ``tokens`` is the number of calibration tokens measured.
    """

    hidden: Tensor
    heads: Tensor
    ffn: Tensor
    block_change: Tensor
    norm_sq: dict[str, Tensor]
    tokens: int

    def kv_groups(self, group_size: int) -> Tensor:
        """[n_layers, n_kv_heads]: the summed importance of each kv head's query heads."""
        n_layers, n_heads = self.heads.shape
        return self.heads.view(n_layers, n_heads // group_size, group_size).sum(-1)

    def check(self, config: ModelConfig) -> None:
        """Raise ``ValueError`` unless the shapes match ``config``."""
        expected = {
            "hidden": (config.hidden,),
            "heads": (config.n_layers, config.n_heads),
            "ffn": (config.n_layers, config.ffn),
            "block_change": (config.n_layers,),
        }
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(
                    f"importance.{name} has shape {tuple(getattr(self, name).shape)}, "
                    f"the source config needs {shape}"
                )


class _Embedded(Exception):
    """Raised by a hook to stop the forward pass once the first block's input is known."""

    def __init__(self, args: tuple) -> None:
        super().__init__()
        self.args = args


@torch.no_grad()
def measure_importance(
    config: ModelConfig, state: Mapping[str, Tensor], batches: Iterable[Tensor]
) -> Importance:
    """Measure the ``Importance`` of the model ``(config, state)`` on token batches [B, T].

    ``state`` holds the canonical weights (see ``growformer.model``); each is read when its
    block runs and dropped after. Computes in float64 if the embedding is float64, else in
    float32, on the embedding's device. Raises ``ValueError`` when there are no batches or a
    batch is not a 2-D tensor of ids within the vocabulary and ``max_seq_len``.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("calibration needs at least one batch of token ids")
    for tokens in batches:
        _check_batch(config, tokens)
    embedding = state["tok_emb.weight"]
    dtype = torch.float64 if embedding.dtype == torch.float64 else torch.float32
    device = embedding.device
    del embedding  # a lazy state reads each tensor when asked: hold none longer than needed
    with torch.device("meta"):
        model = Transformer(config)
    model.eval()
    norm_sq: dict[str, Tensor] = {}
    inputs = _embed(model, state, batches, dtype, device, norm_sq)
    n_tokens = sum(t.numel() for t in batches)
    hidden = sum(_abs_sum(x) for x, _ in inputs)
    heads = torch.zeros(config.n_layers, config.n_heads, dtype=torch.float64)
    ffn = torch.zeros(config.n_layers, config.ffn, dtype=torch.float64)
    change = torch.zeros(config.n_layers, dtype=torch.float64)
    for i, block in enumerate(model.layers):
        _load(block, state, f"layers.{i}.", dtype)
        hooks = _LayerHooks(block, config, f"layers.{i}.", norm_sq)
        outputs = []
        for x, rope in inputs:
            y = block(x, rope)
            change[i] += float((1 - F.cosine_similarity(x, y, dim=-1)).double().sum())
            hidden += _abs_sum(y)
            outputs.append((y, rope))
        heads[i], ffn[i] = hooks.close()
        block.to_empty(device="meta")
        inputs = outputs
    return Importance(
        hidden=hidden / (n_tokens * (config.n_layers + 1)),
        heads=heads / n_tokens,
        ffn=ffn / n_tokens,
        block_change=change / n_tokens,
        norm_sq={name: sums / n_tokens for name, sums in norm_sq.items()},
        tokens=n_tokens,
    )


class _LayerHooks:
    """Forward pre-hooks on a block: W_O's and W_down's sum, over tokens, the norm of what each
    query head and each FFN neuron writes to the residual stream; in a post-norm block the
    norms' add their normalized inputs' squares to ``norm_sq``."""

    def __init__(
        self, block: nn.Module, config: ModelConfig, prefix: str, norm_sq: dict[str, Tensor]
    ) -> None:
        c = config
        o = block.attn.o.weight.view(c.hidden, c.n_heads, c.v_head_dim)
        # ‖W_O,h y_h‖² = y_hᵀ (W_O,hᵀ W_O,h) y_h: one v-by-v Gram matrix per head.
        self.gram = torch.einsum("dhv,dhu->hvu", o, o)
        self.down_norms = block.mlp.down.weight.norm(dim=0).double().cpu()
        self.heads = torch.zeros(c.n_heads, dtype=torch.float64)
        self.ffn = torch.zeros(c.ffn, dtype=torch.float64)
        self.shape = (c.n_heads, c.v_head_dim)
        self.handles = [
            block.attn.o.register_forward_pre_hook(self._attention),
            block.mlp.down.register_forward_pre_hook(self._mlp),
            *(
                _norm_hook(getattr(block, n), prefix + n, norm_sq)
                for n in ("attn_norm", "mlp_norm")
            ),
        ]

    def _attention(self, module: nn.Module, args: tuple[Tensor]) -> None:
        y = args[0].unflatten(-1, self.shape)
        squares = (torch.einsum("...hv,hvu->...hu", y, self.gram) * y).sum(-1)
        self.heads += squares.clamp(min=0).sqrt().flatten(0, -2).double().sum(0).cpu()

    def _mlp(self, module: nn.Module, args: tuple[Tensor]) -> None:
        self.ffn += _abs_sum(args[0])

    def close(self) -> tuple[Tensor, Tensor]:
        """Remove the hooks; the summed head and neuron write norms."""
        for handle in self.handles:
            handle.remove()
        return self.heads, self.ffn * self.down_norms


def _embed(
    model: Transformer,
    state: Mapping[str, Tensor],
    batches: list[Tensor],
    dtype: torch.dtype,
    device: torch.device,
    norm_sq: dict[str, Tensor],
) -> list[tuple[Tensor, tuple[Tensor, Tensor] | None]]:
    """The first block's inputs ``(x, rope)`` for every batch, computed by the model's own
    ``hidden_states`` (stopped by a hook at the first block), with only the embedding-side
    weights loaded (and released after); a post-norm ``emb_norm`` adds its statistics to
    ``norm_sq``."""
    names = [n for n in ("tok_emb", "pos_emb", "emb_norm") if getattr(model, n) is not None]
    for name in names:
        _load(getattr(model, name), state, f"{name}.", dtype)

    def stop(module: nn.Module, args: tuple) -> None:
        raise _Embedded(args)

    handles = [model.layers[0].register_forward_pre_hook(stop)]
    if model.emb_norm is not None:
        handles.append(_norm_hook(model.emb_norm, "emb_norm", norm_sq))
    inputs = []
    try:
        for tokens in batches:
            try:
                model.hidden_states(tokens.to(device))
            except _Embedded as embedded:
                inputs.append(embedded.args)
    finally:
        for handle in handles:
            handle.remove()
        for name in names:
            getattr(model, name).to_empty(device="meta")
    return inputs


def _norm_hook(norm: nn.Module, name: str, norm_sq: dict[str, Tensor]) -> RemovableHandle:
    """Add the per-coordinate squares of ``norm``'s normalized input to ``norm_sq[name]``."""

    def hook(module: nn.Module, args: tuple[Tensor]) -> None:
        norm_sq[name] = norm_sq.get(name, 0) + _normalized_sq(args[0], module.kind)

    return norm.register_forward_pre_hook(hook)


def _normalized_sq(x: Tensor, kind: str) -> Tensor:
    """The sum over tokens of each coordinate's square after normalization without the gain:
    ``x / rms(x)`` (``kind="rms"``) or ``(x - mean) / std`` (``"layer"``); eps ignored."""
    x = x.double()
    if kind == "layer":
        x = x - x.mean(-1, keepdim=True)
    return _abs_sum(x.square() / x.square().mean(-1, keepdim=True).clamp_min(1e-300))


def _load(module: nn.Module, state: Mapping[str, Tensor], prefix: str, dtype: torch.dtype) -> None:
    """Give ``module`` (built on the meta device) the weights ``state[prefix + name]``."""
    weights = {name: state[prefix + name].to(dtype) for name, _ in module.named_parameters()}
    module.load_state_dict(weights, assign=True)


def _abs_sum(x: Tensor) -> Tensor:
    """The sum of ``|x|`` over every dimension but the last, as float64 on the CPU."""
    return x.abs().flatten(0, -2).double().sum(0).cpu()


def _check_batch(config: ModelConfig, tokens: Tensor) -> None:
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype != torch.long:
        raise ValueError("calibration batches must be int64 tensors of token ids [batch, seq]")
    if tokens.shape[1] > config.max_seq_len:
        raise ValueError(
            f"calibration sequence length {tokens.shape[1]} exceeds max_seq_len="
            f"{config.max_seq_len}"
        )
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= config.vocab_size):
        raise ValueError(
            f"calibration token ids must be in [0, {config.vocab_size}) (the model's vocab_size)"
        )
