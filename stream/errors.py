"""Errors raised by the streaming application.

Each message names the thing (a source, a config key, a client message) and the reason. Every error
also inherits the matching builtin, as PyAV's do::

    VidnarrateError
    ├── SourceError (OSError)                  a source cannot be opened or read
    │   ├── SourceNotFound (FileNotFoundError) a file source does not exist
    │   ├── UnsupportedSource (ValueError)     unknown scheme / codec / device spec
    │   └── SourceTimeout (TimeoutError)       no data within the read timeout (stall)
    ├── RingError (RuntimeError)               shared-memory ring misuse or corruption
    ├── ConfigError (ValueError)               unknown key, bad value, bad file
    ├── ProtocolError (ValueError)             a malformed or unknown client/bus message
    ├── StoreError (OSError)                   the caption store cannot be opened, read or written
    └── StoreQueryError (ValueError)           a search query the store cannot run
"""

from __future__ import annotations


class VidnarrateError(Exception):
    """Base class of every error the application raises on purpose."""


class SourceError(VidnarrateError, OSError):
    """A video source cannot be opened or read. The message names the source and the reason."""


class SourceNotFound(SourceError, FileNotFoundError):
    """A file source does not exist."""


class UnsupportedSource(SourceError, ValueError):
    """The source string, container or codec is not one we can read."""


class SourceTimeout(SourceError, TimeoutError):
    """The source delivered nothing within the read timeout: treated as a stall."""


class RingError(VidnarrateError, RuntimeError):
    """A shared-memory ring was misused (frame too large, bad name) or could not be attached."""


class ConfigError(VidnarrateError, ValueError):
    """A configuration key is unknown or a value is invalid. The message names the key and file."""


class ProtocolError(VidnarrateError, ValueError):
    """A message on the websocket or the bus does not follow the documented schema."""


class StoreError(VidnarrateError, OSError):
    """The caption store cannot be used: a newer schema, a corrupt or foreign file, a folder where
    it cannot be created, a full disk. The message names the file and the reason."""


class StoreQueryError(VidnarrateError, ValueError):
    """A search query that cannot be run (too long, no words, an unbalanced quote). The message names
    the query and the reason."""
