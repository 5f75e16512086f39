"""Attention modules.

`MultiHeadAttention` is the transformer's scaled dot-product attention on `F.scaled_dot_product_attention`, with a
split projection API (`project_kv` + `attend`) so that decoders can cache keys and values. `BahdanauAttention`
(additive) and `LuongAttention` (multiplicative, "general") are the single-head attentions of the RNN models.

Masks follow one convention everywhere: boolean, True = a real position that may be attended to.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from seqtool.models.dropout import dropout


def attention_mask(
    key_padding_mask: Tensor | None, causal: bool, query_len: int, key_len: int, device: torch.device
) -> Tensor | None:
    """Boolean attention mask broadcastable to (batch, heads, query_len, key_len), True = attend; None = attend all.

    The causal part is aligned bottom-right: query i (of the last `query_len` positions) sees keys up to
    `key_len - query_len + i`, which is what a decoder with cached past keys needs (one query sees every key).
    """
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :]  # (batch, 1, 1, key_len)
    if causal and query_len > 1:
        future = torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(key_len - query_len)
        mask = future if mask is None else mask & future  # (batch, 1, query_len, key_len)
    return mask


def _attention_with_dropout(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) with dropout, times v: what SDPA computes, with `seqtool.models.dropout`."""
    scores = torch.matmul(q * (q.size(-1) ** -0.5), k.transpose(-2, -1))  # (batch, heads, q_len, key_len)
    if causal:
        mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(dropout(torch.softmax(scores, dim=-1), p, training=True), v)


class MultiHeadAttention(nn.Module):
    """Multi-head scaled dot-product attention (Vaswani et al., 2017) on `F.scaled_dot_product_attention`."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({heads})")
        self.heads = heads
        self.head_dim = d_model // heads
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model, bias=bias)
        self.k_proj = nn.Linear(d_model, d_model, bias=bias)
        self.v_proj = nn.Linear(d_model, d_model, bias=bias)
        self.out_proj = nn.Linear(d_model, d_model, bias=bias)
        self.qkv_proj: nn.Linear | None = None  # q, k and v projections in one matmul, made by `fuse_qkv`

    def fuse_qkv(self) -> None:
        """Add `qkv_proj`, the q/k/v projections stacked into one Linear, for `project_qkv` at inference.

        Fewer and larger matmuls per decoder step; the separate projections stay for training and inspection.
        """
        bias = self.q_proj.bias is not None
        fused = nn.Linear(self.q_proj.in_features, 3 * self.q_proj.out_features, bias=bias)
        fused = fused.to(device=self.q_proj.weight.device, dtype=self.q_proj.weight.dtype)
        with torch.no_grad():
            projections = (self.q_proj, self.k_proj, self.v_proj)
            fused.weight.copy_(torch.cat([p.weight for p in projections]))
            if bias:
                fused.bias.copy_(torch.cat([p.bias for p in projections]))
        self.qkv_proj = fused.requires_grad_(False)

    def _split_heads(self, x: Tensor) -> Tensor:
        """(batch, len, d_model) -> (batch, heads, len, head_dim)."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.heads, self.head_dim).transpose(1, 2)

    def project_kv(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Project keys and values once: x (batch, key_len, d_model) -> k, v each (batch, heads, key_len, head_dim)."""
        return self._split_heads(self.k_proj(x)), self._split_heads(self.v_proj(x))

    def project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Self-attention projections of x (batch, len, d_model): q, k, v each (batch, heads, len, head_dim)."""
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:
            q, k, v = self.qkv_proj(x).chunk(3, dim=-1)
        return self._split_heads(q), self._split_heads(k), self._split_heads(v)

    def attend(
        self,
        query: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """Attend from query (batch, q_len, d_model) over projected k, v (batch, heads, key_len, head_dim).

        key_padding_mask: (batch, key_len) bool, True = real key. Returns (batch, q_len, d_model).
        """
        q = self._split_heads(self.q_proj(query))  # (batch, heads, q_len, head_dim)
        return self.attend_projected(q, k, v, key_padding_mask, causal)

    def attend_projected(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """`attend` with the queries already projected: q (batch, heads, q_len, head_dim)."""
        q_len, key_len = q.size(2), k.size(2)
        # The fused causal path needs square (top-left aligned) masks and no padding; otherwise pass an explicit mask.
        is_causal = causal and key_padding_mask is None and q_len == key_len
        mask = None if is_causal else attention_mask(key_padding_mask, causal, q_len, key_len, q.device)
        if self.training and self.dropout > 0.0 and q.device.type == "cpu":
            # SDPA on CPU runs its math path when dropout is on, with the slow Bernoulli mask: same maths, cheap mask
            out = _attention_with_dropout(q, k, v, mask, is_causal, self.dropout)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0, is_causal=is_causal
            )  # (batch, heads, q_len, head_dim)
        batch = out.size(0)
        return self.out_proj(out.transpose(1, 2).reshape(batch, q_len, self.heads * self.head_dim))

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
    ) -> Tensor:
        """query (batch, q_len, d_model), key/value (batch, key_len, d_model) -> (batch, q_len, d_model)."""
        k, v = self._split_heads(self.k_proj(key)), self._split_heads(self.v_proj(value))
        return self.attend(query, k, v, key_padding_mask, causal)

    def weights(
        self,
        query: Tensor,
        key: Tensor,
        key_padding_mask: Tensor | None = None,
        causal: bool = False,
        average_heads: bool = True,
    ) -> Tensor:
        """Explicit softmax(QK^T / sqrt(head_dim)) for inspection and plotting (slow path, no dropout).

        Returns (batch, q_len, key_len) averaged over heads, or (batch, heads, q_len, key_len).
        """
        q = self._split_heads(self.q_proj(query))
        k = self._split_heads(self.k_proj(key))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)  # (batch, heads, q_len, key_len)
        mask = attention_mask(key_padding_mask, causal, q.size(2), k.size(2), q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(dim=-1)
        return weights.mean(dim=1) if average_heads else weights


def _masked_attention(scores: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Softmax over masked scores (batch, q_len, key_len) and the weighted sum of keys (batch, key_len, key_dim)."""
    weights = scores.masked_fill(~mask[:, None, :], float("-inf")).softmax(dim=-1)
    return torch.bmm(weights.to(keys.dtype), keys), weights  # (batch, q_len, key_dim), (batch, q_len, key_len)


class BahdanauAttention(nn.Module):
    """Additive attention (Bahdanau et al., 2015): score(q, k) = v^T tanh(W q + U k).

    `forward` accepts one query per sentence (batch, query_dim) -> context (batch, key_dim), weights (batch, key_len),
    or several (batch, q_len, query_dim) -> (batch, q_len, key_dim), (batch, q_len, key_len).
    """

    def __init__(self, query_dim: int, key_dim: int, attn_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, attn_dim, bias=False)
        self.key_proj = nn.Linear(key_dim, attn_dim)
        self.energy = nn.Linear(attn_dim, 1, bias=False)  # v; a bias here would cancel out in the softmax

    def precompute(self, keys: Tensor) -> Tensor:
        """U k for all keys, computed once per sentence: (batch, key_len, key_dim) -> (batch, key_len, attn_dim)."""
        return self.key_proj(keys)

    def forward(
        self, query: Tensor, keys: Tensor, mask: Tensor, projected_keys: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Context and weights of `query` over `keys` (batch, key_len, key_dim); mask (batch, key_len) True = real."""
        single = query.dim() == 2
        q = self.query_proj(query[:, None] if single else query)  # (batch, q_len, attn_dim)
        uk = self.precompute(keys) if projected_keys is None else projected_keys  # (batch, key_len, attn_dim)
        scores = self.energy(torch.tanh(q[:, :, None, :] + uk[:, None, :, :])).squeeze(-1)  # (batch, q_len, key_len)
        context, weights = _masked_attention(scores, keys, mask)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)


class LuongAttention(nn.Module):
    """Multiplicative "general" attention (Luong et al., 2015): score(q, k) = q^T W k.

    Computed as (W' q) . k: only the query is projected, so there is nothing to precompute per sentence.
    Same shapes as `BahdanauAttention.forward`.
    """

    def __init__(self, query_dim: int, key_dim: int) -> None:
        super().__init__()
        self.query_proj = nn.Linear(query_dim, key_dim, bias=False)

    def forward(self, query: Tensor, keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Context and weights of `query` over `keys` (batch, key_len, key_dim); mask (batch, key_len) True = real."""
        single = query.dim() == 2
        q = self.query_proj(query[:, None] if single else query)  # (batch, q_len, key_dim)
        scores = torch.bmm(q, keys.transpose(1, 2))  # (batch, q_len, key_len)
        context, weights = _masked_attention(scores, keys, mask)
        return (context[:, 0], weights[:, 0]) if single else (context, weights)
