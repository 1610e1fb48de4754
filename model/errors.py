"""Errors raised by the model library.

Every error names the thing that failed (a folder, a tensor key, a setting) and why, and also
inherits the matching builtin so callers can catch either (``CheckpointError`` is a ``FileNotFoundError``
only where it is about a missing file, etc.)::

    ModelError
    ├── CheckpointError (ValueError)          bad or incomplete weights folder, key/shape mismatch
    │   └── WeightsNotFoundError (FileNotFoundError)   no weights where they were expected
    ├── ConfigMismatchError (ValueError)      config.json and preprocessor_config.json disagree
    ├── PromptTooLongError (ValueError)       prompt exceeds max_inp_length; says what to lower
    └── RemoteError                           an OpenAI-compatible server (model.remote)
        ├── ServerSetupError (ValueError)     unreachable, 401 or unknown model when first asked
        │   └── ServerNotReady                a 503 (loading) or 429 (rate limit) when first asked
        └── RequestRefused (ValueError)       a 4xx for one request (too many images, too long)
"""

from __future__ import annotations


class ModelError(Exception):
    """Base class of every error the model library raises on purpose."""


class CheckpointError(ModelError, ValueError):
    """A checkpoint folder or file cannot be used as a MiniCPM-V 2.6 checkpoint."""


class WeightsNotFoundError(CheckpointError, FileNotFoundError):
    """The weights are not where they were looked for (and cannot be downloaded here)."""


class ConfigMismatchError(ModelError, ValueError):
    """Two configuration sources disagree on a value both must hold."""


class PromptTooLongError(ModelError, ValueError):
    """The tokenized prompt is longer than ``max_inp_length``."""


class RemoteError(ModelError):
    """An OpenAI-compatible server could not be used. The message names the server and its reason."""


class ServerSetupError(RemoteError, ValueError):
    """At start: the server cannot be reached, refuses the key, or does not serve the model."""


class ServerNotReady(ServerSetupError):
    """At start: the server answered but is not ready yet (a 503 while it loads its model, a 429);
    ``wait``: the seconds its ``Retry-After`` asks for, None when it gives none."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class RequestRefused(RemoteError, ValueError):
    """The server refused one request (a 4xx: too many images, context too long); the next may work."""
