"""The live pipeline of ``vidnarrate run``: its rings, its processes, and how it starts and stops.

Start order: stale rings of dead runs are removed, then one ring per source is created (owned here,
so capture and inference restarts re-attach to it), then the gateway and the recorder (their
subscriptions must exist before anyone publishes; the recorder only when the run has a store, the
outputs process only when ``[outputs]`` configures one), the
inference process (one per ``[model] devices`` entry, each with its share of the sources:
:mod:`stream.placement`), and, once every model is loaded, one capture process per source. Stop order is the
reverse intent: the inference is told first (it publishes the end of every open alert event as it
stops), then every other child, all within ``stop_timeout``, then terminated; then the rings
are unlinked and the run directory (zmq socket files) removed. Nothing is left behind.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .bus import RunPaths, remove_stale_runs
from .captioning import CaptionSettings
from .capture import capture_main
from .config import SOURCE_NAME_RE, SOURCE_NAME_RULE, Config, summary_preset
from .errors import ConfigError
from .gateway import gateway_main
from .gateway_options import GatewayOptions
from .inference import InferenceOptions, drained_file, inference_main, ready_file
from .outputs import OutputsOptions, outputs_main
from .placement import assign, inference_roles
from .process import ExitCode
from .prompts import load_prompts, resolve_prompt
from .recorder import RecorderOptions, recorder_main
from .ring import FrameRing, remove_stale_rings, ring_name
from .runwatch import SourceState
from .settings import options_from
from .sources import SourceOptions, parse_source
from .supervisor import ChildSpec, Supervisor
from .textwork import TextSettings

log = logging.getLogger(__name__)

DEMO_SOURCE = "demo"


@dataclass(frozen=True)
class NamedSource:
    name: str
    source: str


def parse_named_sources(values: list[str]) -> list[NamedSource]:
    """``--source`` values: ``name=SRC``, or ``SRC`` (named ``cam0``, ``cam1``, ... by position;
    ``demo`` is named ``demo``). A URL's own ``=`` is never taken for a name: the part before ``=``
    must be a plain identifier."""
    sources: list[NamedSource] = []
    for index, value in enumerate(values):
        name, sep, rest = value.partition("=")
        if sep and SOURCE_NAME_RE.match(name) and rest:
            sources.append(NamedSource(name, rest))
        elif sep and rest and "/" not in name and "://" not in value and not Path(value).exists():
            raise ConfigError(
                f"--source {value!r}: {name!r} is not a source name (NAME=SRC: {SOURCE_NAME_RULE})"
            )
        else:
            sources.append(NamedSource(DEMO_SOURCE if value == DEMO_SOURCE else f"cam{index}", value))
    check_unique_names(sources)
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


def configured_sources(config: Config) -> list[NamedSource]:
    """The run's sources: ``[sources.NAME]`` of the config file and ``--source`` (which the CLI merged
    in), in that order. Each needs a url from one of them, and a scheme we can read."""
    sources = []
    for name, source in config.sources.items():
        if not source.url:
            raise ConfigError(
                f"sources.{name}: no url (set url in [sources.{name}] or pass --source {name}=SRC)"
            )
        if source.url != DEMO_SOURCE:
            parse_source(source.url)  # unknown schemes fail here, before anything starts
        sources.append(NamedSource(name, source.url))
    if not sources:
        raise ConfigError("no source: pass --source SRC, or define [sources.NAME] with a url in --config")
    return sources


def caption_settings(config: Config, *, offline: bool = False, stream: str | None = None) -> CaptionSettings:
    """How captions are made: the global settings (live, or ``[offline]``'s), with the
    ``[sources.NAME]`` prompt, window, stride and unchanged_threshold of ``stream`` over them where it
    sets them."""
    presets = load_prompts()
    own = config.sources.get(stream) if stream is not None else None
    window = config.offline.window if offline else config.sampler.window
    stride = config.offline.stride if offline else config.sampler.stride
    prompt = config.captions.prompt
    unchanged = config.captions.unchanged_threshold
    if own is not None:
        prompt = own.prompt if own.prompt is not None else prompt
        unchanged = own.unchanged_threshold if own.unchanged_threshold is not None else unchanged
        window = own.window if own.window is not None else window
        stride = own.stride if own.stride is not None else stride
    return CaptionSettings(
        prompt=resolve_prompt(prompt, presets),
        context_template=presets.get("context", CaptionSettings.context_template),
        context_captions=config.captions.context_captions,
        max_new_tokens=config.captions.max_new_tokens,
        decoding=config.captions.decoding,
        max_slice_nums=config.offline.max_slice_nums if offline else config.model.max_slice_nums,
        fps=config.sampler.fps,
        window=window,
        stride=stride,
        max_frames=config.sampler.max_frames,
        skip_stale=not offline,
        unchanged_threshold=unchanged,
        presampled=not offline and config.capture.decode == "sampled",
    )


# [capture] keys that SourceOptions names otherwise; the other keys they share carry over by name
# (ring_slots and the backoff are the pipeline's, not a source's).
CAPTURE_KEYS_AS_SOURCE_OPTIONS = {"loop_files": "loop", "screen_fps": "fps_hint"}


def source_options(config: Config, *, realtime: bool | None = None) -> SourceOptions:
    changes: dict[str, Any] = {"sample_fps": config.sampler.fps}
    if realtime is not None:
        changes["realtime"] = realtime
    return options_from(config.capture, SourceOptions, CAPTURE_KEYS_AS_SOURCE_OPTIONS, **changes)


def inference_devices(config: Config) -> tuple[str, ...]:
    """One entry per inference process: ``[model] devices``, else ``[model] device`` alone."""
    return config.model.devices or (config.model.device,)


def inference_options(
    config: Config, *, run_id: str, run_dir: str, streams: dict[str, str]
) -> InferenceOptions:
    """The inference process's options for ``streams`` (name -> ring name): the global caption
    settings, and in ``stream_captions`` those of each stream whose own settings differ from them."""
    captions = caption_settings(config)
    own = {name: caption_settings(config, stream=name) for name in streams}
    return InferenceOptions(
        run_id=run_id,
        run_dir=run_dir,
        streams=streams,
        model=config.model.name,
        device=config.model.device,
        dtype=config.model.dtype,
        captions=captions,
        stream_captions={name: settings for name, settings in own.items() if settings != captions},
        stream_tokens=config.captions.stream_tokens,
        thumbnails=config.captions.thumbnails,
        thumbnail_side=config.captions.thumbnail_side,
        max_inp_length=config.model.max_inp_length,
        max_batch=config.model.max_batch,
        alerts=config.alerts,
        text=TextSettings(
            every=config.summaries.every,
            preset=summary_preset(config),
            presets={name: summary_preset(config, name) for name in streams},
            max_new_tokens=config.summaries.max_new_tokens,
            decoding=config.captions.decoding,
        ),
        remote=config.model.remote,
    )


class LivePipeline:
    """Everything ``vidnarrate run`` starts: :meth:`start`, then :meth:`poll` in a loop, then :meth:`stop`."""

    def __init__(
        self,
        config: Config,
        sources: list[NamedSource],
        *,
        store: Path | None = None,
        run_root: Path | None = None,
        log_level: int | str = logging.INFO,
    ) -> None:
        """``store``: the SQLite file the recorder keeps the run's captions, events and answers in
        (checked by the caller: :func:`~stream.recorder.check_store`); None records nothing."""
        self.config = config
        self.sources = sources
        self.store = store
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
        devices = inference_devices(config)
        # Role -> (device, its streams); a device that owns no stream still runs (and idles).
        owned = assign([s.name for s in sources], len(devices))
        self.inference = {
            role: (device, streams)
            for role, device, streams in zip(inference_roles(devices), devices, owned, strict=True)
        }

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
        if self.store is not None:
            self.supervisor.start(self._recorder_spec(self.store))
        if self.config.outputs:
            self.supervisor.start(self._outputs_spec())
        for role in self.inference:
            self.supervisor.start(self._inference_spec(role))

    def _start_captures_when_model_ready(self) -> None:
        """Captures start once the model is loaded: a file played as live would otherwise run ahead
        uncaptioned while the weights load (minutes for the real model)."""
        if self._captures_started or not all(
            (self.run.run_dir / ready_file(role)).exists() for role in self.inference
        ):
            return
        self._captures_started = True
        for source in self.sources:
            self.supervisor.start(self._capture_spec(source))

    def _roles(self) -> list[str]:
        """The roles that publish on the bus (the gateway reads them all)."""
        recorder = ["recorder"] if self.store is not None else []
        outputs = ["outputs"] if self.config.outputs else []
        return ["supervisor", *self.inference, *recorder, *outputs] + [
            f"capture:{s.name}" for s in self.sources
        ]

    def _gateway_spec(self) -> ChildSpec:
        g = self.config.gateway
        return ChildSpec(
            role="gateway",
            target=gateway_main,
            kwargs={
                "events_endpoints": [self.run.publisher_endpoint(role) for role in self._roles()],
                "asks_endpoint": self.run.asks_endpoint_for(next(iter(self.inference))),
                "ask_routes": self._ask_routes(),
                "options": options_from(
                    g,
                    GatewayOptions,
                    token=g.resolved_token(),
                    store=None if self.store is None else str(self.store),
                    run_id=self.run.run_id,
                    streams=tuple(s.name for s in self.sources),
                ),
                "ready_file": str(self.ready_file),
            },
            fatal_codes=(ExitCode.USAGE,),
        )

    def _ask_routes(self) -> dict[str, str] | None:
        """Stream -> the asks endpoint of the inference process that owns it (None: there is one)."""
        if len(self.inference) == 1:
            return None
        return {
            stream: self.run.asks_endpoint_for(role)
            for role, (_, streams) in self.inference.items()
            for stream in streams
        }

    def _recorder_spec(self, store: Path) -> ChildSpec:
        options = RecorderOptions(
            run_id=self.run.run_id,
            store=str(store),
            events_endpoints=tuple(
                self.run.publisher_endpoint(role) for role in self._roles() if role != "recorder"
            ),
            status_endpoint=self.run.publisher_endpoint("recorder"),
            retention_days=self.config.store.retention_days,
            max_mb=self.config.store.max_mb,
        )
        # Never fatal: a recorder that cannot write is restarted with the backoff while the run goes on.
        return ChildSpec(role="recorder", target=recorder_main, kwargs={"options": options})

    def _outputs_spec(self) -> ChildSpec:
        options = OutputsOptions(
            run_id=self.run.run_id,
            outputs=self.config.outputs,
            events_endpoints=tuple(
                self.run.publisher_endpoint(role)
                for role in self._roles()
                if role not in ("outputs", "recorder")
            ),
            status_endpoint=self.run.publisher_endpoint("outputs"),
            # Delivering what is queued at a stop must end before the supervisor's kill.
            stop_by=min(OutputsOptions.stop_by, 0.6 * self.config.supervisor.stop_timeout),
        )
        # Never fatal: a receiver that is down is retried inside; a crash is restarted with the backoff.
        return ChildSpec(role="outputs", target=outputs_main, kwargs={"options": options})

    def _inference_spec(self, role: str) -> ChildSpec:
        device, owned = self.inference[role]
        # Several processes on the CPU split its cores: each taking every core only thrashes.
        on_cpu = sum(1 for entry, _ in self.inference.values() if entry == "cpu")
        threads = max(1, (os.cpu_count() or 1) // on_cpu) if device == "cpu" and on_cpu > 1 else 0
        options = inference_options(
            self.config,
            run_id=self.run.run_id,
            run_dir=str(self.run.run_dir),
            streams={name: self.rings[name].name for name in owned},
        )
        return ChildSpec(
            role=role,
            target=inference_main,
            kwargs={"options": dataclasses.replace(options, device=device, role=role, threads=threads)},
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
        self, gateway_timeout: float = 30.0, stopping: Callable[[], bool] = lambda: False
    ) -> dict[str, Any] | None:
        """Wait for the gateway to listen and the model to be loaded (the captures start then);
        returns the gateway's ``{"port", "pid", "url"}``, or None as soon as ``stopping()`` says the
        user gave up (Ctrl-C while starting). The model gets no deadline: the real one takes minutes
        to load, and one that cannot load exits with a fatal code, raised here as RuntimeError."""
        deadline = time.monotonic() + gateway_timeout
        while True:
            if stopping():
                return None
            self.poll()
            fatal = self.supervisor.fatal_exit()
            if fatal is not None:
                raise RuntimeError(f"{fatal[0]} exited with code {fatal[1]} while starting")
            listening = self.ready_file.exists()
            if listening and self._captures_started:
                return json.loads(self.ready_file.read_text())
            if not listening and time.monotonic() > deadline:
                raise TimeoutError(f"the gateway did not start listening within {gateway_timeout:.0f} s")
            time.sleep(0.05)

    def poll(self) -> None:
        self.supervisor.poll()
        self._start_captures_when_model_ready()
        self._end_rings_of_failed_captures()

    def _end_rings_of_failed_captures(self) -> None:
        """A capture that failed for good (not restarted) may leave its ring without the "ended" mark
        a finished file sets; it is set here, the writer being gone, so that the inference captions
        what that source did deliver and counts it as over."""
        for role in self.supervisor.failed_roles():
            ring = self.rings.get(role.removeprefix("capture:")) if role.startswith("capture:") else None
            if ring is not None and not ring.ended:
                ring.mark_ended()

    def failed_service(self) -> tuple[str, int] | None:
        """(role, exit code) of the gateway or inference if it exited with a fatal code."""
        fatal = self.supervisor.fatal_exit()
        return fatal if fatal is not None and not fatal[0].startswith("capture:") else None

    def source_states(self) -> dict[str, SourceState]:
        """Each source's state, from its capture process (a file that played to its end exits 0)."""
        ended = set(self.supervisor.ended_roles())
        failed = set(self.supervisor.failed_roles())
        states = {}
        for source in self.sources:
            role = f"capture:{source.name}"
            if role in failed:
                states[source.name] = SourceState.FAILED
            elif role in ended:
                states[source.name] = SourceState.ENDED
            else:
                states[source.name] = SourceState.RUNNING
        return states

    def drained(self) -> bool:
        """Every inference process has published the last captions of its sources (all of them ended)."""
        return all((self.run.run_dir / drained_file(role)).exists() for role in self.inference)

    def viewer_url(self, info: dict[str, Any]) -> str:
        host = self.config.gateway.host
        shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{shown}:{info['port']}/"

    # -- stop ---------------------------------------------------------------------------------------
    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # The inference first: the end of every alert event still open is published as it stops,
        # and the recorder and the gateway must still be reading then.
        self.supervisor.stop(first=tuple(self.inference))
        for ring in self.rings.values():
            ring.close()
            ring.unlink()
        self.rings.clear()
        self.run.remove()
