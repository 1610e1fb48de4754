"""The live pipeline of ``vidnarrate run``: its rings, its processes, and how it starts and stops.

Start order: stale rings of dead runs are removed, then one ring per source is created (owned here,
so capture and inference restarts re-attach to it), then the gateway (its subscription must exist
before anyone publishes), the inference process, and one capture process per source. Stop order is
the reverse intent: every child is told at once, given ``stop_timeout``, then terminated; then the
rings are unlinked and the run directory (zmq socket files) removed. Nothing is left behind.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bus import RunPaths, remove_stale_runs
from .captioning import CaptionSettings
from .capture import capture_main
from .config import Config, load_prompts, resolve_prompt
from .errors import ConfigError
from .gateway import gateway_main
from .gateway_options import GatewayOptions
from .inference import READY_FILE, InferenceOptions, inference_main
from .process import ExitCode
from .ring import FrameRing, remove_stale_rings, ring_name
from .sources import SourceOptions, parse_source
from .supervisor import ChildSpec, Supervisor

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class NamedSource:
    name: str
    source: str


def parse_named_sources(values: list[str]) -> list[NamedSource]:
    """``name=SRC`` or ``SRC`` (named ``cam0``, ``cam1``, ...). A URL's own ``=`` is never taken for a
    name: the part before ``=`` must be a plain identifier."""
    sources: list[NamedSource] = []
    for index, value in enumerate(values):
        name, sep, rest = value.partition("=")
        if sep and _NAME_RE.match(name) and rest:
            sources.append(NamedSource(name, rest))
        elif sep and rest and "/" not in name and "://" not in value and not Path(value).exists():
            raise ConfigError(
                f"--source {value!r}: {name!r} is not a source name (NAME=SRC: a letter, then letters, "
                "digits, _ or -, at most 64)"
            )
        else:
            sources.append(NamedSource(f"cam{index}", value))
    check_unique_names(sources)
    for source in sources:
        parse_source(source.source)  # unknown schemes fail here, before anything starts
    if not sources:
        raise ConfigError("at least one --source is needed")
    return sources


def check_unique_names(sources: list[NamedSource]) -> None:
    """Each source's name keys its ring, its captions and its status: two of a name would collide."""
    seen: set[str] = set()
    for source in sources:
        if source.name in seen:
            raise ConfigError(
                f"--source: the name {source.name!r} is used twice (name them: --source a=SRC --source b=SRC)"
            )
        seen.add(source.name)


def caption_settings(config: Config, *, offline: bool = False) -> CaptionSettings:
    presets = load_prompts()
    return CaptionSettings(
        prompt=resolve_prompt(config.captions.prompt, presets),
        context_template=presets.get("context", CaptionSettings.context_template),
        context_captions=config.captions.context_captions,
        max_new_tokens=config.captions.max_new_tokens,
        decoding=config.captions.decoding,
        max_slice_nums=config.offline.max_slice_nums if offline else config.model.max_slice_nums,
        fps=config.sampler.fps,
        window=config.offline.window if offline else config.sampler.window,
        stride=config.offline.stride if offline else config.sampler.stride,
        max_frames=config.sampler.max_frames,
        skip_stale=not offline,
        time_origin=None if offline else 0.0,
    )


def source_options(config: Config, *, realtime: bool | None = None) -> SourceOptions:
    c = config.capture
    return SourceOptions(
        max_side=c.max_side,
        realtime=c.realtime if realtime is None else realtime,
        loop=c.loop_files,
        open_timeout=c.open_timeout,
        read_timeout=c.read_timeout,
        fps_hint=c.screen_fps,
    )


class LivePipeline:
    """Everything ``vidnarrate run`` starts: :meth:`start`, then :meth:`poll` in a loop, then :meth:`stop`."""

    def __init__(
        self,
        config: Config,
        sources: list[NamedSource],
        *,
        run_root: Path | None = None,
        log_level: int | str = logging.INFO,
    ) -> None:
        self.config = config
        self.sources = sources
        self.run = RunPaths.create(root=run_root)
        self.ready_file = self.run.run_dir / "gateway.json"
        self.rings: dict[str, FrameRing] = {}
        self.supervisor = Supervisor(
            self.run,
            backoff_initial=config.supervisor.restart_backoff_initial,
            backoff_max=config.supervisor.restart_backoff_max,
            stop_timeout=config.supervisor.stop_timeout,
            log_level=log_level,
        )
        self._stopped = False
        self._captures_started = False

    # -- start --------------------------------------------------------------------------------------
    def start(self) -> None:
        removed = remove_stale_rings()
        if removed:
            log.info("removed %d shared-memory ring(s) left by a dead run", len(removed))
        for stale in remove_stale_runs(self.run.run_dir.parent):
            log.info("removed the run directory %s left by a dead run", stale)
        side = self.config.capture.max_side
        for source in self.sources:
            name = ring_name(self.run.run_id, source.name)
            self.rings[source.name] = FrameRing.create(
                name, slots=self.config.capture.ring_slots, max_height=side, max_width=side
            )
        self.supervisor.open_bus()
        self.supervisor.start(self._gateway_spec())
        self.supervisor.start(self._inference_spec())

    def _start_captures_when_model_ready(self) -> None:
        """Captures start once the model is loaded: a file played as live would otherwise run ahead
        uncaptioned while the weights load (minutes for the real model)."""
        if self._captures_started or not (self.run.run_dir / READY_FILE).exists():
            return
        self._captures_started = True
        for source in self.sources:
            self.supervisor.start(self._capture_spec(source))

    def _roles(self) -> list[str]:
        return ["supervisor", "inference"] + [f"capture:{s.name}" for s in self.sources]

    def _gateway_spec(self) -> ChildSpec:
        g = self.config.gateway
        return ChildSpec(
            role="gateway",
            target=gateway_main,
            kwargs={
                "events_endpoints": [self.run.publisher_endpoint(role) for role in self._roles()],
                "asks_endpoint": self.run.asks_endpoint,
                "options": GatewayOptions(
                    host=g.host,
                    port=g.port,
                    token=g.resolved_token(),
                    client_queue=g.client_queue,
                    replay=g.replay,
                    max_message_bytes=g.max_message_bytes,
                ),
                "ready_file": str(self.ready_file),
            },
            fatal_codes=(2,),
        )

    def _inference_spec(self) -> ChildSpec:
        c = self.config
        options = InferenceOptions(
            run_id=self.run.run_id,
            run_dir=str(self.run.run_dir),
            streams={s.name: self.rings[s.name].name for s in self.sources},
            model=c.model.name,
            device=c.model.device,
            dtype=c.model.dtype,
            captions=caption_settings(c),
            stream_tokens=c.captions.stream_tokens,
            thumbnails=c.captions.thumbnails,
            thumbnail_side=c.captions.thumbnail_side,
            max_inp_length=c.model.max_inp_length,
        )
        return ChildSpec(
            role="inference",
            target=inference_main,
            kwargs={"options": options},
            fatal_codes=(ExitCode.CONFIG,),
        )

    def _capture_spec(self, source: NamedSource) -> ChildSpec:
        c = self.config.capture
        return ChildSpec(
            role=f"capture:{source.name}",
            target=capture_main,
            kwargs={
                "name": source.name,
                "source": source.source,
                "ring_name": self.rings[source.name].name,
                "status_endpoint": self.run.publisher_endpoint(f"capture:{source.name}"),
                "options": source_options(self.config),
                "backoff_initial": c.backoff_initial,
                "backoff_max": c.backoff_max,
            },
            fatal_codes=(ExitCode.CONFIG,),
        )

    # -- run ----------------------------------------------------------------------------------------
    def wait_ready(
        self, timeout: float = 30.0, stopping: Callable[[], bool] = lambda: False
    ) -> dict[str, Any] | None:
        """Wait for the gateway to listen; returns ``{"port", "pid", "url"}``, or None as soon as
        ``stopping()`` says the user gave up (Ctrl-C while starting)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if stopping():
                return None
            self.poll()
            if self.ready_file.exists():
                return json.loads(self.ready_file.read_text())
            fatal = self.supervisor.fatal_exit()
            if fatal is not None:
                raise RuntimeError(f"{fatal[0]} exited with code {fatal[1]} while starting")
            time.sleep(0.05)
        raise TimeoutError(f"the gateway did not start listening within {timeout:.0f} s")

    def poll(self) -> None:
        self.supervisor.poll()
        self._start_captures_when_model_ready()

    @property
    def captures_started(self) -> bool:
        return self._captures_started

    def fatal_exit(self) -> tuple[str, int] | None:
        return self.supervisor.fatal_exit()

    def every_source_failed(self) -> bool:
        """Every capture process exited with a fatal code: the run has nothing left to caption."""
        failed = self.supervisor.failed_roles()
        return bool(self.sources) and all(f"capture:{s.name}" in failed for s in self.sources)

    def viewer_url(self, info: dict[str, Any]) -> str:
        host = self.config.gateway.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{shown}:{info['port']}/"

    # -- stop ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.supervisor.stop()
        for ring in self.rings.values():
            ring.close()
            ring.unlink()
        self.rings.clear()
        self.run.remove()
