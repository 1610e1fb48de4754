#!/usr/bin/python3
"""A real RTSP server on 127.0.0.1 for tests and demos: GStreamer's gst-rtsp-server.

Run it with Debian's ``/usr/bin/python3`` (the GObject bindings, python3-gi, are a Debian package and
not in our virtualenv); ``tools/install_test_system_deps.sh`` installs what it needs::

    /usr/bin/python3 tools/rtsp_server.py --port 8554                      # endless live test pattern
    /usr/bin/python3 tools/rtsp_server.py --file clip.mp4 --port 8554      # re-serve an H.264 mp4 as is
    /usr/bin/python3 tools/rtsp_server.py --file clip.mp4 --mounts 40      # 40 cameras: /cam0 ... /cam39

It prints one line ``READY rtsp://127.0.0.1:PORT/PATH`` on stdout once it accepts connections (port 0
picks a free port; the line tells which), then serves until killed. The media is shared: every client
sees the same live stream, as with a real camera. ``--mounts N`` serves N cameras from one server, each
mount point its own media playing the file from its first client on (``PATH0`` ... ``PATH{N-1}``; the
READY line then names ``PATH0``): a re-served file costs the server packetising only, never an encode.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def launch_line(args: argparse.Namespace) -> str:
    if args.file:
        # The file's own H.264, no re-encode: cheap, ends at the end of the file.
        return (
            f"( filesrc location={args.file} ! qtdemux ! h264parse ! "
            "rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    width, height = args.size.split("x")
    return (
        f"( videotestsrc is-live=true pattern={args.pattern} ! "
        f"video/x-raw,width={width},height={height},framerate={args.fps}/1 ! "
        f"x264enc tune=zerolatency speed-preset=ultrafast key-int-max={args.gop} ! "
        "rtph264pay name=pay0 pt=96 config-interval=1 )"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description="GStreamer RTSP server on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8554, help="TCP port (0 = any free port)")
    parser.add_argument("--path", default="/cam", help="mount point (default /cam)")
    parser.add_argument("--file", help="serve this H.264 .mp4 as is instead of a live test pattern")
    parser.add_argument("--size", default="320x240", help="test pattern WIDTHxHEIGHT")
    parser.add_argument("--fps", type=int, default=30, help="test pattern frame rate")
    parser.add_argument("--gop", type=int, default=15, help="key frame interval in frames")
    parser.add_argument("--pattern", default="ball", help="videotestsrc pattern (ball, smpte, ...)")
    parser.add_argument("--mounts", type=int, default=0, help="serve N cameras at PATH0 ... PATH{N-1}")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    paths = [f"{args.path}{index}" for index in range(args.mounts)] if args.mounts else [args.path]
    for path in paths:
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(launch_line(args))
        factory.set_shared(True)
        server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        print(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGINT, loop.quit)
    print(f"READY rtsp://127.0.0.1:{server.get_bound_port()}{paths[0]}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
