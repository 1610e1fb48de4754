"""MiniCPM-V 2.6 on transformers: vision tower, resampler, Qwen2 LLM, embedding merge, frame embeddings.

``MiniCPMV`` is an ``nn.Module`` whose parameter names are the official checkpoint's (``vpm.*``,
``resampler.*``, ``llm.*``). The public API:

    m = MiniCPMV.from_pretrained(path_or_hub_id, device=None, dtype=None)
    prep = m.prepare(msgs, use_image_id=None, max_slice_nums=None, system_prompt="")
    logits = m.logits(prep)                 # [T, vocab]
    text = m.chat(msgs, sampling=True, stream=False, max_new_tokens=2048, ...)
    frames = m.encode_frames(images, max_slice_nums=2)   # list[FrameEmbedding]

A ``FrameEmbedding`` may stand wherever a PIL image may stand in ``msgs``: its cached resampler output
is written over the placeholder rows instead of encoding pixels again, which gives exactly what the
pixels give (the vision tower sees every piece alone; padding never leaks across pieces).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import Qwen2ForCausalLM
from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

from model import processing
from model.configuration import MiniCPMVConfig
from model.errors import CheckpointError
from model.generation import (
    GenerationRequest,
    check_generation_settings,
    generate_ids,
    generation_kwargs,
    stream_text,
)
from model.loading import load_weights, resolve_checkpoint, resolve_device, resolve_dtype
from model.prompting import parse_messages_argument, with_leading_image
from model.quantization import bitsandbytes, quantization_of
from model.resampler import Resampler
from model.tokenizer import load_tokenizer
from model.vision import VisionTower, pieces_to_strips

log = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class FrameEmbedding:
    """One frame encoded once: its slicing layout and the resampler output of its pieces.

    ``embeddings`` is ``[n_pieces, query_num, D]`` on the model's device and dtype (source first, then
    tiles row-major); ``grid`` is ``(cols, rows)`` or None when the frame was not sliced;
    ``tgt_sizes`` holds ``(h, w)`` in patches per piece. It carries no pixels.
    """

    original_size: tuple[int, int]
    grid: tuple[int, int] | None
    tgt_sizes: tuple[tuple[int, int], ...]
    embeddings: torch.Tensor
    max_slice_nums: int

    @property
    def n_pieces(self) -> int:
        return len(self.tgt_sizes)

    @property
    def layout(self) -> processing.ImageLayout:
        """What the prompt builder needs to write this frame's placeholder (same as its pixels give)."""
        return processing.ImageLayout(grid=self.grid, tgt_sizes=self.tgt_sizes)


class MiniCPMV(nn.Module):
    """The whole model; build it with ``from_pretrained`` (or ``model.tiny.build_tiny_model``)."""

    def __init__(
        self,
        config: MiniCPMVConfig,
        tokenizer: Any,
        processor_config: processing.ProcessorConfig,
        *,
        vision_attention: str = "sdpa",
        llm_attention: str = "sdpa",
    ) -> None:
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer
        self.processor_config = processor_config
        self.vpm = VisionTower(config.idefics2_vision_config(vision_attention))
        self.resampler = Resampler(
            config.query_num, config.embed_dim, config.resampler_heads, config.vision.hidden_size
        )
        self.llm = Qwen2ForCausalLM(config.qwen2_config(llm_attention))
        self._pixel_lut: dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        device: str | torch.device | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> MiniCPMV:
        """Load a checkpoint folder laid out like the official repo, or a hub id (see ``model.loading``)."""
        folder = resolve_checkpoint(path_or_hub_id)
        config = MiniCPMVConfig.from_folder(folder)
        processor_config = processing.ProcessorConfig.from_folder(folder)  # checks it against config.json
        tokenizer = load_tokenizer(folder)
        target = resolve_device(device)
        target_dtype = resolve_dtype(target, dtype)
        with torch.device("meta"):
            model = cls(config, tokenizer, processor_config)
        dropped: tuple[str, ...] = ()
        if config.drop_vision_last_layer:
            dropped = (f"vpm.encoder.layers.{config.vision.num_hidden_layers - 1}.",)
        quantization = quantization_of(folder)
        if quantization is not None:
            bitsandbytes()  # before any tensor is read: a missing package is the whole answer
        load_weights(model, folder, target, target_dtype, ignore_prefixes=dropped, quantization=quantization)
        model.finish_materialising(target)
        kind = f"{quantization.quant_type} 4-bit layers, " if quantization else ""
        log.info("loaded MiniCPM-V 2.6 from %s on %s (%s%s)", folder, target, kind, target_dtype)
        return model.eval()

    def finish_materialising(self, device: torch.device) -> None:
        """Rebuild non-persistent buffers (RoPE frequencies) that stayed on the meta device."""
        self.llm.model.rotary_emb = Qwen2RotaryEmbedding(self.llm.config).to(device)
        left = [n for n, t in [*self.named_parameters(), *self.named_buffers()] if t.is_meta]
        if left:
            raise CheckpointError(f"tensors left without values after loading: {', '.join(left[:8])}")

    @property
    def device(self) -> torch.device:
        return self.llm.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.llm.model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------ vision
    def _normalise(self, piece: np.ndarray) -> torch.Tensor:
        """uint8 ``(H, W, 3)`` -> normalised ``[3, H, W]`` on the device, through a 256-entry table.

        The table is the processor's own arithmetic applied to every uint8 value, so it is exact; only
        uint8 crosses to an accelerator. On the CPU numpy's ``take`` reads the table with the uint8
        values as they are (torch's indexing first widens them to int64: four times slower, a fifth
        of a small model's encode).
        """
        device = self.device
        lut = self._pixel_lut.get(device)
        if lut is None:  # [3, 256]: every uint8 value through the processor's own arithmetic
            ramp = np.arange(256, dtype=np.uint8).reshape(1, 256, 1).repeat(3, axis=2)
            cfg = self.processor_config
            lut = processing.pieces_to_pixel_values([ramp], mean=cfg.norm_mean, std=cfg.norm_std)[0][:, 0]
            lut = lut.to(device=device, dtype=torch.float32)
            self._pixel_lut[device] = lut
        if piece.dtype != np.uint8 or piece.ndim != 3 or piece.shape[2] != 3:
            raise ValueError(f"a piece must be uint8 (H, W, 3), got {piece.dtype} {piece.shape}")
        if device.type == "cpu":
            table = lut.numpy()
            out = np.empty((3, *piece.shape[:2]), dtype=np.float32)
            for channel in range(3):
                np.take(table[channel], piece[..., channel], out=out[channel])
            return torch.from_numpy(out)
        pixels = torch.from_numpy(np.require(piece, requirements=("C", "W"))).to(device, non_blocking=True)
        channels = torch.arange(3, device=device)[:, None, None]
        return lut[channels, pixels.permute(2, 0, 1).long()]

    @torch.inference_mode()
    def encode_pieces(self, pieces: Sequence[np.ndarray]) -> torch.Tensor:
        """Resampler output ``[n, query_num, D]`` for uint8 pieces, in chunks of ``vision_batch_size``.

        Pieces of similar size are batched together (longest first) so a chunk carries little padding;
        the output keeps the input order.
        """
        count = len(pieces)
        patch = self.config.patch_size
        sizes = [(int(p.shape[0]) // patch, int(p.shape[1]) // patch) for p in pieces]
        out = torch.empty(
            (count, self.config.query_num, self.config.embed_dim), device=self.device, dtype=self.dtype
        )
        order = sorted(range(count), key=lambda i: -sizes[i][0] * sizes[i][1])
        step = self.config.vision_batch_size
        for start in range(0, count, step):
            chunk = order[start : start + step]
            strips = pieces_to_strips([self._normalise(pieces[i]) for i in chunk], patch).to(self.dtype)
            chunk_sizes = [sizes[i] for i in chunk]
            features = self.vpm(strips, chunk_sizes)
            out[torch.tensor(chunk, device=self.device)] = self.resampler(features, chunk_sizes)
        return out

    def encode_frames(
        self, frames: Sequence[Image.Image | np.ndarray], max_slice_nums: int | None = None
    ) -> list[FrameEmbedding]:
        """Slice and encode frames once (one padded batch per chunk across all frames)."""
        limit = self.processor_config.max_slice_nums if max_slice_nums is None else max_slice_nums
        sliced = [
            processing.slice_image(_as_image(f, i), self.processor_config, limit)
            for i, f in enumerate(frames)
        ]
        all_pieces = [p for s in sliced for p in s.pieces]
        if not all_pieces:
            return []
        embeddings = self.encode_pieces(all_pieces)
        result, start = [], 0
        for s in sliced:
            n = len(s.pieces)
            result.append(
                FrameEmbedding(
                    original_size=(int(s.original_size[0]), int(s.original_size[1])),
                    grid=None if s.grid is None else (int(s.grid[0]), int(s.grid[1])),
                    tgt_sizes=tuple((int(h), int(w)) for h, w in s.tgt_sizes),
                    embeddings=embeddings[start : start + n].clone(),
                    max_slice_nums=limit,
                )
            )
            start += n
        return result

    # ------------------------------------------------------------------ prompt
    def prepare(
        self,
        msgs: Sequence[dict[str, Any]] | str,
        use_image_id: bool | None = None,
        max_slice_nums: int | None = None,
        system_prompt: str = "",
        *,
        max_inp_length: int = 8192,
    ) -> processing.Prepared:
        """Prompt ids, placeholder bounds and pieces for one conversation (model card message format)."""
        msgs = parse_messages_argument(msgs)
        return processing.prepare(
            msgs,
            self.tokenizer,
            self.processor_config,
            use_image_id=use_image_id,
            max_slice_nums=max_slice_nums,
            system_prompt=system_prompt,
            max_inp_length=max_inp_length,
        )

    @torch.inference_mode()
    def visual_embeddings(self, prep: processing.Prepared) -> torch.Tensor:
        """``[n_pieces, query_num, D]`` for a prompt: cached frame embeddings, pixels encoded in one go."""
        items = list(prep.images)
        for index, item in enumerate(items):
            if not isinstance(item, FrameEmbedding | processing.SlicedImage):
                raise TypeError(
                    f"image {index} of the prompt is a bare {type(item).__name__}: give a PIL image, "
                    "a SlicedImage or a FrameEmbedding from encode_frames"
                )
        to_encode = [p for item in items if isinstance(item, processing.SlicedImage) for p in item.pieces]
        encoded = self.encode_pieces(to_encode) if to_encode else None
        parts, used = [], 0
        want = (self.config.query_num, self.config.embed_dim)
        for index, item in enumerate(items):
            if isinstance(item, FrameEmbedding):
                if tuple(item.embeddings.shape) != (item.n_pieces, *want):
                    raise ValueError(
                        f"frame embedding {index} has shape {list(item.embeddings.shape)}, this model needs "
                        f"[{item.n_pieces}, {want[0]}, {want[1]}] (was it made by another model?)"
                    )
                parts.append(item.embeddings.to(self.device, self.dtype))
            elif isinstance(item, processing.SlicedImage):
                n = len(item.pieces)
                assert encoded is not None
                parts.append(encoded[used : used + n])
                used += n
        if not parts:
            return torch.empty(
                (0, self.config.query_num, self.config.embed_dim), device=self.device, dtype=self.dtype
            )
        return torch.cat(parts)

    @torch.inference_mode()
    def embed(
        self,
        preps: Sequence[processing.Prepared],
        vision: Sequence[torch.Tensor | None] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ``inputs_embeds [B, T, D]`` and the official mask ``input_ids != 0`` ``[B, T]``.

        ``vision`` optionally gives each prompt's ``visual_embeddings`` already computed (None: compute).
        Pad id 0 is ``"!"``: like the official code, a genuine ``"!"`` in a prompt is masked too.
        """
        if vision is not None and len(vision) != len(preps):
            raise ValueError(f"vision has {len(vision)} entries for {len(preps)} prompts")
        length = max(int(p.input_ids.shape[0]) for p in preps)
        ids = torch.zeros((len(preps), length), dtype=torch.long)
        for b, prep in enumerate(preps):
            ids[b, length - prep.input_ids.shape[0] :] = prep.input_ids
        ids = ids.to(self.device)
        embeds = self.llm.get_input_embeddings()(ids)
        query = self.config.query_num
        for b, prep in enumerate(preps):
            bounds = prep.image_bound
            if bounds.numel() == 0:
                continue
            given = None if vision is None else vision[b]
            visual = self.visual_embeddings(prep) if given is None else given
            spans = (bounds[:, 1] - bounds[:, 0]).tolist()
            if len(spans) != visual.shape[0] or any(s != query for s in spans):
                raise ValueError(
                    f"prompt has {len(spans)} placeholder runs of lengths {sorted(set(spans))}, but its "
                    f"images give {visual.shape[0]} pieces of {query} vectors"
                )
            pad = length - int(prep.input_ids.shape[0])
            rows = torch.cat([torch.arange(int(s), int(e)) for s, e in bounds.tolist()]) + pad
            embeds[b, rows.to(self.device)] = visual.reshape(-1, visual.shape[-1]).to(embeds.dtype)
        return embeds, (ids != 0).long()

    @torch.inference_mode()
    def logits(self, prep: processing.Prepared, vision: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[T, vocab]`` at every prompt position (``vision``: see ``embed``).

        Positions are ``cumsum(mask) - 1``, as in ``generate``'s first step (the oracle's logits too).
        """
        embeds, mask = self.embed([prep], None if vision is None else [vision])
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out = self.llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        return out.logits[0]

    # ------------------------------------------------------------------ chat
    def chat(
        self,
        msgs: Any,
        sampling: bool = True,
        stream: bool = False,
        max_new_tokens: int = 2048,
        use_image_id: bool | None = None,
        max_slice_nums: int | None = None,
        system_prompt: str = "",
        *,
        image: Image.Image | None = None,
        min_new_tokens: int = 0,
        max_inp_length: int = 8192,
        tokenizer: Any = None,
        processor: Any = None,
        **generation_overrides: Any,
    ) -> str | list[str] | Iterator[str]:
        """The model card's ``chat``: official defaults, overrides only for keys already present.

        ``msgs`` is one conversation, or a list of conversations (a batch, answered with a list).
        ``image``, as in the card's ``chat(image=..., msgs=...)``, goes before the text of a first
        message whose content is a plain string. ``stream=True`` returns an iterator of text pieces
        (one conversation; sampling or greedy). ``tokenizer`` and ``processor`` are accepted so the
        card's calls run unchanged; this model always uses its own.
        """
        del tokenizer, processor
        msgs = parse_messages_argument(msgs)
        batched = isinstance(msgs, list) and bool(msgs) and isinstance(msgs[0], list)
        if image is not None:
            if batched:
                raise ValueError("chat(image=...) takes one conversation; put images in each batch's content")
            msgs = with_leading_image(msgs, image)
        if stream and batched:
            raise ValueError("stream=True takes one conversation, not a batch")
        check_generation_settings(sampling, stream, max_new_tokens, generation_overrides)
        conversations = msgs if batched else [msgs]
        preps = [
            self.prepare(c, use_image_id, max_slice_nums, system_prompt, max_inp_length=max_inp_length)
            for c in conversations
        ]
        request = self.generation_request(
            preps, sampling, max_new_tokens, min_new_tokens=min_new_tokens, **generation_overrides
        )
        if stream:
            return stream_text(self.llm, request, self.decode)
        ids = generate_ids(self.llm, request)
        texts = [self.decode(row.tolist()) for row in ids]
        return texts if batched else texts[0]

    def generate(
        self,
        preps: Sequence[processing.Prepared],
        sampling: bool = True,
        max_new_tokens: int = 2048,
        *,
        min_new_tokens: int = 0,
        **generation_overrides: Any,
    ) -> torch.Tensor:
        """New token ids ``[B, n]`` for prepared prompts, with ``chat``'s decoding settings."""
        request = self.generation_request(
            preps, sampling, max_new_tokens, min_new_tokens=min_new_tokens, **generation_overrides
        )
        return generate_ids(self.llm, request)

    def generation_request(
        self,
        preps: Sequence[processing.Prepared],
        sampling: bool,
        max_new_tokens: int,
        *,
        min_new_tokens: int = 0,
        **generation_overrides: Any,
    ) -> GenerationRequest:
        """Embeddings, mask and the official generate settings for a batch of prompts."""
        embeds, mask = self.embed(preps)
        return GenerationRequest(
            inputs_embeds=embeds,
            attention_mask=mask,
            eos_token_ids=self.tokenizer.terminator_ids,
            max_new_tokens=max_new_tokens,
            kwargs=generation_kwargs(sampling, min_new_tokens, generation_overrides),
        )

    def decode(self, ids: Sequence[int]) -> str:
        """The official answer decoding (drop pads, a leading bos and a trailing terminator; strip)."""
        return processing.decode_answer(list(ids), self.tokenizer)


def _as_image(frame: Image.Image | np.ndarray, index: int) -> Image.Image:
    if isinstance(frame, Image.Image):
        return frame
    if isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return Image.fromarray(frame)
    shape = getattr(frame, "shape", None)
    raise TypeError(
        f"frame {index}: expected a PIL image or a uint8 RGB array (H, W, 3), "
        f"got {type(frame).__name__} {shape}"
    )
