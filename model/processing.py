"""MiniCPM-V 2.6 processing: chat messages + images -> ``input_ids``, ``image_bound``, ``tgt_sizes``, pieces.

This is the one-sample equivalent of the official ``chat()`` front half and its processor, exact against
the oracle (ids, bounds, every piece's bytes). The work is split by job:

* :mod:`model.image_slicing`: one image -> uint8 pieces (source + tiles) and their patch sizes;
* :mod:`model.prompting`: messages -> ChatML text -> placeholder text, image bounds, answer decoding;
* :mod:`model.tokenizer`: the tokenizer without remote code and its special ids;
* here: the settings (:class:`ProcessorConfig`) and :func:`prepare`, which runs the three.

**Precomputed images (frame embeddings).** A message item may be a PIL image (sliced here), a
:class:`SlicedImage` (already sliced, pixels included) or any object with a ``layout`` attribute holding
an :class:`ImageLayout` (grid + per-piece ``tgt_sizes``), for example a cached frame embedding; a bare
``ImageLayout`` works too. The placeholder text depends only on the layout, so such an item yields the same
ids and bounds as the image it was made from. ``Prepared.images`` keeps each item (PIL images replaced by
their ``SlicedImage``) and ``Prepared.piece_spans`` says which rows of ``image_bound``/``tgt_sizes`` belong
to it; ``Prepared.pieces`` holds the pixels of the items that have them.

**Long prompts.** The official code truncates to ``max_inp_length`` and then fails inside the image-bound
code. :func:`prepare` never truncates: it raises :class:`~model.errors.PromptTooLongError` saying what to
lower.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image
import torch

from model.errors import CheckpointError, ConfigMismatchError, PromptTooLongError
from model.image_slicing import (
    HasImageLayout,
    ImageLayout,
    SlicedImage,
    pieces_to_pixel_values,
    slice_pil_image,
    to_strip,
)
from model.prompting import (
    IMAGE_MARKER,
    TokenizerLike,
    build_chat_text,
    decode_answer,
    expand_placeholders,
    find_image_bound,
    image_placeholder,
)
from model.tokenizer import MiniCPMVTokenizer, as_minicpmv_tokenizer, load_tokenizer

log = logging.getLogger(__name__)

PREPROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FILE = "config.json"

# preprocessor_config.json keys that carry no processing setting.
_METADATA_KEYS = frozenset(
    {"image_processor_type", "processor_class", "auto_map", "transformers_version", "version"}
)
# Token strings the processor may name; ours are fixed (model.tokenizer), so they must agree.
_TOKEN_KEYS = {
    "im_start": "<image>",
    "im_end": "</image>",
    "slice_start": "<slice>",
    "slice_end": "</slice>",
    "unk": "<unk>",
    "im_id_start": "<image_id>",
    "im_id_end": "</image_id>",
}
# processor key -> (ProcessorConfig field, how config.json spells it or None)
_SETTING_KEYS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "max_slice_nums": ("max_slice_nums", ("slice_config", "max_slice_nums")),
    "scale_resolution": ("scale_resolution", None),
    "patch_size": ("patch_size", ("patch_size",)),
    "image_feature_size": ("query_num", ("query_num",)),
    "use_image_id": ("use_image_id", ("use_image_id",)),
    "slice_mode": ("slice_mode", ("slice_mode",)),
    "norm_mean": ("norm_mean", None),
    "norm_std": ("norm_std", None),
}


@dataclass(frozen=True)
class ProcessorConfig:
    """Image and prompt settings: ``preprocessor_config.json``, checked against ``config.json``.

    ``slice_mode=False`` never slices (same as ``max_slice_nums=1``): every image becomes one piece of
    about ``scale_resolution``² area.
    """

    max_slice_nums: int = 9
    scale_resolution: int = 448
    patch_size: int = 14
    query_num: int = 64
    use_image_id: bool = True
    slice_mode: bool = True
    norm_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    norm_std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def __post_init__(self) -> None:
        for name in ("max_slice_nums", "scale_resolution", "patch_size", "query_num"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProcessorConfig.{name} must be a positive int, got {value!r}")
        for name in ("use_image_id", "slice_mode"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ProcessorConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("norm_mean", "norm_std"):
            value = getattr(self, name)
            if len(value) != 3 or not all(isinstance(v, int | float) for v in value):
                raise ValueError(f"ProcessorConfig.{name} must be three numbers, got {value!r}")
        if any(v == 0 for v in self.norm_std):
            raise ValueError(f"ProcessorConfig.norm_std must not hold 0, got {self.norm_std!r}")

    @classmethod
    def from_folder(cls, folder: str | Path) -> ProcessorConfig:
        """Read ``preprocessor_config.json``; where ``config.json`` also holds a setting, both must agree.

        A setting only ``config.json`` holds is taken from it. Unknown keys, other placeholder token
        strings or a version other than 2.6 are a :class:`~model.errors.CheckpointError`; disagreement
        is a :class:`~model.errors.ConfigMismatchError` naming both values.
        """
        path = Path(folder)
        pre_path = path / PREPROCESSOR_FILE
        if not pre_path.is_file():
            raise CheckpointError(f"{pre_path} is missing; a MiniCPM-V 2.6 checkpoint needs it")
        pre = _read_json(pre_path)
        cfg_path = path / CONFIG_FILE
        model_cfg = _read_json(cfg_path) if cfg_path.is_file() else {}

        known = _METADATA_KEYS | _TOKEN_KEYS.keys() | _SETTING_KEYS.keys()
        unknown = sorted(k for k in pre if k not in known)
        if unknown:  # a later revision of the checkpoint may add keys: say so, but load it
            log.warning("%s: ignoring keys this processor does not use: %s", pre_path, unknown)
        if "version" in pre and str(pre["version"]) != "2.6":
            raise CheckpointError(f"{pre_path} is for MiniCPM-V version {pre['version']}, not 2.6")
        for key, expected in _TOKEN_KEYS.items():
            if key in pre and pre[key] != expected:
                raise CheckpointError(f"{pre_path} sets {key}={pre[key]!r}; only {expected!r} is supported")

        values: dict[str, Any] = {}
        for pre_key, (field_name, cfg_keys) in _SETTING_KEYS.items():
            from_pre = pre.get(pre_key)
            from_cfg = _dig(model_cfg, cfg_keys) if cfg_keys else None
            if from_pre is not None and from_cfg is not None and from_pre != from_cfg:
                raise ConfigMismatchError(
                    f"{pre_path.name} has {pre_key}={from_pre!r} but {cfg_path.name} has "
                    f"{'.'.join(cfg_keys or ())}={from_cfg!r} (in {path})"
                )
            value = from_pre if from_pre is not None else from_cfg
            if value is not None:
                values[field_name] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**values)
        except ValueError as exc:
            raise CheckpointError(f"{pre_path}: {exc}") from exc


def slice_image(
    image: PIL.Image.Image, cfg: ProcessorConfig, max_slice_nums: int | None = None
) -> SlicedImage:
    """Slice one image with the checkpoint's settings; ``max_slice_nums`` overrides the config's."""
    limit = cfg.max_slice_nums if max_slice_nums is None else max_slice_nums
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_slice_nums must be a positive int, got {limit!r}")
    if not cfg.slice_mode:
        limit = 1
    return slice_pil_image(
        image, max_slice_nums=limit, scale_resolution=cfg.scale_resolution, patch_size=cfg.patch_size
    )


@dataclass(frozen=True, eq=False)
class Prepared:
    """One sample ready for the model. Rows of ``image_bound`` and ``tgt_sizes`` are pieces, in order."""

    input_ids: torch.LongTensor
    image_bound: torch.LongTensor
    tgt_sizes: torch.LongTensor
    pieces: list[np.ndarray]
    chat_text: str
    prompt_text: str
    images: list[SlicedImage | HasImageLayout]
    piece_spans: list[tuple[int, int]]

    @property
    def n_pieces(self) -> int:
        return int(self.tgt_sizes.shape[0])


def prepare(
    msgs: Any,
    tokenizer: TokenizerLike,
    cfg: ProcessorConfig,
    *,
    use_image_id: bool | None = None,
    max_slice_nums: int | None = None,
    system_prompt: str = "",
    max_inp_length: int = 8192,
) -> Prepared:
    """Messages -> ids, image bounds, patch sizes and pieces, as the official ``chat()`` builds them.

    ``use_image_id`` and ``max_slice_nums`` default to ``cfg``'s (video: ``False`` and 2, as the model
    card says). ``max_slice_nums`` applies to PIL images only: pre-sliced items and layouts keep the
    grid they were made with. Raises ValueError for malformed messages and PromptTooLongError when the
    prompt has more than ``max_inp_length`` tokens.
    """
    tok = as_minicpmv_tokenizer(tokenizer)
    id_images = cfg.use_image_id if use_image_id is None else use_image_id
    chat_text, items = build_chat_text(msgs, tok, system_prompt)

    images: list[SlicedImage | HasImageLayout] = [
        slice_image(item, cfg, max_slice_nums) if isinstance(item, PIL.Image.Image) else item
        for item in items
    ]
    layouts: list[ImageLayout] = [image.layout for image in images]
    prompt_text = expand_placeholders(chat_text, layouts, id_images, tok, query_num=cfg.query_num)
    ids = tok.encode(prompt_text)

    n_pieces = sum(layout.n_pieces for layout in layouts)
    if len(ids) > max_inp_length:
        if images:
            advice = (
                f"it holds {len(images)} images in {n_pieces} pieces ({n_pieces * cfg.query_num} image "
                "tokens). Pass fewer frames or images, use max_slice_nums=1 (one piece per image), "
                "or raise max_inp_length"
            )
        else:
            advice = "it has no images: shorten the text or raise max_inp_length"
        raise PromptTooLongError(
            f"prompt is {len(ids)} tokens, over max_inp_length={max_inp_length}: {advice}"
        )

    input_ids = torch.tensor(ids, dtype=torch.long)
    image_bound = find_image_bound(input_ids, tok, query_num=cfg.query_num)
    if image_bound.shape[0] != n_pieces:
        raise ValueError(
            f"prompt has {image_bound.shape[0]} image spans but the images have {n_pieces} pieces"
        )

    spans, start = [], 0
    for layout in layouts:
        spans.append((start, start + layout.n_pieces))
        start += layout.n_pieces
    tgt = [size for layout in layouts for size in layout.tgt_sizes]
    pieces = [p for image in images if isinstance(image, SlicedImage) for p in image.pieces]
    return Prepared(
        input_ids=input_ids,  # type: ignore[arg-type]
        image_bound=image_bound,
        tgt_sizes=torch.tensor(tgt, dtype=torch.long).reshape(-1, 2),  # type: ignore[arg-type]
        pieces=pieces,
        chat_text=chat_text,
        prompt_text=prompt_text,
        images=images,
        piece_spans=spans,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def _dig(data: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    value: Any = data
    for key in keys:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


__all__ = [
    "IMAGE_MARKER",
    "HasImageLayout",
    "ImageLayout",
    "MiniCPMVTokenizer",
    "Prepared",
    "ProcessorConfig",
    "SlicedImage",
    "build_chat_text",
    "decode_answer",
    "expand_placeholders",
    "find_image_bound",
    "image_placeholder",
    "load_tokenizer",
    "pieces_to_pixel_values",
    "prepare",
    "slice_image",
    "to_strip",
]
