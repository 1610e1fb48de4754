"""The shared-memory frame ring: one writer process, any number of reader processes, one copy each way.

Layout of one POSIX shared-memory segment (all integers little-endian int64)::

    0      global header: magic, version, geometry, creator pid + start time, head seq, ended flag
    256    reader table: MAX_READERS x (pid, start time, cursor, spare), the lossless-mode cursors
    1024   slot headers: slots x 64 bytes (state, height, width, pts, wall)
    4096*n slot data: slots x round_up(max_height * max_width * 3, 4096), page aligned

Frame ``seq`` lives in slot ``seq % slots``. Each slot's ``state`` is a seqlock that also names the
frame: ``2*seq + 1`` while the writer copies frame ``seq`` in, ``2*seq + 2`` once it is complete. A reader
checks ``state == 2*seq + 2``, copies the pixels out, and checks ``state`` again; any change means the
writer overwrote the slot meanwhile, and the read returns ``None`` rather than a torn frame.

Memory ordering: Python promises nothing across processes. The protocol relies on every store (and
every load) of one process becoming visible in program order, which x86-64 (TSO) guarantees for the
plain 8-byte stores numpy makes here. Weakly ordered CPUs (aarch64) would need fences Python cannot
issue; there a torn frame is possible in theory. ``tests/test_ring_processes.py`` checks every frame
a reader gets against a pattern derived from its seq under heavy overwrite.

Modes:

* live (default): ``write`` never blocks and overwrites the oldest slot; slow readers miss frames
  (they see the gap in ``seq``).
* lossless: a slot is overwritten only once every registered reader has ``release``-d the frame in
  it, and while no reader is registered at all the writer waits for one (so a file read faster than
  real time loses nothing before the inference process attaches). A reader process that died is
  unregistered by the waiting writer, so a crash never blocks capture forever.

Use: a writer calls :meth:`FrameRing.write` per frame (in lossless mode with a short ``timeout`` in a
loop that checks its stop flag: -1 means nothing was written yet). A live reader takes
:meth:`~FrameRing.latest` or everything it has not seen with :meth:`~FrameRing.since`; a reader that
needs only some frames (the sampler keeps 1 in 30) reads :meth:`~FrameRing.info` for each and
:meth:`~FrameRing.read` for those it keeps. A lossless reader registers, reads ``last + 1``, releases
it, waits with :meth:`~FrameRing.wait_for`, and stops once :attr:`~FrameRing.ended` and drained.

Lifetime: the creator (the supervisor) owns the name: it ``unlink``-s it on clean shutdown (leaving a
``with`` block does). ``attach`` never registers the segment with ``multiprocessing``'s
resource_tracker, on any Python version: on 3.11 ``SharedMemory`` registers every attach in a tracker
that spawned children share, and its set-based bookkeeping unlinks segments still in use or prints
KeyErrors (CPython gh-82300, bpo-38119). We call the same POSIX primitives ``SharedMemory`` uses,
without the tracker (what ``track=False`` does on 3.13+). A run killed with SIGKILL leaves its
segments behind; :func:`remove_stale_rings` removes those whose creator process is gone, at the next
start.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import os
import re
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from .errors import RingError
from .procinfo import process_alive, process_start

try:  # the C module behind multiprocessing.shared_memory (POSIX only)
    import _posixshmem
except ImportError:  # pragma: no cover - Windows
    _posixshmem = None

log = logging.getLogger(__name__)

MAGIC = int.from_bytes(b"VNRING\x00\x01", "little")
VERSION = 3  # 2: slots have SLOT_SPARE_BYTES after the largest frame; 3: the source's end time
MAX_READERS = 16

_PAGE = 4096
# Bytes after every slot's largest frame that hold no pixels: room for converters that store whole
# vectors past the last row (see write_with; sources.RGB_OVERRUN_BYTES must not exceed it).
SLOT_SPARE_BYTES = 4096
_READERS_OFFSET = 256
_SLOT_HEADERS_OFFSET = 1024
_SLOT_HEADER_BYTES = 64

# Global header fields (int64 indices).
(_MAGIC, _VERSION, _SLOTS, _MAX_H, _MAX_W, _LOSSLESS, _PID, _START, _HEAD, _ENDED, _SLOT_BYTES, _DATA) = (
    range(12)
)
# Where the source's last frame ends (stream time, microseconds; -1: not said), set with the end mark:
# a reader of a sampled ring cannot tell it from the frames, which stop at the last sample.
_END_US = 12
# Slot header fields (int64 / float64 indices within a slot's 64 bytes).
_STATE, _H, _W, _PTS, _WALL = range(5)
# Reader table fields.
_R_PID, _R_START, _R_CURSOR = range(3)

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,200}$")
_SHM_DIR = Path("/dev/shm")
# How often a blocked lossless writer checks whether the readers it waits for are still alive.
_REAP_INTERVAL_S = 0.25


@dataclass(frozen=True, eq=False)
class Frame:
    """A frame as a reader gets it: ``image`` is a private copy (never a view into shared memory)."""

    seq: int
    pts: float
    wall: float
    image: np.ndarray  # uint8 (H, W, 3)


@dataclass(frozen=True)
class FrameInfo:
    """A frame's metadata without its pixels (see :meth:`FrameRing.info`)."""

    seq: int
    pts: float
    wall: float
    height: int
    width: int


def ring_name(run_id: str, source: str) -> str:
    """The shared-memory name for one source of one run: ``vn-<run id prefix>-<hash of both>``.

    At most 22 characters, within macOS's 31-character limit; the hash keeps it unique per run and
    source.
    """
    if not run_id or not source:
        raise RingError(f"ring name needs a run id and a source name (got {run_id!r}, {source!r})")
    short = re.sub(r"[^A-Za-z0-9]", "", run_id)[:8] or "run"
    digest = hashlib.blake2b(f"{run_id}\0{source}".encode(), digest_size=5).hexdigest()
    return f"vn-{short}-{digest}"


def _round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise RingError(f"bad ring name {name!r}: use letters, digits, '.', '_' and '-' (at most 200)")
    if _posixshmem is None:  # pragma: no cover - Windows
        raise RingError(f"ring {name}: POSIX shared memory is not available on this platform")


def _pause(waited: float, remaining: float | None = None) -> None:
    """Sleep a quarter of the time waited so far (20 us .. 2 ms, never past ``remaining``): fast
    wake-ups while frames flow, an idle CPU when they do not. There is no cross-process condition
    variable in the standard library, so both sides poll."""
    pause = min(max(waited / 4, 20e-6), 2e-3)
    time.sleep(pause if remaining is None else max(min(pause, remaining), 0.0))


class FrameRing:
    """A fixed-size ring of frames in shared memory. Build one with :meth:`create` or :meth:`attach`.

    One process writes (the creator or any process that attached: a restarted capture re-attaches and
    continues the sequence); any number read. Instances are not thread-safe.
    """

    def __init__(self, name: str, fd: int, buf: mmap.mmap, *, created: bool) -> None:
        self._name = name
        self._fd = fd
        self._mmap: mmap.mmap | None = buf
        self._created = created
        self._my_readers: set[int] = set()
        self._pid = os.getpid()
        head = np.ndarray((_READERS_OFFSET // 8,), dtype=np.int64, buffer=buf)
        if int(head[_MAGIC]) != MAGIC or int(head[_VERSION]) != VERSION:
            del head
            raise RingError(f"ring {name}: not a vidnarrate ring of version {VERSION} (bad header)")
        self._slots = int(head[_SLOTS])
        self._max_h = int(head[_MAX_H])
        self._max_w = int(head[_MAX_W])
        self._lossless = bool(head[_LOSSLESS])
        slot_bytes = int(head[_SLOT_BYTES])
        data = int(head[_DATA])
        if len(buf) < data + self._slots * slot_bytes:
            del head
            raise RingError(f"ring {name}: segment is {len(buf)} bytes, smaller than its header says")
        self._head = head
        self._readers = np.ndarray((MAX_READERS, 4), dtype=np.int64, buffer=buf, offset=_READERS_OFFSET)
        self._slot_i = np.ndarray((self._slots, 8), dtype=np.int64, buffer=buf, offset=_SLOT_HEADERS_OFFSET)
        self._slot_f = np.ndarray((self._slots, 8), dtype=np.float64, buffer=buf, offset=_SLOT_HEADERS_OFFSET)
        self._data = [
            np.ndarray((slot_bytes,), dtype=np.uint8, buffer=buf, offset=data + i * slot_bytes)
            for i in range(self._slots)
        ]

    # -- construction -----------------------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str, *, slots: int, max_height: int, max_width: int, lossless: bool = False
    ) -> FrameRing:
        """Create the segment (it must not exist) sized for ``slots`` frames of up to max_height x max_width.

        The memory is reserved up front (``posix_fallocate``), so a full /dev/shm is a clear
        :class:`RingError` here rather than a SIGBUS in the middle of a write.
        """
        _check_name(name)
        if slots < 2:
            raise RingError(f"ring {name}: slots must be at least 2 (got {slots})")
        if max_height < 1 or max_width < 1:
            raise RingError(f"ring {name}: max frame size must be positive (got {max_height}x{max_width})")
        slot_bytes = _round_up(max_height * max_width * 3 + SLOT_SPARE_BYTES, _PAGE)
        data = _round_up(_SLOT_HEADERS_OFFSET + slots * _SLOT_HEADER_BYTES, _PAGE)
        size = data + slots * slot_bytes
        assert _posixshmem is not None
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_CREAT | os.O_EXCL | os.O_RDWR, mode=0o600)
        except FileExistsError:
            raise RingError(
                f"ring {name} already exists (a run with the same id is alive, or a dead run "
                "left it: remove_stale_rings() removes those)"
            ) from None
        try:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, size)
            else:  # pragma: no cover - macOS
                os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size)
        except OSError as exc:
            os.close(fd)
            _posixshmem.shm_unlink("/" + name)
            raise RingError(
                f"ring {name}: cannot reserve {size / 2**20:.1f} MiB of shared memory "
                f"({slots} slots of {max_height}x{max_width}): {exc}"
            ) from exc
        header = np.ndarray((_READERS_OFFSET // 8,), dtype=np.int64, buffer=buf)
        header[_SLOTS], header[_MAX_H], header[_MAX_W] = slots, max_height, max_width
        header[_LOSSLESS] = int(lossless)
        header[_PID], header[_START] = os.getpid(), process_start(os.getpid()) or 0
        header[_HEAD], header[_ENDED], header[_END_US] = -1, 0, -1
        header[_SLOT_BYTES], header[_DATA] = slot_bytes, data
        header[_VERSION] = VERSION
        header[_MAGIC] = MAGIC  # last: a half-initialised segment never looks like a ring
        del header
        log.debug(
            "created ring %s: %d slots of %dx%d, %.1f MiB, %s",
            name,
            slots,
            max_height,
            max_width,
            size / 2**20,
            "lossless" if lossless else "live",
        )
        return cls(name, fd, buf, created=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Open an existing ring, to read or (one process at a time) to write. Never unlinks it."""
        _check_name(name)
        assert _posixshmem is not None
        try:
            fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        except FileNotFoundError:
            raise RingError(f"no ring named {name} (not created yet, or its run has ended)") from None
        try:
            size = os.fstat(fd).st_size
            if size < _PAGE:
                raise RingError(f"ring {name}: segment is only {size} bytes (not a vidnarrate ring)")
            buf = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        try:
            return cls(name, fd, buf, created=False)
        except BaseException:
            buf.close()
            os.close(fd)
            raise

    # -- properties -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def slots(self) -> int:
        return self._slots

    @property
    def max_shape(self) -> tuple[int, int, int]:
        return (self._max_h, self._max_w, 3)

    @property
    def lossless(self) -> bool:
        return self._lossless

    @property
    def head_seq(self) -> int:
        """The last completely written seq; -1 while the ring is empty."""
        self._check_open()
        return int(self._head[_HEAD])

    @property
    def ended(self) -> bool:
        """True once the writer said no more frames will come (the file ended). Drain, then stop."""
        self._check_open()
        return bool(self._head[_ENDED])

    @property
    def creator_pid(self) -> int:
        self._check_open()
        return int(self._head[_PID])

    # -- writer -----------------------------------------------------------------------------------

    def write(self, image: np.ndarray, pts: float, wall: float, *, timeout: float | None = None) -> int:
        """Copy ``image`` (uint8, H x W x 3, at most the ring's max size) into the next slot; return its seq.

        Live mode never blocks. Lossless mode waits until every registered reader has released the
        frame this write would overwrite (or, with no reader registered, until one registers and
        does); after ``timeout`` seconds (None: forever) it gives up, writes nothing and returns -1,
        so a capture loop can check its stop flag and call again.
        """
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise RingError(
                f"ring {self._name}: frames must be uint8 (H, W, 3), got {image.dtype} {tuple(image.shape)}"
            )
        return self.write_with(
            int(image.shape[0]),
            int(image.shape[1]),
            lambda view: np.copyto(view, image, casting="no"),
            pts,
            wall,
            timeout=timeout,
        )

    def write_with(
        self,
        height: int,
        width: int,
        fill: Callable[[np.ndarray], object],
        pts: float,
        wall: float,
        *,
        timeout: float | None = None,
    ) -> int:
        """Like :meth:`write`, but ``fill(view)`` puts the pixels into the slot itself: ``view`` is a
        C-contiguous uint8 (height, width, 3) array in shared memory, valid only during the call
        (keep no reference). A decoder that converts straight into it saves ``write``'s copy. If
        ``fill`` raises, nothing is published (the slot reads as being written until the next write).
        ``view`` is followed by at least :data:`SLOT_SPARE_BYTES` bytes of the same slot that no
        reader looks at, for converters whose vector stores run past the last row.
        """
        self._check_open()
        h, w = int(height), int(width)
        if h > self._max_h or w > self._max_w or h < 1 or w < 1:
            raise RingError(
                f"ring {self._name}: frame of shape {(h, w, 3)} does not fit its "
                f"slots of at most {self.max_shape}"
            )
        seq = int(self._head[_HEAD]) + 1
        slot = seq % self._slots
        if self._lossless and seq >= self._slots and not self._wait_consumed(seq - self._slots, timeout):
            return -1
        si = self._slot_i
        si[slot, _STATE] = 2 * seq + 1
        si[slot, _H] = h
        si[slot, _W] = w
        self._slot_f[slot, _PTS] = pts
        self._slot_f[slot, _WALL] = wall
        fill(self._data[slot][: h * w * 3].reshape(h, w, 3))
        si[slot, _STATE] = 2 * seq + 2
        self._head[_HEAD] = seq
        return seq

    def mark_ended(self, end: float | None = None) -> None:
        """Tell readers that no more frames will come (sticky); ``end``: where the source's last frame
        ends in stream time, when the writer knows it (see :attr:`end_time`)."""
        self._check_open()
        if end is not None:
            self._head[_END_US] = round(end * 1e6)
        self._head[_ENDED] = 1

    @property
    def end_time(self) -> float | None:
        """Where the source's last frame ends (stream time), once the writer marked the ring ended
        with it; None otherwise. With every frame written it is about the newest frame's time; with
        only the samples written it is where the source really stopped, past the last sample."""
        self._check_open()
        value = int(self._head[_END_US])
        return None if value < 0 or not self._head[_ENDED] else value / 1e6

    def _consumed(self, seq: int) -> bool:
        readers = self._readers
        active = readers[:, _R_PID] != 0
        return bool(active.any()) and bool((readers[active, _R_CURSOR] >= seq).all())

    def _wait_consumed(self, seq: int, timeout: float | None) -> bool:
        if self._consumed(seq):
            return True
        start = time.monotonic()
        last_reap = start
        while True:
            now = time.monotonic()
            waited = now - start
            if timeout is not None and waited >= timeout:
                return False
            if now - last_reap >= _REAP_INTERVAL_S:
                self._reap_dead_readers()
                last_reap = now
            _pause(waited, None if timeout is None else timeout - waited)
            if self._consumed(seq):
                return True

    # -- readers ----------------------------------------------------------------------------------

    def _header(self, seq: int) -> tuple[int, FrameInfo] | None:
        """Slot and metadata of frame ``seq`` as they read now; the caller re-checks the slot's state
        after using them (seqlock), since the writer may be rewriting it."""
        self._check_open()
        if seq < 0:
            return None
        slot = seq % self._slots
        si = self._slot_i
        if int(si[slot, _STATE]) != 2 * seq + 2:
            return None
        h, w = int(si[slot, _H]), int(si[slot, _W])
        if not (0 < h <= self._max_h and 0 < w <= self._max_w):
            return None  # the writer is rewriting the header under us
        return slot, FrameInfo(seq, float(self._slot_f[slot, _PTS]), float(self._slot_f[slot, _WALL]), h, w)

    def _unchanged(self, slot: int, seq: int) -> bool:
        return int(self._slot_i[slot, _STATE]) == 2 * seq + 2

    def read(self, seq: int) -> Frame | None:
        """Frame ``seq`` as a private copy; None if it is not written yet or was already overwritten."""
        header = self._header(seq)
        if header is None:
            return None
        slot, info = header
        image = self._data[slot][: info.height * info.width * 3].reshape(info.height, info.width, 3).copy()
        if not self._unchanged(slot, seq):
            return None  # overwritten while we copied: the copy may be torn, drop it
        return Frame(seq, info.pts, info.wall, image)

    def info(self, seq: int) -> FrameInfo | None:
        """Frame ``seq``'s metadata without copying its pixels (None as for :meth:`read`): a reader that
        keeps 1 frame in 30 (the sampler) decides on this and reads only the frames it keeps."""
        header = self._header(seq)
        if header is None:
            return None
        slot, info = header
        return info if self._unchanged(slot, seq) else None

    def latest(self) -> Frame | None:
        """The newest complete frame, or None while the ring is empty."""
        while True:
            head = self.head_seq
            if head < 0:
                return None
            frame = self.read(head)
            if frame is not None:
                return frame
            # The writer lapped the whole ring while we copied: try the new head.

    def since(self, seq: int, limit: int | None = None) -> list[Frame]:
        """Frames with seq greater than ``seq`` still in the ring, oldest first (at most ``limit``).

        A gap in the seqs returned means those frames were overwritten before this reader got them.
        """
        head = self.head_seq
        first = max(seq + 1, head - self._slots + 1, 0)
        frames: list[Frame] = []
        for s in range(first, head + 1):
            if limit is not None and len(frames) >= limit:
                break
            frame = self.read(s)
            if frame is not None:
                frames.append(frame)
        return frames

    def wait_for(self, after: int, timeout: float | None = None) -> bool:
        """Wait until a frame newer than ``after`` is written: True; False on timeout or if the ring
        ended with nothing newer (check :attr:`ended`)."""
        start = time.monotonic()
        while True:
            if self.head_seq > after:
                return True
            if self.ended:
                return self.head_seq > after
            waited = time.monotonic() - start
            if timeout is not None and waited >= timeout:
                return False
            _pause(waited, None if timeout is None else timeout - waited)

    # -- lossless-mode cursors --------------------------------------------------------------------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive flock on the segment: serialises changes to the reader table across processes."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def register_reader(self, after: int | None = None) -> int:
        """Register this process as a reader whose progress a lossless writer waits for; returns its id.

        ``after``: the last seq it has already consumed; by default it gets every frame still in the
        ring. Call :meth:`release` as frames are consumed. Live rings accept readers and ignore them.
        """
        self._check_open()
        pid = os.getpid()
        with self._locked():
            free = np.flatnonzero(self._readers[:, _R_PID] == 0)
            if free.size == 0:
                self._reap_dead_readers(locked=True)
                free = np.flatnonzero(self._readers[:, _R_PID] == 0)
            if free.size == 0:
                raise RingError(f"ring {self._name}: all {MAX_READERS} reader slots are taken")
            rid = int(free[0])
            cursor = after if after is not None else max(self.head_seq - self._slots, -1)
            self._readers[rid, _R_START] = process_start(pid) or 0
            self._readers[rid, _R_CURSOR] = cursor
            self._readers[rid, _R_PID] = pid  # last: the entry is complete once it counts
        self._my_readers.add(rid)
        return rid

    def release(self, reader_id: int, seq: int) -> None:
        """Reader ``reader_id`` has consumed every frame up to ``seq``: the writer may reuse their slots."""
        self._check_reader(reader_id)
        if seq > int(self._readers[reader_id, _R_CURSOR]):
            self._readers[reader_id, _R_CURSOR] = seq

    def unregister_reader(self, reader_id: int) -> None:
        """Stop holding the writer back (a lossless writer with no readers left waits for a new one)."""
        self._check_reader(reader_id)
        with self._locked():
            self._readers[reader_id, _R_PID] = 0
        self._my_readers.discard(reader_id)

    def _check_reader(self, reader_id: int) -> None:
        self._check_open()
        if not 0 <= reader_id < MAX_READERS or int(self._readers[reader_id, _R_PID]) != os.getpid():
            raise RingError(f"ring {self._name}: reader {reader_id} is not registered by this process")

    def _reap_dead_readers(self, *, locked: bool = False) -> None:
        if not locked:
            with self._locked():
                self._reap_dead_readers(locked=True)
            return
        for rid in range(MAX_READERS):
            pid = int(self._readers[rid, _R_PID])
            if pid and not process_alive(pid, int(self._readers[rid, _R_START])):
                self._readers[rid, _R_PID] = 0
                log.warning("ring %s: reader %d (pid %d) died; unregistered it", self._name, rid, pid)

    # -- lifetime ---------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._mmap is None:
            raise RingError(f"ring {self._name} is closed")

    def close(self) -> None:
        """Unmap the segment (unregistering this process's readers). Idempotent; never unlinks."""
        if self._mmap is None:
            return
        if os.getpid() == self._pid:  # a forked copy must not touch the parent's readers
            for rid in list(self._my_readers):
                if int(self._readers[rid, _R_PID]) == self._pid:
                    self.unregister_reader(rid)
        buf = self._mmap
        self._mmap = None
        del self._head, self._readers, self._slot_i, self._slot_f, self._data
        try:
            buf.close()
        except BufferError as exc:  # pragma: no cover - only if someone kept a private view
            raise RingError(f"ring {self._name}: views into shared memory still exist: {exc}") from exc
        finally:
            os.close(self._fd)

    def unlink(self) -> None:
        """Remove the name (processes that have it mapped keep working). Idempotent."""
        _unlink_name(self._name)

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Close; the creator also unlinks (it owns the name)."""
        self.close()
        if self._created:
            self.unlink()

    def __repr__(self) -> str:
        state = "closed" if self._mmap is None else f"head={self.head_seq}"
        return (
            f"FrameRing({self._name!r}, slots={self._slots}, max={self._max_h}x{self._max_w}, "
            f"{'lossless' if self._lossless else 'live'}, {state})"
        )


def _unlink_name(name: str) -> bool:
    assert _posixshmem is not None
    try:
        _posixshmem.shm_unlink("/" + name)
    except FileNotFoundError:
        return False
    return True


_HEADER_STRUCT = struct.Struct("<8q")


def remove_stale_rings(prefix: str = "vn-") -> list[str]:
    """Unlink rings whose creator process is dead (a run killed with SIGKILL); return their names.

    Only segments that carry a ring header are touched; a live run's rings (creator alive) stay.
    Needs /dev/shm (Linux); elsewhere it returns []. Pids are those of this pid namespace: containers
    sharing one /dev/shm across namespaces must not both run it.
    """
    if not _SHM_DIR.is_dir():
        log.debug("no %s here: cannot list shared memory, nothing removed", _SHM_DIR)
        return []
    removed = []
    for path in sorted(_SHM_DIR.iterdir()):
        if not path.name.startswith(prefix):
            continue
        try:
            with path.open("rb") as f:
                raw = f.read(_HEADER_STRUCT.size)
        except OSError as exc:
            log.debug("cannot read %s: %s", path, exc)
            continue
        if len(raw) < _HEADER_STRUCT.size:
            continue
        fields = _HEADER_STRUCT.unpack(raw)
        if fields[_MAGIC] != MAGIC:
            log.debug("%s is not a vidnarrate ring; left alone", path.name)
            continue
        pid, start = fields[_PID], fields[_START]
        if process_alive(pid, start):
            continue
        if _unlink_name(path.name):
            log.info("removed stale ring %s (its creator, pid %d, is gone)", path.name, pid)
            removed.append(path.name)
    return removed
