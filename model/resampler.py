"""The perceiver resampler of MiniCPM-V 2.6: one cross-attention layer that maps a piece to 64 vectors.

Facts that a naive port gets wrong (MODEL_SPEC §5), each of which this module follows:
* the vision features go through ``kv_proj`` first, then ``ln_kv``;
* the 2-D sin-cos position is added to the **keys only**, never the values or queries;
* the sin-cos table puts the column (w) index in the first half of the width;
* there is no residual connection, and ``proj`` is a raw matrix applied as ``x @ proj``.

Parameter names are the checkpoint's (``attn.in_proj_weight`` packs q|k|v rows as
``nn.MultiheadAttention`` does), so ``resampler.*`` loads one to one; the table is computed, not stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def sincos_table(embed_dim: int, height: int, width: int) -> np.ndarray:
    """2-D sin-cos table ``[height, width, embed_dim]``, float32: ``[sin(cω), cos(cω), sin(rω), cos(rω)]``."""
    quarter = embed_dim // 4
    omega = np.arange(quarter, dtype=np.float32)
    omega /= embed_dim / 4.0
    omega = 1.0 / 10000**omega
    cols = np.arange(width, dtype=np.float32)
    rows = np.arange(height, dtype=np.float32)
    col_angles = np.broadcast_to(np.einsum("w,d->wd", cols, omega)[None], (height, width, quarter))
    row_angles = np.broadcast_to(np.einsum("h,d->hd", rows, omega)[:, None], (height, width, quarter))
    table = np.concatenate(
        [np.sin(col_angles), np.cos(col_angles), np.sin(row_angles), np.cos(row_angles)], axis=-1
    )
    return table.astype(np.float32)


class PackedCrossAttention(nn.Module):
    """Multi-head attention with ``nn.MultiheadAttention``'s packed parameters, computed with SDPA."""

    def __init__(self, embed_dim: int, num_heads: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_valid: torch.Tensor | None
    ) -> torch.Tensor:
        """``query [Q, D]`` (shared), ``key``/``value [B, L, D]``, ``key_valid [B, L]`` -> ``[B, Q, D]``."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)
        batch, length, _ = key.shape
        heads, head_dim = self.num_heads, self.embed_dim // self.num_heads
        q = F.linear(query, w_q, b_q).reshape(1, -1, heads, head_dim).transpose(1, 2)
        k = F.linear(key, w_k, b_k).reshape(batch, length, heads, head_dim).transpose(1, 2)
        v = F.linear(value, w_v, b_v).reshape(batch, length, heads, head_dim).transpose(1, 2)
        mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q.expand(batch, -1, -1, -1), k, v, attn_mask=mask)
        out = out.transpose(1, 2).reshape(batch, -1, self.embed_dim)
        return self.out_proj(out)


class Resampler(nn.Module):
    """``[B, L, kv_dim]`` vision features of pieces with ``tgt_sizes`` -> ``[B, num_queries, embed_dim]``."""

    def __init__(
        self, num_queries: int, embed_dim: int, num_heads: int, kv_dim: int, eps: float = 1e-6
    ) -> None:
        super().__init__()
        self.num_queries = num_queries
        self.embed_dim = embed_dim
        self.query = nn.Parameter(torch.empty(num_queries, embed_dim))
        self.kv_proj = nn.Linear(kv_dim, embed_dim, bias=False)
        self.attn = PackedCrossAttention(embed_dim, num_heads)
        self.ln_q = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_kv = nn.LayerNorm(embed_dim, eps=eps)
        self.ln_post = nn.LayerNorm(embed_dim, eps=eps)
        self.proj = nn.Parameter(torch.empty(embed_dim, embed_dim))
        self._table: dict[tuple[torch.device, int, int], torch.Tensor] = {}

    def position_table(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """The float32 table on ``device``, cached at 70×70 and grown when a larger piece comes."""
        for (dev, h, w), table in self._table.items():
            if dev == device and h >= height and w >= width:
                return table
        h, w = max(height, 70), max(width, 70)
        table = torch.from_numpy(sincos_table(self.embed_dim, h, w)).to(device)
        self._table = {k: v for k, v in self._table.items() if k[0] != device}
        self._table[(device, h, w)] = table
        return table

    def forward(self, features: torch.Tensor, tgt_sizes: Sequence[tuple[int, int]]) -> torch.Tensor:
        batch, length, _ = features.shape
        x = self.ln_kv(self.kv_proj(features))
        q = self.ln_q(self.query)
        sizes = [(int(h), int(w)) for h, w in tgt_sizes]
        table = self.position_table(max(h for h, _ in sizes), max(w for _, w in sizes), x.device)
        pos = x.new_zeros((batch, length, self.embed_dim), dtype=torch.float32)
        for i, (h, w) in enumerate(sizes):
            pos[i, : h * w] = table[:h, :w].reshape(h * w, -1)
        key_valid = None
        counts = [h * w for h, w in sizes]
        if min(counts) < length:
            key_valid = (torch.arange(length)[None, :] < torch.tensor(counts)[:, None]).to(x.device)
        out = self.attn(q, x + pos.to(x.dtype), x, key_valid)
        return self.ln_post(out) @ self.proj
