"""Did the scene change? A thumbnail signature per sampled frame, and how much of the picture changed.

Pure functions on arrays (no I/O, no state): the shells compute :func:`signature` once per sampled
frame, where its pixels arrive, and the captioning core (:mod:`stream.captioning`) compares a window's
signatures with those of the stream's last captioned window (:func:`window_change`) to skip the model
call for a scene that did not change (``[captions] unchanged_threshold``).

**The measure: the share of the picture that changed.** A frame's signature is its grayscale
thumbnail of :data:`SIGNATURE_SIZE` cells (an area-averaged resize, so each cell is the mean of
about 20 x 20 pixels of a 1280x720 frame). Two frames differ by the share of cells whose brightness
moved by more than :data:`NOISE_FLOOR` levels (of 255). Averaging over a cell all but removes sensor
noise and compression artefacts (which change every frame but are small and zero-mean); the floor
removes what is left; what remains is an area, which a user can set a threshold in: 0.004 means "a
change covering 0.4 % of the picture", about a 30 x 30-pixel patch of a 640x360 frame.

Why this one (figures from ``tools/bench_gating.py`` and its measurement runs, 2 vCPU Intel Xeon VM):

* On a still photo held with sensor noise (sd 4 to 16 levels) and H.264 at CRF 28 to 40, the largest
  changed share between any two frames a minute apart was 0.0013 (64x36, floor 12); a person-sized
  walker (4.5 % of the picture) changed at least 0.016 against every still frame. On real footage
  every frame pair one second apart changed by 0.004 to 0.92 (a tennis ball and an arm in a fixed
  camera's view; a panning city shot; a bird at the lens).
* The plain mean absolute difference of the same thumbnails did not separate them (still frames up
  to 2.3 levels apart, the walker 1.6): noise everywhere adds up to as much as a real change in one
  place. With a floor it separates, but its unit (levels times area) is hard to set a threshold in.
* 32x18 cells separated too, with less margin (the walker changed 0.012 of them at the worst noise,
  against 0.016 of 64x36 cells: a small object is diluted in a cell 4 times larger); 64x36 costs
  the same (the resize reads the whole frame either way).
* The cosine of cached frame embeddings was not chosen: it depends on the backend (the remote
  backend's "embeddings" are JPEG bytes, the tiny test model's are random), it needs the frame
  encoded first, and no real MiniCPM-V weights run on this machine to measure it on.

**A window against the reference.** :func:`window_change` is the largest changed share between any
frame of the window and any frame of the reference (the last window the model captioned): a window
counts as unchanged only when the scene stayed within the threshold across both, so a caption that
described a passing event is never extended over the empty scene after it, and a slow drift is
captioned once it has moved far enough from what was last described.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

# Thumbnail cells (width, height): 16:9, each cell about 20x20 pixels of a 1280x720 frame.
SIGNATURE_SIZE = (64, 36)
# Brightness change (8-bit levels) below which a cell counts as unchanged: above what noise and
# compression leave after averaging a cell (at most 12 seen with sensor noise sd 16 at CRF 40).
NOISE_FLOOR = 12


def signature(rgb: np.ndarray) -> np.ndarray:
    """The frame's grayscale thumbnail (uint8, ``SIGNATURE_SIZE`` cells) from an RGB uint8 frame of
    any size. Resized before the colour conversion: the conversion then touches 2,304 pixels, not a
    million."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"signature: expected an RGB uint8 frame, got {rgb.dtype} {rgb.shape}")
    small = cv2.resize(rgb, SIGNATURE_SIZE, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))


def changed_share(a: np.ndarray, b: np.ndarray) -> float:
    """The share (0-1) of cells whose brightness differs by more than :data:`NOISE_FLOOR`."""
    return float(np.mean(np.abs(a.astype(np.int16) - b.astype(np.int16)) > NOISE_FLOOR))


def window_change(window: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> float:
    """The largest :func:`changed_share` between any frame of ``window`` and any of ``reference``
    (1.0 when either has no frame: nothing to compare is a change)."""
    if not window or not reference:
        return 1.0
    old = np.stack(reference).astype(np.int16)
    most = 0.0
    for frame in window:  # one frame at a time: memory stays at one reference stack, however long
        changed = np.abs(frame.astype(np.int16)[None] - old) > NOISE_FLOOR
        most = max(most, float(changed.mean(axis=(1, 2)).max()))
    return most
