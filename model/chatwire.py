"""The OpenAI chat-completions shapes the remote backend sends and reads (pure functions, no I/O).

A frame becomes a JPEG data URI once (:func:`encode_frame`); a window becomes one user message: the
context text, the frames as ``image_url`` parts (subsampled to a limit, each with vLLM's ``uuid`` where
used), then the prompt (:func:`window_message`); a decoding becomes sampling parameters; a refusal's
reason and a yes/no answer's probability are read back from the server's replies.
"""

from __future__ import annotations

import base64
import hashlib
import io
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import openai
from PIL import Image


@dataclass(frozen=True)
class RemoteFrame:
    """A frame as the server receives it: a JPEG data URI, made once, and its content id (the
    ``uuid`` of vLLM's media caching: equal frames share it, whichever stream they come from)."""

    url: str
    uuid: str
    width: int
    height: int


def encode_frame(frame: Image.Image | np.ndarray, side: int, quality: int) -> RemoteFrame:
    """Downscale (never up) so the longest side is at most ``side``, then JPEG at ``quality``."""
    picture = Image.fromarray(frame) if isinstance(frame, np.ndarray) else frame
    picture = picture.convert("RGB")
    if max(picture.size) > side:
        picture = picture.copy()
        picture.thumbnail((side, side), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    picture.save(out, format="JPEG", quality=quality)
    jpeg = out.getvalue()
    url = "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")
    return RemoteFrame(url, hashlib.blake2b(jpeg, digest_size=16).hexdigest(), *picture.size)


def subsample(frames: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` of ``frames``, evenly spread and keeping the first and the last (the
    newest frame is what a live caption must not miss)."""
    n = len(frames)
    if n <= limit:
        return list(frames)
    if limit == 1:
        return [frames[-1]]
    return [frames[round(i * (n - 1) / (limit - 1))] for i in range(limit)]


def image_part(frame: RemoteFrame, *, with_uuid: bool, held: bool) -> dict[str, Any]:
    """One ``image_url`` content part; ``held``: the server has this frame already (send only its id)."""
    if not with_uuid:
        return {"type": "image_url", "image_url": {"url": frame.url}}
    if held:
        return {"type": "image_url", "image_url": None, "uuid": frame.uuid}
    return {"type": "image_url", "image_url": {"url": frame.url}, "uuid": frame.uuid}


def window_message(
    frames: Sequence[RemoteFrame],
    text: str,
    *,
    context: str | None,
    max_images: int,
    with_uuid: bool = False,
    held: Callable[[str], bool] = lambda _uuid: False,
) -> dict[str, Any]:
    """The one user message of a window: context text, the frames (oldest first), the prompt."""
    content: list[dict[str, Any]] = [{"type": "text", "text": context}] if context else []
    for frame in subsample(frames, max_images):
        content.append(image_part(frame, with_uuid=with_uuid, held=with_uuid and held(frame.uuid)))
    content.append({"type": "text", "text": text})
    return {"role": "user", "content": content}


def sampling_params(decoding: str) -> dict[str, Any]:
    """Chat-completions parameters for a decoding: greedy (and beam, which these servers do not
    offer through this API) is temperature 0; sampling is the model card's T 0.7, top-p 0.8."""
    if decoding == "sampling":
        return {"temperature": 0.7, "top_p": 0.8}
    if decoding in ("greedy", "beam"):
        return {"temperature": 0.0}
    raise ValueError(f"decoding {decoding!r} is not one of greedy, sampling, beam")


def server_reason(exc: openai.APIStatusError) -> str:
    """The server's own words for a refusal: OpenAI's ``{"error": {"message"}}`` or vLLM's
    ``{"message"}``, else the response text."""
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") if isinstance(inner, dict) else inner
        if isinstance(message, str) and message:
            return message
    return exc.message


def yes_probability(top: Iterable[tuple[str, float]] | None, text: str) -> float:
    """P(yes) from the alternatives of the first answer token (token, logprob), renormalised over
    the yes and no tokens; without them, 1.0 or 0.0 by the answer's first word."""
    yes = no = 0.0
    for token, logprob in top or ():
        word = token.strip().lower()
        if word == "yes":
            yes += math.exp(logprob)
        elif word == "no":
            no += math.exp(logprob)
    if yes + no > 0:
        return yes / (yes + no)
    words = text.strip().lower().split()
    return 1.0 if words and words[0].strip(".,!:;\"'") == "yes" else 0.0
