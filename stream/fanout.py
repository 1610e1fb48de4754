"""The gateway's state, without I/O: per-client queues, the replay store, the status board and the
pending asks. :mod:`stream.clients` and :mod:`stream.gateway` wire these to websockets and zmq;
everything here is plain data structures with bounded memory, tested on their own.
"""

from __future__ import annotations

import itertools
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from . import messages
from .messages import (
    AskId,
    CaptureStatus,
    Dropped,
    ErrorCode,
    InferenceStatus,
    Message,
    MessageError,
    OutputsStatus,
    Processes,
    RecorderStatus,
    Status,
    StreamState,
)
from .requests import Ask, Subscribe
from .storereplay import ReplayEntry


class ClientQueue:
    """A bounded queue of encoded messages for one client; when full, the oldest message goes.

    Drops are counted; :meth:`pop` hands out a ``dropped`` notice (count since the last notice and the
    total) before the next surviving message, so the client learns exactly where the gap is.
    ``behind_since`` is when the queue last overflowed without having emptied since: the gateway
    closes a client that stays behind too long.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"client queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[bytes] = deque()
        self.dropped_pending = 0
        self.dropped_total = 0
        self.behind_since: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items) or self.dropped_pending > 0

    def push(self, item: bytes, now: float) -> bool:
        """Queue ``item``; returns True when an older message had to be dropped for it."""
        overflow = len(self._items) >= self.capacity
        if overflow:
            self._items.popleft()
            self.dropped_pending += 1
            self.dropped_total += 1
            if self.behind_since is None:
                self.behind_since = now
        self._items.append(item)
        return overflow

    def pop(self) -> bytes | None:
        """The next thing to send (a ``dropped`` notice first, if messages were lost), or None."""
        if self.dropped_pending:
            notice = Dropped(count=self.dropped_pending, total=self.dropped_total)
            self.dropped_pending = 0
            return notice.to_json()
        if not self._items:
            return None
        item = self._items.popleft()
        if not self._items:
            self.behind_since = None  # caught up
        return item

    def behind_for(self, now: float) -> float:
        return 0.0 if self.behind_since is None else now - self.behind_since


class ReplayStore:
    """The last ``per_stream`` captions of each stream (at most ``max_streams`` streams; the stream
    heard from least recently is forgotten first), as the JSON bytes they arrived in.

    Each caption is marked ``"replayed": true`` once, when stored, without being decoded: a client
    that re-subscribes in a loop then costs queue pushes, not JSON work that would stall every other
    client. Replay is in arrival order, the order live clients saw.
    """

    def __init__(self, per_stream: int, *, max_streams: int = 256) -> None:
        self.per_stream = per_stream
        self.max_streams = max_streams
        self._streams: OrderedDict[str, deque[tuple[int, ReplayEntry]]] = OrderedDict()
        self._arrivals = itertools.count()

    def add(self, stream: str, caption: bytes, *, seq: int | None = None, wall_end: float = 0.0) -> None:
        """Keep ``caption`` (a caption's JSON, as ``Caption.to_json()`` made it) of ``stream``; its
        ``seq`` and ``wall_end``, when given, let a replay from the store be merged with it."""
        if self.per_stream <= 0:
            return
        store = self._streams.get(stream)
        if store is None:
            store = self._streams[stream] = deque(maxlen=self.per_stream)
            while len(self._streams) > self.max_streams:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(stream)
        entry = ReplayEntry(stream, seq, wall_end, messages.mark_replayed(caption))
        store.append((next(self._arrivals), entry))

    def recent(self, request: Subscribe, count: int) -> list[bytes]:
        """Up to ``count`` most recent captions of each requested stream, oldest first, marked
        ``"replayed": true`` and ready to send."""
        if count <= 0 or not request.wants_type("caption"):
            return []
        picked: list[tuple[int, ReplayEntry]] = []
        for stream, store in self._streams.items():
            if request.wants(stream):
                picked.extend(itertools.islice(store, max(0, len(store) - count), None))
        picked.sort(key=lambda item: item[0])
        return [entry.body for _, entry in picked]

    def entries(self, request: Subscribe) -> dict[str, list[ReplayEntry]]:
        """Every kept caption of each requested stream, in arrival order (to merge with the store's)."""
        return {
            stream: [entry for _, entry in store]
            for stream, store in self._streams.items()
            if request.wants(stream)
        }

    def streams(self) -> list[str]:
        return list(self._streams)


_CAPTURE_FIELDS = ("fps", "frames", "drops", "reconnects", "decode_errors", "width", "height", "error")
_INFERENCE_FIELDS = (
    "lag_s",
    "skipped",
    "captions",
    "caption_errors",
    "encodes_per_frame",
    "caption_latency_ms",
)


class StatusBoard:
    """Merges :class:`CaptureStatus`, :class:`InferenceStatus`, :class:`Processes` and
    :class:`RecorderStatus` reports into the client-facing :class:`Status`.

    Per stream: the capture figures (``state``, ``fps``, ``frames``, ``drops``, ``reconnects``,
    ``decode_errors``, ``width``, ``height``, ``error``), ``age_s`` (seconds since the capture report)
    and the inference figures (``lag_s``, ``skipped``, ``captions``, ``encodes_per_frame``,
    ``caption_latency_ms`` and whatever else the inference process adds). A stream whose capture
    process the supervisor reports as not alive is shown ``lost`` (unless it had ``ended``, or its
    process finished with exit code 0, which only a source that ended does): its last report would
    otherwise say ``live`` forever. With several inference processes (``[model] devices``),
    ``inference`` names the role of the one that owns the stream.

    ``recorder``: the recorder's figures (``store``, ``written``, ``dropped``, ``queue``, ``errors``,
    ``error``, ``last_commit_wall``) and ``age_s``, seconds since its report; absent until it reports.
    ``outputs``: the outputs process's figures per output (:class:`OutputsStatus`), likewise.
    """

    def __init__(self, *, max_streams: int = 256) -> None:
        self.max_streams = max_streams
        self._capture: dict[str, CaptureStatus] = {}
        self._capture_at: dict[str, float] = {}
        self._inference: dict[str, Message] = {}
        self._model: tuple[str | None, str | None] = (None, None)
        self._backend: Message | None = None
        self._inference_reports: dict[str, InferenceStatus] = {}  # role -> its latest report
        self._owner: dict[str, str] = {}  # stream -> the role of the inference process reporting it
        self._processes: dict[str, Message] = {}
        self._recorder: RecorderStatus | None = None
        self._recorder_at = 0.0
        self._outputs: OutputsStatus | None = None

    def update(
        self, report: CaptureStatus | InferenceStatus | Processes | RecorderStatus | OutputsStatus, now: float
    ) -> bool:
        """Fold in a report; True when something a viewer should see at once changed (a stream
        appeared or changed state, a process restarted or died, the model changed, the recorder
        reported for the first time or its last error changed).

        Raises :class:`ValueError` for a report that cannot be kept (naming the stream).
        """
        if isinstance(report, CaptureStatus):
            return self._update_capture(report, now)
        if isinstance(report, InferenceStatus):
            return self._update_inference(report)
        if isinstance(report, OutputsStatus):
            old_states = {
                k: v.get("state") for k, v in (self._outputs.outputs if self._outputs else {}).items()
            }
            self._outputs = report
            return old_states != {k: v.get("state") for k, v in report.outputs.items()}
        if isinstance(report, RecorderStatus):
            old, self._recorder, self._recorder_at = self._recorder, report, now
            return old is None or old.error != report.error or old.store != report.store
        return self._update_processes(report)

    def _update_capture(self, report: CaptureStatus, now: float) -> bool:
        stream = report.stream
        if not stream:
            raise ValueError("capture_status without a 'stream' name")
        old = self._capture.get(stream)
        if old is None and not self._room_for(stream):
            raise ValueError(
                f"capture_status of {stream!r} ignored: already tracking {self.max_streams} streams"
            )
        self._capture[stream] = report
        self._capture_at[stream] = now
        return old is None or old.state != report.state or old.error != report.error

    def _update_inference(self, report: InferenceStatus) -> bool:
        """Each inference process (``[model] devices`` starts several) reports only its own streams:
        the latest report of each role is kept and their streams merged; ``device`` lists each
        process's device in role order when there are several."""
        if report.role not in self._inference_reports and len(self._inference_reports) >= self.max_streams:
            raise ValueError(f"inference_status of {report.role!r} ignored: too many inference processes")
        self._inference_reports[report.role] = report
        reports = [self._inference_reports[role] for role in sorted(self._inference_reports)]
        owner = {name: r.role for r in reports for name in r.streams}
        figures = {name: dict(r.streams[name]) for r in reports for name in r.streams}
        figures = dict(itertools.islice(figures.items(), self.max_streams))
        new_streams = set(figures) - set(self._inference)
        device = report.device if len(reports) == 1 else ", ".join(r.device for r in reports)
        model = (report.model, device)
        changed = bool(new_streams) or model != self._model or owner != self._owner
        old_state = self._backend.get("state") if self._backend else None
        changed = changed or (report.backend or {}).get("state") != old_state
        self._inference = figures
        self._owner = owner if len(reports) > 1 else {}
        self._model = model
        self._backend = report.backend
        return changed

    def _update_processes(self, report: Processes) -> bool:
        fresh = {
            role: dict(info)
            for role, info in itertools.islice(report.processes.items(), 4 * self.max_streams)
        }

        def key(info: Message) -> tuple[Any, ...]:
            return info.get("pid"), info.get("restarts"), info.get("alive")

        changed = fresh.keys() != self._processes.keys() or any(
            key(info) != key(self._processes[role]) for role, info in fresh.items()
        )
        self._processes = fresh
        return changed

    def _room_for(self, stream: str) -> bool:
        return stream in self.streams() or len(self.streams()) < self.max_streams

    def streams(self) -> set[str]:
        return set(self._capture) | set(self._inference)

    def snapshot(self, *, now: float, wall: float, clients: int | None = None) -> Status:
        streams: dict[str, Message] = {}
        for name in sorted(self.streams()):
            entry: Message = dict.fromkeys(("state", *_CAPTURE_FIELDS))
            report = self._capture.get(name)
            entry["state"] = StreamState.CONNECTING.value
            if report is not None:
                entry.update({field: getattr(report, field) for field in _CAPTURE_FIELDS})
                entry["state"] = report.state.value
            entry["age_s"] = round(now - self._capture_at[name], 3) if name in self._capture_at else None
            proc = self._processes.get(f"capture:{name}")
            if proc is not None and proc.get("alive") is False and entry["state"] != StreamState.ENDED:
                if proc.get("finished") and proc.get("exit_code") == 0:
                    # Exit code 0 is a source that ended (its own "ended" report may have been lost).
                    entry["state"] = StreamState.ENDED.value
                else:
                    entry["state"] = StreamState.LOST.value
                    entry["error"] = entry["error"] or "its capture process is not running"
            figures = self._inference.get(name, {})
            for field in _INFERENCE_FIELDS:
                entry[field] = figures.get(field)
            for field, value in figures.items():
                entry.setdefault(field, value)
            if name in self._owner:
                entry["inference"] = self._owner[name]
            streams[name] = entry
        recorder = None
        if self._recorder is not None:
            recorder = {k: v for k, v in self._recorder.to_dict().items() if k not in ("type", "wall")}
            recorder["age_s"] = round(now - self._recorder_at, 3)
        return Status(
            streams=streams,
            processes={r: dict(p) for r, p in self._processes.items()},
            model=self._model[0],
            device=self._model[1],
            wall=wall,
            clients=clients,
            recorder=recorder,
            outputs=None if self._outputs is None else {k: dict(v) for k, v in self._outputs.outputs.items()},
            backend=self._backend,
        )


@dataclass(frozen=True)
class PendingAsk:
    key: str  # the gateway's id for the request, sent to the inference process
    client: int  # the asking client's connection number
    request_id: AskId  # the client's own id, echoed in the reply
    stream: str
    deadline: float  # monotonic time after which the asker gets an ask_timeout error


class ClientLimit:
    """How many requests each client has in flight, capped at ``per_client`` (asks, store queries)."""

    def __init__(self, per_client: int) -> None:
        self.per_client = per_client
        self._running: dict[int, int] = {}

    def full(self, client: int) -> bool:
        return self._running.get(client, 0) >= self.per_client

    def start(self, client: int) -> bool:
        """Count one more request of ``client``; False (nothing counted) when it is at the cap."""
        if self.full(client):
            return False
        self._running[client] = self._running.get(client, 0) + 1
        return True

    def finish(self, client: int) -> None:
        running = self._running.get(client, 0) - 1
        if running > 0:
            self._running[client] = running
        else:
            self._running.pop(client, None)

    def forget(self, client: int) -> None:
        """The client is gone: whatever it had in flight no longer counts."""
        self._running.pop(client, None)

    def __len__(self) -> int:
        """Requests in flight, of every client."""
        return sum(self._running.values())


class PendingAsks:
    """Asks forwarded to the inference process and not answered yet, capped per client and in all.

    The inference process sees the gateway's own key, never the client's id: two clients may both use
    ``"id": 1``, and an answer must reach only its asker.
    """

    def __init__(self, *, timeout: float, per_client: int = 8, total: int = 1024) -> None:
        self.timeout = timeout
        self.per_client = per_client
        self.total = total
        self._prefix = uuid.uuid4().hex[:8]
        self._counter = itertools.count(1)
        self._pending: dict[str, PendingAsk] = {}
        self._per_client = ClientLimit(per_client)

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, client: int, ask: Ask, now: float) -> PendingAsk:
        """Register an ask; raises :class:`MessageError` (``too_many_asks``) past a cap."""
        if self._per_client.full(client):
            raise MessageError(
                ErrorCode.TOO_MANY_ASKS,
                f"{self.per_client} of your asks are still unanswered; wait for one",
                ask.id,
            )
        if len(self._pending) >= self.total:
            raise MessageError(
                ErrorCode.TOO_MANY_ASKS, "the server has too many unanswered asks; retry later", ask.id
            )
        pending = PendingAsk(
            key=f"{self._prefix}-{next(self._counter)}",
            client=client,
            request_id=ask.id,
            stream=ask.stream,
            deadline=now + self.timeout,
        )
        self._pending[pending.key] = pending
        self._per_client.start(client)
        return pending

    def resolve(self, key: Any) -> PendingAsk | None:
        """The ask this answer key belongs to (removed), or None (late, or another gateway's)."""
        if not isinstance(key, str):
            return None
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._per_client.finish(pending.client)
        return pending

    def expire(self, now: float) -> list[PendingAsk]:
        expired = [p for p in self._pending.values() if p.deadline <= now]
        for pending in expired:
            del self._pending[pending.key]
            self._per_client.finish(pending.client)
        return expired

    def drop_client(self, client: int) -> None:
        for key in [k for k, p in self._pending.items() if p.client == client]:
            del self._pending[key]
        self._per_client.forget(client)
