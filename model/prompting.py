"""MiniCPM-V 2.6 prompts: chat messages -> ChatML text -> placeholder-expanded text -> ids and image bounds.

Follows the official ``chat()`` and processor (MODEL_SPEC §7):

1. every image in a message becomes the marker ``(<image>./</image>)``; a message's items are joined
   with ``"\\n"``; the chat template adds the default system message when none is given;
2. the i-th marker (0-based in the prompt) becomes ``<image_id>i</image_id>`` (if ``use_image_id``),
   then ``<image>`` + ``<unk>``×64 + ``</image>``, then, for a sliced image, each row of
   ``<slice>`` + ``<unk>``×64 + ``</slice>`` pieces, rows joined by ``"\\n"`` (none after ``</image>``);
3. ``image_bound`` is the ``[start, end)`` span of every run of ``<unk>``, one per piece, in order.

An image is written from its :class:`~model.image_slicing.ImageLayout` alone, so a message may carry a
PIL image or anything with a ``layout`` (a :class:`~model.image_slicing.SlicedImage`, a cached frame
embedding, a bare ``ImageLayout``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import PIL.Image
import torch
from transformers import PreTrainedTokenizerBase

from model.image_slicing import HasImageLayout, ImageLayout
from model.tokenizer import PAD_ID, MiniCPMVTokenizer, as_minicpmv_tokenizer

IMAGE_MARKER = "(<image>./</image>)"
ROLES = ("user", "assistant")
DEFAULT_QUERY_NUM = 64

ImageItem = PIL.Image.Image | HasImageLayout
TokenizerLike = MiniCPMVTokenizer | PreTrainedTokenizerBase


def parse_messages_argument(msgs: Any) -> Any:
    """``msgs`` as given, or parsed when it is the JSON string of a message list (as the official
    ``chat`` allows); a string that is not JSON gets a ValueError saying what ``msgs`` must be."""
    if not isinstance(msgs, str):
        return msgs
    try:
        return json.loads(msgs)
    except json.JSONDecodeError as exc:
        raise ValueError(
            "msgs is a string but not valid JSON: give a list of {'role': ..., 'content': ...} dicts "
            f"(or a JSON string of one), e.g. [{{'role': 'user', 'content': {msgs[:40]!r}}}] ({exc})"
        ) from exc


def with_leading_image(msgs: Any, image: PIL.Image.Image) -> Any:
    """The official ``chat(image=..., msgs=...)``: when the first message's content is a plain string,
    a copy of ``msgs`` whose first content is ``[image, text]``; otherwise ``msgs`` unchanged."""
    if not isinstance(image, PIL.Image.Image):
        raise ValueError(f"image must be a PIL image, got {_describe(image)}")
    if not isinstance(msgs, Sequence) or isinstance(msgs, str | bytes) or not msgs:
        return msgs  # normalize_messages says what is wrong
    first = msgs[0]
    if not isinstance(first, Mapping) or not isinstance(first.get("content"), str):
        return msgs
    return [{**first, "content": [image, first["content"]]}, *msgs[1:]]


def is_image_item(item: Any) -> bool:
    """A PIL image, or an object whose ``layout`` is an :class:`ImageLayout` (a torch tensor has a
    ``layout`` attribute too, which is why the protocol check alone is not enough)."""
    return isinstance(item, PIL.Image.Image) or (
        isinstance(item, HasImageLayout) and isinstance(getattr(item, "layout", None), ImageLayout)
    )


def normalize_messages(msgs: Any) -> list[tuple[str, list[str | ImageItem]]]:
    """Check ``msgs`` (model-card format, or its JSON string) and return ``(role, items)`` per message.

    Raises ValueError naming the message index and what is wrong with it.
    """
    msgs = parse_messages_argument(msgs)
    if not isinstance(msgs, Sequence) or isinstance(msgs, str | bytes) or not msgs:
        raise ValueError(f"msgs must be a non-empty list of messages, got {_describe(msgs)}")
    if isinstance(msgs[0], list):
        raise ValueError("msgs is a batch (a list of conversations); prepare each conversation on its own")
    out: list[tuple[str, list[str | ImageItem]]] = []
    for index, message in enumerate(msgs):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise ValueError(
                f"msgs[{index}] must be a dict with 'role' and 'content', got {_describe(message)}"
            )
        role = message["role"]
        if role not in ROLES:
            raise ValueError(f"msgs[{index}] has role {role!r}; roles must be 'user' or 'assistant'")
        if index == 0 and role != "user":
            raise ValueError(f"msgs[0] has role {role!r}; the first message must be from the user")
        content = message["content"]
        items = [content] if isinstance(content, str) else content
        if not isinstance(items, Sequence) or isinstance(items, bytes):
            raise ValueError(
                f"msgs[{index}] content must be a string or a list of strings and images, "
                f"got {_describe(content)}"
            )
        checked: list[str | ImageItem] = []
        for position, item in enumerate(items):
            if isinstance(item, str):
                _check_text(item, f"msgs[{index}] content[{position}]")
            elif not is_image_item(item):
                raise ValueError(
                    f"msgs[{index}] content[{position}] is {_describe(item)}; items must be strings, "
                    "PIL images or objects with an image layout (SlicedImage, frame embeddings)"
                )
            checked.append(item)
        out.append((role, checked))
    return out


def build_chat_text(
    msgs: Any, tokenizer: TokenizerLike, system_prompt: str = ""
) -> tuple[str, list[ImageItem]]:
    """ChatML text with one image marker per image, and the images in order of appearance."""
    tok = as_minicpmv_tokenizer(tokenizer)
    _check_text(system_prompt, "system_prompt")
    images: list[ImageItem] = []
    chat: list[dict[str, str]] = []
    if system_prompt:
        chat.append({"role": "system", "content": system_prompt})
    for role, items in normalize_messages(msgs):
        parts = []
        for item in items:
            if isinstance(item, str):
                parts.append(item)
            else:
                images.append(item)
                parts.append(IMAGE_MARKER)
        chat.append({"role": role, "content": "\n".join(parts)})
    return tok.apply_chat_template(chat), images


def image_placeholder(
    image: HasImageLayout,
    image_index: int,
    use_image_id: bool,
    tok: TokenizerLike,
    *,
    query_num: int = DEFAULT_QUERY_NUM,
) -> str:
    """The text that replaces the marker of image ``image_index`` (0-based within the prompt)."""
    t = as_minicpmv_tokenizer(tok)
    layout = image.layout
    unk = t.unk * query_num
    text = f"{t.im_id_start}{image_index}{t.im_id_end}" if use_image_id else ""
    text += f"{t.im_start}{unk}{t.im_end}"
    if layout.grid is not None:
        cols, rows = layout.grid
        row = f"{t.slice_start}{unk}{t.slice_end}" * cols
        text += "\n".join([row] * rows)
    return text


def expand_placeholders(
    chat_text: str,
    layouts: Sequence[HasImageLayout],
    use_image_id: bool,
    tok: TokenizerLike,
    *,
    query_num: int = DEFAULT_QUERY_NUM,
) -> str:
    """Replace the i-th image marker in ``chat_text`` by the placeholder of ``layouts[i]``."""
    parts = chat_text.split(IMAGE_MARKER)
    if len(parts) - 1 != len(layouts):
        raise ValueError(f"chat text has {len(parts) - 1} image markers but {len(layouts)} images were given")
    pieces = [parts[0]]
    for index, (layout, after) in enumerate(zip(layouts, parts[1:], strict=True)):
        pieces.append(image_placeholder(layout, index, use_image_id, tok, query_num=query_num))
        pieces.append(after)
    return "".join(pieces)


def find_image_bound(
    input_ids: Sequence[int] | torch.Tensor, tok: TokenizerLike, *, query_num: int = DEFAULT_QUERY_NUM
) -> torch.LongTensor:
    """``[n, 2]`` half-open spans of the ``<unk>`` runs between ``<image>``/``<slice>`` and their ends."""
    t = as_minicpmv_tokenizer(tok)
    ids = torch.as_tensor(input_ids, dtype=torch.long).flatten()
    starts = torch.nonzero((ids == t.im_start_id) | (ids == t.slice_start_id)).flatten() + 1
    ends = torch.nonzero((ids == t.im_end_id) | (ids == t.slice_end_id)).flatten()
    if starts.numel() != ends.numel() or bool((ends - starts != query_num).any()):
        raise ValueError(
            f"image placeholders are malformed: {starts.numel()} starts, {ends.numel()} ends, "
            f"each span must hold {query_num} <unk> tokens"
        )
    bound = torch.stack([starts, ends], dim=1) if starts.numel() else torch.zeros((0, 2), dtype=torch.long)
    return bound  # type: ignore[return-value]


def decode_answer(ids: Sequence[int] | torch.Tensor, tokenizer: TokenizerLike) -> str:
    """Answer text of generated ids, as the official ``chat()`` makes it (MODEL_SPEC §8.2).

    Drops every id 0 (the pad), a leading BOS and one trailing terminator, then decodes with special
    tokens kept and strips surrounding whitespace.
    """
    tok = as_minicpmv_tokenizer(tokenizer)
    values = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
    values = [i for i in values if i != PAD_ID]
    if values and tok.bos_id is not None and values[0] == tok.bos_id:
        values = values[1:]
    if values and values[-1] in tok.terminator_ids:
        values = values[:-1]
    return tok.decode(values).strip()


_STRUCTURE_TOKENS = ("<image>", "</image>", "<slice>", "</slice>")


def neutralize_image_tags(text: str) -> str:
    """``text`` with the image-structure tags made plain (``</image>`` -> ``‹/image›``), for text
    from outside (a client's question, a previous caption fed back as context) that must be
    asked about, not refused: :func:`normalize_messages` rejects the tags themselves."""
    for token in _STRUCTURE_TOKENS:
        text = text.replace(token, "\u2039" + token[1:-1] + "\u203a")
    return text


def _check_text(text: Any, where: str) -> None:
    """Reject text that would forge image structure: the bounds would no longer match the images."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a string, got {_describe(text)}")
    for token in _STRUCTURE_TOKENS:
        if token in text:
            raise ValueError(
                f"{where} contains {token!r}, which is reserved for image placeholders; "
                "pass images as items of the content list instead"
            )


def _describe(value: Any) -> str:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:  # numpy arrays, tensors: their shape, not their numbers
        frame = len(shape) == 3
        hint = " (a video frame? pass PIL.Image.fromarray(frame) of its RGB pixels)" if frame else ""
        return f"a {type(value).__name__} of shape {tuple(shape)} and dtype {dtype}{hint}"
    text = " ".join(repr(value).split())
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


__all__ = [
    "IMAGE_MARKER",
    "ImageItem",
    "ImageLayout",
    "build_chat_text",
    "decode_answer",
    "expand_placeholders",
    "find_image_bound",
    "image_placeholder",
    "is_image_item",
    "neutralize_image_tags",
    "normalize_messages",
    "parse_messages_argument",
    "with_leading_image",
]
