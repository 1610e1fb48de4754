"""Hardware decoding (``[capture] hwaccel``): which FFmpeg device decodes, and whether this machine has it.

``"none"`` decodes in software; a device type (``"cuda"``, ``"vaapi"``, ``"qsv"``, ...) must work on
this machine, or the run stops at start (:func:`check_hwaccel`, exit 2 naming the key and the device);
``"auto"`` takes the first of :data:`AUTO_ORDER` this machine has, else software. Whichever is used is
logged once per process (at INFO; ``none`` only at DEBUG). Streams the device cannot decode (an
MJPEG camera on a GPU without an MJPEG engine) fall back to software on their own (PyAV's
``allow_software_fallback``).

A device "works" when FFmpeg can create its context for the H.264 decoder: what every camera sends,
and a check that costs no video. The accelerated path itself is untested on the machines this was
written on (they have none); the checks, the fallback and the error are tested.
"""

from __future__ import annotations

import functools
import logging

import av
from av.codec.hwaccel import HWAccel, hwdevices_available

from .errors import ConfigError

log = logging.getLogger(__name__)

# "auto" tries these, in this order, among the types this FFmpeg build knows.
AUTO_ORDER = ("cuda", "vaapi", "qsv", "videotoolbox", "d3d11va", "d3d12va", "dxva2", "vdpau", "vulkan")


def device_problem(device_type: str) -> str | None:
    """Why this machine cannot decode on ``device_type``, in words; None when it can."""
    if device_type not in hwdevices_available():
        return f"this FFmpeg build has no {device_type} support (it has: {', '.join(hwdevices_available())})"
    try:
        HWAccel(device_type, allow_software_fallback=False).create(av.codec.Codec("h264", "r"))
    except NotImplementedError:
        return f"no {device_type} decoder for H.264 in this FFmpeg build"
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return f"no {device_type} device could be opened ({reason})"
    return None


def check_hwaccel(name: str) -> None:
    """At start: a device asked for by name must work here (``ConfigError`` naming it otherwise)."""
    if name in ("auto", "none"):
        return
    problem = device_problem(name)
    if problem is not None:
        raise ConfigError(f"capture.hwaccel: {name!r} cannot be used on this machine: {problem}")


@functools.cache
def chosen_device(name: str) -> str | None:
    """The device type to decode on for the setting ``name`` (None: software), logged once."""
    if name == "none":  # what was asked for (and what the checks and the offline command use): no news
        log.debug("decoding in software (capture.hwaccel = none)")
        return None
    if name != "auto":
        problem = device_problem(name)  # checked at start; a device may still vanish since
        if problem is not None:
            log.warning("capture.hwaccel = %s unavailable (%s); decoding in software", name, problem)
            return None
        log.info("hardware decoding on %s (capture.hwaccel = %s)", name, name)
        return name
    tried = [kind for kind in AUTO_ORDER if kind in hwdevices_available()]
    for kind in tried:
        if device_problem(kind) is None:
            log.info("hardware decoding on %s (capture.hwaccel = auto)", kind)
            return kind
    log.info(
        "decoding in software: no hardware decoder on this machine (capture.hwaccel = auto; tried %s)",
        ", ".join(tried) or "none this FFmpeg build knows",
    )
    return None


def hwaccel_for(name: str) -> HWAccel | None:
    """What to pass to ``av.open`` for the setting ``name`` (None: software)."""
    device = chosen_device(name)
    return None if device is None else HWAccel(device, allow_software_fallback=True)
