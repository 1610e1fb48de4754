"""The ``vidnarrate`` command line: ``run`` (the live pipeline), ``caption`` (a file, offline), and
``search``, ``export`` and ``summarize`` (what the caption store kept).

Settings come from the packaged defaults (``stream/defaults/default.toml``), then ``--config FILE``,
then the flags, then ``--set section.key=value`` (any key). Everything is checked before a process
starts: an unknown key, a bad value, a missing file or an unknown source scheme is one clear line on
stderr and exit code 2; a model whose weights are not there says how to get them (or to try
``--model tiny``).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .alertrules import add_alert_flag, check_rule_streams, with_alert_flags
from .config import Config, apply_overrides, is_remote_model, load_config
from .errors import ConfigError, SourceError, StoreQueryError, VidnarrateError
from .eventlist import add_events_command, cmd_events
from .preflight import (
    check_capture_hwaccel,
    check_device_source,
    check_file,
    check_model_available,
    check_port_free,
    check_remote_server,
    choose_token,
    is_loopback,
    live_windows,
    warn_about_prompt_typos,
    warn_if_windows_too_long,
)
from .process import ExitCode
from .storecli import add_store_commands, cmd_export, cmd_search, cmd_summarize, open_backend, store_path

log = logging.getLogger("vidnarrate")


def package_version() -> str:
    try:
        return importlib.metadata.version("vidnarrate")
    except importlib.metadata.PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def _add_common(parser: argparse.ArgumentParser, defaults: Config) -> None:
    # Live and offline captioning have different defaults (the model card's): both commands' help
    # says both, read from the defaults file so that they cannot drift from it.
    live, offline = defaults.sampler, defaults.offline
    parser.add_argument("--config", type=Path, help="a TOML file with the settings to change")
    parser.add_argument(
        "--model",
        help="hub id, checkpoint folder, 'tiny' (random weights, smoke runs) or a server's http://HOST:PORT/v1",
    )
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N (default auto: cuda if available)")
    parser.add_argument("--prompt", help="preset (narration, cctv, screen) or your own prompt text")
    parser.add_argument(
        "--window",
        type=float,
        metavar="S",
        help=f"seconds of video each caption looks at (default {live.window:g} s for run, "
        f"{offline.window:g} s for caption)",
    )
    parser.add_argument(
        "--stride",
        type=float,
        metavar="S",
        help=f"seconds between captions (default {live.stride:g} s for run, "
        f"{offline.stride:g} s for caption)",
    )
    parser.add_argument(
        "--max-slice-nums",
        type=int,
        metavar="N",
        help=f"tiles per frame, 1 = the source image only (default {defaults.model.max_slice_nums} "
        f"for run, {offline.max_slice_nums} for caption)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any setting of the config (repeatable); a source's own prompt, window or stride: "
        "sources.NAME.prompt=cctv",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the processes log on stderr (default INFO)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vidnarrate", description="Rolling dense captions of live video.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    defaults = load_config(None)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="caption live sources and serve the viewer and websockets")
    run.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]SRC",
        help="a file, rtsp://..., http(s)://..., webcam:N, /dev/videoN, screen[:DISPLAY], "
        "or 'demo' (a sample clip played as live); repeatable. Sources defined in --config "
        "([sources.NAME] url = ...) run too; --source NAME=SRC gives such a source its url. "
        "Per source: --set sources.NAME.prompt=cctv (also .window, .stride)",
    )
    run.add_argument("--host", help="interface to listen on (default 127.0.0.1: this machine only)")
    run.add_argument("--port", type=int, help="port of the viewer and websockets (default 8765)")
    run.add_argument(
        "--token",
        help="require this token on the page and websockets (or $VIDNARRATE_TOKEN); beyond loopback "
        "a random one is made when none is given",
    )
    run.add_argument(
        "--no-auth",
        action="store_true",
        help="no token even beyond loopback: anyone who can reach the port watches the sources",
    )
    run.add_argument(
        "--stream-tokens",
        action="store_true",
        default=None,
        help="publish captions token by token (partial messages)",
    )
    run.add_argument("--loop", action="store_true", default=None, help="replay file sources forever")
    run.add_argument(
        "--store",
        type=Path,
        metavar="PATH",
        help="the SQLite file the run's captions, events and answers are recorded in (default "
        "[store] path, else $XDG_DATA_HOME/vidnarrate/vidnarrate.db)",
    )
    run.add_argument("--no-store", action="store_true", help="record nothing (no recorder, no file)")
    run.add_argument(
        "--keep-serving",
        action="store_true",
        help="once every file source has ended, keep the viewer up with the history until Ctrl-C "
        "(default: the run stops after their last captions)",
    )
    _add_common(run, defaults)
    add_alert_flag(run)

    caption = commands.add_parser("caption", help="caption a video file offline, as fast as possible")
    caption.add_argument("file", help="the video file")
    caption.add_argument(
        "--out",
        action="append",
        type=Path,
        default=[],
        metavar="FILE.jsonl|.vtt|.srt",
        help="where to write captions (repeatable; default FILE's name .jsonl and .vtt "
        "in the current folder)",
    )
    caption.add_argument(
        "--no-progress", dest="progress", action="store_false", help="do not show the progress bar"
    )
    caption.add_argument(
        "--summary",
        nargs="?",
        const="",
        type=str,
        metavar="FILE.md",
        help="after the captions, write the recording's summary (Markdown, with times; default: "
        "beside the first --out, named FILE.md); [summaries] prompt picks the preset",
    )
    caption.add_argument(
        "--store",
        type=Path,
        metavar="PATH",
        help="also keep the captions in this SQLite store (as `vidnarrate run` does; default: "
        "only when [store] path is set)",
    )
    _add_common(caption, defaults)
    add_store_commands(commands)
    add_events_command(commands)
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    """The defaults, then ``--config``, then the flags (``--source NAME=SRC`` is ``sources.NAME.url``),
    then ``--set``: one strict path, so a bad value is refused the same way wherever it came from."""
    from .pipeline import parse_named_sources

    config = load_config(args.config)
    flags: dict[str, Any] = {
        "model.name": args.model,
        "model.device": args.device,
        "captions.prompt": args.prompt,
    }
    offline = args.command == "caption"
    section = "offline" if offline else "sampler"
    if args.store is not None:
        flags["store.path"] = str(args.store)
    flags[f"{section}.window"] = args.window
    flags[f"{section}.stride"] = args.stride
    flags["offline.max_slice_nums" if offline else "model.max_slice_nums"] = args.max_slice_nums
    if not offline:
        flags.update(
            {
                "gateway.host": args.host,
                "gateway.port": args.port,
                "gateway.token": args.token,
                "captions.stream_tokens": args.stream_tokens,
                "capture.loop_files": args.loop,
            }
        )
        for source in parse_named_sources(args.source or []):
            flags[f"sources.{source.name}.url"] = source.source
    config = apply_overrides(config, {k: v for k, v in flags.items() if v is not None}, "command line")
    config = apply_overrides(config, args.overrides, "--set")
    return config if offline else with_alert_flags(config, args.alert)


def resolve_sources(config: Config) -> tuple[list[Any], bool]:
    """The run's named sources (see :func:`~stream.pipeline.configured_sources`), with ``demo``
    replaced by the sample clip; files, cameras and screens that cannot be read refused now (not in
    a child process). Returns the sources and whether the demo clip is among them."""
    from .democlip import demo_clip
    from .pipeline import DEMO_SOURCE, NamedSource, configured_sources
    from .sources import parse_source

    resolved: list[NamedSource] = []
    has_demo = False
    for source in configured_sources(config):
        if source.source == DEMO_SOURCE:
            has_demo = True
            source = NamedSource(source.name, str(demo_clip()))
        spec = parse_source(source.source)
        if spec.kind == "file":
            check_file(spec.target, f"source {source.name}")
        else:
            check_device_source(spec, f"source {source.name}")
        resolved.append(source)
    return resolved, has_demo


def run_store(config: Config, args: argparse.Namespace) -> Path | None:
    """The store ``vidnarrate run`` records into (None with ``--no-store``), checked now: a file that
    cannot be used is refused before anything starts, naming it and the reason."""
    from .recorder import check_store

    if args.no_store:
        if args.store is not None:
            raise ConfigError("--store and --no-store: give one of them")
        return None
    path = store_path(args, config)
    check_store(path)
    return path


class _Stopped(Exception):
    """Ctrl-C (or SIGTERM) arrived while the run was still starting."""


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import LivePipeline
    from .runwatch import RunWatch, Say

    config = resolve_config(args)
    sources, has_demo = resolve_sources(config)
    check_rule_streams(config.alerts, [s.name for s in sources])
    if has_demo and args.loop is None:
        config = apply_overrides(config, {"capture.loop_files": True}, "demo")
    host = config.gateway.host
    token, generated = choose_token(host, config.gateway.resolved_token(), no_auth=args.no_auth)
    if generated:
        config = apply_overrides(config, {"gateway.token": token}, "a token made for this run")
    check_port_free(host, config.gateway.port)
    store = run_store(config, args)
    check_capture_hwaccel(config)
    if is_remote_model(config.model.name):
        check_remote_server(config)
    else:
        if config.model.devices:  # one inference process per entry, each on its own
            for device in config.model.devices:
                check_model_available(config.model.name, device, "model.devices")
        else:
            check_model_available(config.model.name, config.model.device)
        for window in live_windows(config):  # a server's request holds at most max_images frames
            warn_if_windows_too_long(config, window, config.model.max_slice_nums)
    warn_about_prompt_typos(config)
    if args.no_auth and not is_loopback(host):
        print(
            f"vidnarrate: WARNING: --no-auth on {host or 'every interface'}: anyone on the network who can "
            f"reach port {config.gateway.port} can watch the cameras (captions, thumbnails, asks)",
            file=sys.stderr,
            flush=True,
        )

    stop: dict[str, int | None] = {"signal": None}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    pipeline = LivePipeline(config, sources, store=store, log_level=args.log_level)
    watch = RunWatch([s.name for s in sources], keep_serving=args.keep_serving)
    code = ExitCode.OK
    try:
        pipeline.start()
        print(f"vidnarrate: loading model {config.model.name}; the viewer's address follows", flush=True)
        # The address is printed once captions can come (the model is loaded, the captures start):
        # before that the page could only say "loading", and a Ctrl-C meanwhile stops a run that
        # never claimed to be up.
        info = pipeline.wait_ready(stopping=lambda: stop["signal"] is not None)
        if info is None:
            raise _Stopped
        url = pipeline.viewer_url(info)
        shown = f"{url}?token={token if generated else '…'}" if token else url
        print(f"vidnarrate: viewer at {shown}  (websockets: {url.replace('http', 'ws', 1)}ws)", flush=True)
        if host in (
            "0.0.0.0",
            "::",
            "",
        ):  # every interface: say how other machines reach it (as Jupyter does)
            lan = shown.replace("127.0.0.1", socket.gethostname(), 1)
            print(f"vidnarrate: from other machines: {lan}", flush=True)
        if generated:
            print(
                f"vidnarrate: {host or 'every interface'} is beyond loopback: the viewer needs the token "
                "above (--token sets your own, --no-auth none)",
                flush=True,
            )
        print(
            f"vidnarrate: model {config.model.name}; sources: "
            + ", ".join(f"{s.name}={s.source}" for s in sources)
            + "; Ctrl-C stops",
            flush=True,
        )
        if store is not None:
            print(f"vidnarrate: recording into {store}", flush=True)
        while stop["signal"] is None:
            pipeline.poll()
            steps = watch.update(
                pipeline.source_states(), drained=pipeline.drained(), failed_service=pipeline.failed_service()
            )
            for step in steps:
                if isinstance(step, Say):
                    print(
                        f"vidnarrate: {step.text}", file=sys.stderr if step.error else sys.stdout, flush=True
                    )
                else:
                    code = step.code
            if watch.stopped:
                break
            time.sleep(0.1)
    except _Stopped:
        pass
    except (TimeoutError, RuntimeError) as exc:
        print(f"vidnarrate: {exc}", file=sys.stderr)
        code = ExitCode.FAILED
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the cleanup
        pipeline.stop()
    if stop["signal"] is not None:
        print("vidnarrate: stopped", flush=True)
    return code


def cmd_caption(args: argparse.Namespace) -> int:
    from .exports import check_outputs
    from .offline import caption_file, probe_duration
    from .pipeline import caption_settings
    from .sources import parse_source

    config = resolve_config(args)
    spec = parse_source(args.file)
    if spec.kind != "file":
        raise ConfigError(f"caption: {spec.label!r} is not a file (use `vidnarrate run` for live sources)")
    path = Path(spec.target)
    check_file(str(path), "caption")
    outputs = args.out or [Path(path.stem + ".jsonl"), Path(path.stem + ".vtt")]
    check_outputs(outputs, source=path)
    summary_path = None
    if args.summary is not None:
        from .summarydoc import check_summary_path

        summary_path = Path(args.summary) if args.summary else outputs[0].with_suffix(".md")
        check_summary_path(summary_path, outputs)
    # Offline captions are kept only where a store is named (--store or [store] path).
    from .recorder import check_store

    store = store_path(args, config) if config.store.path else None
    if store is not None:
        check_store(store)
    warn_about_prompt_typos(config)
    if not is_remote_model(config.model.name):  # a server's request holds at most max_images frames
        warn_if_windows_too_long(config, config.offline.window, config.offline.max_slice_nums)
    backend = open_backend(config)
    duration = probe_duration(str(path))
    bar = None
    if args.progress:
        from tqdm import tqdm

        bar = tqdm(
            total=round(duration, 1) if duration else None,
            unit="s",
            desc=path.name,
            bar_format="{l_bar}{bar}| {n:.1f}/{total_fmt} s [{elapsed}<{remaining}]",
        )

    def progress(t: float) -> None:
        if bar is not None:
            if bar.total is not None and t > bar.total:  # the header's duration was short (VFR)
                bar.total = round(t, 1)
            bar.update(max(0.0, round(t, 1) - bar.n))

    from .recorder import StoreWriter

    sinks = [StoreWriter(store)] if store is not None else []
    try:
        result = caption_file(
            str(path),
            backend,
            caption_settings(config, offline=True),
            outputs,
            max_side=config.capture.max_side,
            progress=progress,
            sinks=sinks,
        )
    finally:
        if bar is not None:
            bar.close()
        for sink in sinks:
            sink.close()
    if duration and result.duration < duration - max(2.0, 0.1 * duration):
        print(
            f"vidnarrate: warning: {path.name} ended at {result.duration:.1f} s of the {duration:.1f} s its "
            "header declares: the file may be truncated.",
            file=sys.stderr,
            flush=True,
        )
    unchanged = sum(1 for c in result.captions if c.get("unchanged"))
    print(
        f"vidnarrate: {len(result.captions)} captions over {result.duration:.1f} s "
        f"({unchanged} of them unchanged: no model call; "
        f"{result.frames} frames, {result.decode_errors} decode errors) -> "
        + ", ".join(str(p) for p in [*result.outputs, *(s.path for s in sinks)]),
        flush=True,
    )
    if summary_path is not None:
        from .summaries import TimeLabels
        from .summarydoc import SummaryMaker, captions_of, render, write_text

        maker = SummaryMaker(backend, config, progress=args.progress)
        section = maker.run(
            path.name, captions_of(result.captions), total=len(result.captions), labels=TimeLabels.STREAM
        )
        write_text(summary_path, render([section], model=config.model.name))
        print(f"vidnarrate: summary of {path.name} -> {summary_path}", flush=True)
    return ExitCode.OK


_COMMANDS = {
    "run": cmd_run,
    "caption": cmd_caption,
    "search": cmd_search,
    "export": cmd_export,
    "summarize": cmd_summarize,
    "events": cmd_events,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .process import configure_logging

    configure_logging("main", args.log_level)
    try:
        return _COMMANDS[args.command](args)
    except (ConfigError, SourceError, StoreQueryError) as exc:
        print(f"vidnarrate: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except VidnarrateError as exc:
        print(f"vidnarrate: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return 128 + signal.SIGINT


def entry() -> None:
    """The ``vidnarrate`` command: :func:`main`, then exit without tearing the interpreter down.
    Everything of ours is closed by then; torch's module teardown alone would add ~2 s to a Ctrl-C."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
