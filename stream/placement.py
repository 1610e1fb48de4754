"""Which inference process owns which stream when ``[model] devices`` starts several: an I/O-free rule.

Rendezvous (highest-random-weight) hashing: each stream goes to the device slot whose hash of
(slot, stream name) is highest. The placement depends only on the name and the number of slots, so
it is the same in every run and every process (``hashlib``, not Python's per-process salted
``hash``); adding a slot moves only the streams the new slot now wins (about 1/N of them), and never
moves a stream between two slots that were already there. A slot is identified by its index, not its
device string: ``["cpu", "cpu"]`` has two slots.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

INFERENCE_ROLE = "inference"


def _weight(slot: int, stream: str) -> int:
    digest = hashlib.blake2b(f"{slot}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(stream: str, slots: int) -> int:
    """The index (0 .. slots-1) of the inference process that owns ``stream``."""
    if slots < 1:
        raise ValueError(f"at least one inference process is needed, got {slots}")
    return max(range(slots), key=lambda slot: _weight(slot, stream))


def assign(streams: Iterable[str], slots: int) -> list[list[str]]:
    """The streams of each slot, in the order given."""
    owned: list[list[str]] = [[] for _ in range(slots)]
    for stream in streams:
        owned[owner(stream, slots)].append(stream)
    return owned


def inference_roles(devices: Sequence[str]) -> list[str]:
    """The supervisor roles of the inference processes: ``inference`` for one device (as a run
    without ``[model] devices`` has), else ``inference:0`` .. ``inference:N-1``."""
    if len(devices) <= 1:
        return [INFERENCE_ROLE]
    return [f"{INFERENCE_ROLE}:{index}" for index in range(len(devices))]


def role_suffix(role: str) -> str:
    """What tells one inference process's files and sockets from another's: "" for ``inference``,
    ``-I`` for ``inference:I``."""
    _, sep, index = role.partition(":")
    return f"-{index}" if sep else ""
