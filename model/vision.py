"""The SigLIP-400M "navit" vision tower: transformers' Idefics2VisionTransformer with official position ids.

The weights and layers are transformers' own (``vpm.*`` keys map one to one). Two things differ from the
stock forward, and both are why this subclass exists:

* position ids come from ``tgt_sizes`` with the official ``arange`` formula. The stock embeddings compute
  ``index * (1/n)`` and land in different buckets for n = 49, 58, 77, ... (MODEL_SPEC §4.2), which changes
  the output of real images (686 px wide is 49 patches);
* the input is a batch of pieces of different sizes laid out as strips of 14-px patches, padded to the
  longest, so one padded batch serves frames of any shape.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.idefics2.modeling_idefics2 import Idefics2VisionTransformer


@lru_cache(maxsize=1024)
def official_buckets(n: int, num_patches_per_side: int) -> tuple[int, ...]:
    """Bucket of each of ``n`` patches along one side, exactly as the official code computes it.

    The step is the float32 value of ``1 / n`` with ``n`` an int32 tensor, and the coordinates come
    from CPU ``torch.arange(0, 1 - 1e-6, step)``; both details decide the buckets for some ``n``.
    """
    if n < 1:
        raise ValueError(f"patch count must be >= 1, got {n}")
    boundaries = torch.arange(1 / num_patches_per_side, 1.0, 1 / num_patches_per_side)
    step = 1 / torch.tensor(n, dtype=torch.int32)
    fractions = torch.arange(0, 1 - 1e-6, step)  # type: ignore[call-overload]  # a tensor step, as officially
    buckets = torch.bucketize(fractions, boundaries, right=True)
    if buckets.numel() != n:  # cannot happen for n < 1e6; guards the float reasoning above
        raise AssertionError(f"official arange gave {buckets.numel()} coordinates for n={n}")
    return tuple(int(b) for b in buckets)


@lru_cache(maxsize=1024)
def _piece_position_ids(h: int, w: int, num_patches_per_side: int) -> np.ndarray:
    rows = np.asarray(official_buckets(h, num_patches_per_side), dtype=np.int64)
    cols = np.asarray(official_buckets(w, num_patches_per_side), dtype=np.int64)
    ids = (rows[:, None] * num_patches_per_side + cols[None, :]).reshape(-1)
    ids.setflags(write=False)
    return ids


def position_ids(
    tgt_sizes: Sequence[tuple[int, int]], length: int, num_patches_per_side: int
) -> torch.Tensor:
    """``[B, length]`` position-embedding ids, row-major per piece, 0 on padding (as the official code)."""
    out = np.zeros((len(tgt_sizes), length), dtype=np.int64)
    for i, (h, w) in enumerate(tgt_sizes):
        out[i, : h * w] = _piece_position_ids(int(h), int(w), num_patches_per_side)
    return torch.from_numpy(out)


def pieces_to_strips(pieces: Sequence[torch.Tensor], patch_size: int) -> torch.Tensor:
    """Lay normalised ``[3, H, W]`` pieces out as one zero-padded batch of patch strips.

    Patch n = r·(W/p) + c of a piece fills columns ``n·p … n·p+p-1`` of a ``[3, p, L·p]`` strip, so a
    stride-p convolution over the strip yields the patch tokens in row-major order and the pieces of
    one batch can differ in shape. Returns ``[B, 3, p, Lmax·p]``.
    """
    strips = []
    for piece in pieces:
        c, height, width = piece.shape
        h, w = height // patch_size, width // patch_size
        if h * patch_size != height or w * patch_size != width:
            raise ValueError(f"piece of {width}x{height} px is not a multiple of the {patch_size}-px patch")
        strip = piece.reshape(c, h, patch_size, w, patch_size).permute(0, 2, 1, 3, 4)
        strips.append(strip.reshape(c, patch_size, h * w * patch_size))
    longest = max(s.shape[-1] for s in strips)
    batch = strips[0].new_zeros((len(strips), strips[0].shape[0], patch_size, longest))
    for i, strip in enumerate(strips):
        batch[i, :, :, : strip.shape[-1]] = strip
    return batch


class VisionTower(Idefics2VisionTransformer):
    """Idefics2VisionTransformer fed with patch strips and ``tgt_sizes`` (see the module docstring)."""

    def forward(  # type: ignore[override]
        self, strips: torch.Tensor, tgt_sizes: Sequence[tuple[int, int]]
    ) -> torch.Tensor:
        """``strips [B, 3, p, Lmax·p]``, ``tgt_sizes`` (h, w) per piece -> ``[B, Lmax, D]`` hidden states."""
        embeddings = self.embeddings
        batch = strips.shape[0]
        patches = embeddings.patch_embedding(strips.to(embeddings.patch_embedding.weight.dtype))
        hidden = patches.flatten(2).transpose(1, 2)  # [B, Lmax, D]
        length = hidden.shape[1]
        ids = position_ids(tgt_sizes, length, embeddings.num_patches_per_side).to(hidden.device)
        hidden = hidden + embeddings.position_embedding(ids)

        counts = [int(h) * int(w) for h, w in tgt_sizes]
        mask = None
        if min(counts) < length:  # decided on the host: no device sync
            valid = torch.arange(length)[None, :] < torch.tensor(counts)[:, None]
            mask = create_bidirectional_mask(
                config=self.config, inputs_embeds=hidden, attention_mask=valid.to(hidden.device)
            )
        hidden = self.encoder(inputs_embeds=hidden, attention_mask=mask).last_hidden_state
        return self.post_layernorm(hidden).reshape(batch, length, -1)
