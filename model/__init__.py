"""MiniCPM-V 2.6 implemented natively on transformers (no remote code), plus caption backends.

``from model import MiniCPMV`` is the entry point (see ``model.modeling``). Heavy imports (torch,
transformers) happen on first use of a name, so ``import model.errors`` stays cheap for processes
that never run the model.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from model.errors import (
    CheckpointError,
    ConfigMismatchError,
    ModelError,
    PromptTooLongError,
    WeightsNotFoundError,
)

if TYPE_CHECKING:
    from model.backends import CaptionBackend, LocalBackend, load_backend
    from model.configuration import MiniCPMVConfig
    from model.modeling import FrameEmbedding, MiniCPMV
    from model.processing import Prepared
    from model.tiny import build_tiny_model, write_tiny_checkpoint

_LAZY = {
    "MiniCPMV": "model.modeling",
    "FrameEmbedding": "model.modeling",
    "MiniCPMVConfig": "model.configuration",
    "Prepared": "model.processing",
    "CaptionBackend": "model.backends",
    "LocalBackend": "model.backends",
    "load_backend": "model.backends",
    "build_tiny_model": "model.tiny",
    "write_tiny_checkpoint": "model.tiny",
}

__all__ = [
    "CaptionBackend",
    "CheckpointError",
    "ConfigMismatchError",
    "FrameEmbedding",
    "LocalBackend",
    "MiniCPMV",
    "MiniCPMVConfig",
    "ModelError",
    "Prepared",
    "PromptTooLongError",
    "WeightsNotFoundError",
    "build_tiny_model",
    "load_backend",
    "write_tiny_checkpoint",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
