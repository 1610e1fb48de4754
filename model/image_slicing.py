"""MiniCPM-V 2.6 image slicing: one image -> a downscaled source piece plus up to N tiles (MODEL_SPEC §6).

Every number here must equal the official image processor's, so the rules are kept with their quirks:
Python's half-to-even ``round`` in :func:`ensure_divide`, ``int()`` truncation in :func:`find_best_resize`,
upscaling of small unsliced images, and PIL BICUBIC for every resize (torch and OpenCV bicubic give other
pixels). Sizes are ``(width, height)`` as in PIL; ``tgt_sizes`` are ``(h, w)`` in patches, as the model
wants them.

The prompt layout of an image depends only on its :class:`ImageLayout` (grid + per-piece patch sizes), so
an image that was already encoded (a cached frame embedding) can stand in for pixels in a prompt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import PIL.Image
import torch

Size = tuple[int, int]


def ensure_divide(length: float, patch_size: int) -> int:
    """``length`` rounded to a multiple of ``patch_size`` (at least one), half-to-even as officially."""
    return max(round(length / patch_size) * patch_size, patch_size)


def find_best_resize(
    size: tuple[float, float], scale_resolution: int, patch_size: int, allow_upscale: bool = False
) -> Size:
    """Target size with about ``scale_resolution``² area and the same aspect, sides multiples of the patch.

    Images within that area keep their size unless ``allow_upscale``. Both ``int()`` truncations are the
    official ones; the width is computed from the already truncated height.
    """
    width, height = size
    if width * height > scale_resolution * scale_resolution or allow_upscale:
        ratio = width / height
        height = int(scale_resolution / math.sqrt(ratio))
        width = int(height * ratio)
    return ensure_divide(width, patch_size), ensure_divide(height, patch_size)


def get_sliced_grid(size: Size, max_slice_nums: int, scale_resolution: int) -> Size | None:
    """The ``(cols, rows)`` tile grid for an image, or None when it is small enough to stay whole.

    Candidate tile counts are ``multiple - 1 .. multiple + 1`` (never 1, never above ``max_slice_nums``);
    the grid whose aspect is closest in log space wins, the first one on ties.
    """
    width, height = size
    log_ratio = math.log(width / height)
    multiple = min(math.ceil(width * height / (scale_resolution * scale_resolution)), max_slice_nums)
    if multiple <= 1:
        return None
    best: Size | None = None
    best_error = math.inf
    for count in (multiple - 1, multiple, multiple + 1):
        if count == 1 or count > max_slice_nums:
            continue
        for cols in range(1, count + 1):
            if count % cols:
                continue
            rows = count // cols
            error = abs(log_ratio - math.log(cols / rows))
            if error < best_error:
                best, best_error = (cols, rows), error
    return best


def get_refine_size(size: Size, grid: Size, scale_resolution: int, patch_size: int) -> Size:
    """Size of the image that is cut into ``grid`` equal tiles, each about ``scale_resolution``² in area."""
    cols, rows = grid
    refine_w = ensure_divide(size[0], cols)
    refine_h = ensure_divide(size[1], rows)
    cell_w, cell_h = find_best_resize(
        (refine_w / cols, refine_h / rows), scale_resolution, patch_size, allow_upscale=True
    )
    return cell_w * cols, cell_h * rows


@dataclass(frozen=True)
class ImageLayout:
    """What a prompt needs to know about one image: its tile grid and the patch size of every piece.

    ``tgt_sizes`` holds ``(h, w)`` in patches for the source piece first, then the tiles row-major.
    Both :class:`SlicedImage` and a cached frame embedding provide one (as their ``layout``); an
    ``ImageLayout`` is its own layout, so it can be put in a message directly.
    """

    grid: Size | None
    tgt_sizes: tuple[Size, ...]

    def __post_init__(self) -> None:
        expected = 1 if self.grid is None else 1 + self.grid[0] * self.grid[1]
        if self.grid is not None and (self.grid[0] < 1 or self.grid[1] < 1):
            raise ValueError(f"image grid must be (cols, rows) of positive ints, got {self.grid}")
        if len(self.tgt_sizes) != expected:
            raise ValueError(
                f"image layout with grid {self.grid} needs {expected} tgt_sizes (source + tiles), "
                f"got {len(self.tgt_sizes)}"
            )
        if any(h < 1 or w < 1 for h, w in self.tgt_sizes):
            raise ValueError(f"tgt_sizes must be positive (h, w) patch counts, got {self.tgt_sizes}")

    @property
    def n_pieces(self) -> int:
        return len(self.tgt_sizes)

    @property
    def layout(self) -> ImageLayout:
        return self


@runtime_checkable
class HasImageLayout(Protocol):
    """Anything that can stand for an image in a prompt: it knows its :class:`ImageLayout`."""

    @property
    def layout(self) -> ImageLayout: ...


@dataclass(frozen=True, eq=False)
class SlicedImage:
    """One input image after slicing: its pieces (uint8 RGB, source first) and their patch sizes."""

    original_size: Size
    grid: Size | None
    pieces: list[np.ndarray] = field(repr=False)
    tgt_sizes: list[Size]

    @property
    def layout(self) -> ImageLayout:
        return ImageLayout(grid=self.grid, tgt_sizes=tuple(self.tgt_sizes))


def _resize(image: PIL.Image.Image, size: Size) -> PIL.Image.Image:
    return image.resize(size, PIL.Image.Resampling.BICUBIC)


def _piece(image: PIL.Image.Image, patch_size: int) -> tuple[np.ndarray, Size]:
    array = np.asarray(image, dtype=np.uint8)
    height, width = array.shape[:2]
    return array, (height // patch_size, width // patch_size)


def slice_pil_image(
    image: PIL.Image.Image, *, max_slice_nums: int, scale_resolution: int, patch_size: int
) -> SlicedImage:
    """Slice one image exactly as the official processor does (MODEL_SPEC §6)."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    size = rgb.size
    if size[0] < 1 or size[1] < 1:
        raise ValueError(f"image has no pixels: size {size}")
    grid = get_sliced_grid(size, max_slice_nums, scale_resolution)
    if grid is None:
        source = _resize(rgb, find_best_resize(size, scale_resolution, patch_size, allow_upscale=True))
        array, tgt = _piece(source, patch_size)
        return SlicedImage(original_size=size, grid=None, pieces=[array], tgt_sizes=[tgt])

    source = _resize(rgb, find_best_resize(size, scale_resolution, patch_size))
    refine = _resize(rgb, get_refine_size(size, grid, scale_resolution, patch_size))
    cols, rows = grid
    tile_w, tile_h = refine.size[0] // cols, refine.size[1] // rows
    images = [source]
    for top in range(0, refine.size[1], tile_h):
        for left in range(0, refine.size[0], tile_w):
            images.append(refine.crop((left, top, left + tile_w, top + tile_h)))
    pieces, tgt_sizes = zip(*(_piece(im, patch_size) for im in images), strict=True)
    return SlicedImage(original_size=size, grid=grid, pieces=list(pieces), tgt_sizes=list(tgt_sizes))


def pieces_to_pixel_values(
    pieces: Sequence[np.ndarray],
    dtype: torch.dtype = torch.float32,
    *,
    mean: Sequence[float] = (0.5, 0.5, 0.5),
    std: Sequence[float] = (0.5, 0.5, 0.5),
) -> list[torch.Tensor]:
    """Each uint8 ``(H, W, 3)`` piece as a normalized ``[3, H, W]`` tensor.

    The arithmetic is the official one, in float32: ``x / 255``, then ``(x - mean) / std``; the result is
    cast to ``dtype`` last, so bf16 inputs are the rounded float32 values.
    """
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    out = []
    for piece in pieces:
        if piece.dtype != np.uint8 or piece.ndim != 3 or piece.shape[2] != 3:
            raise ValueError(f"a piece must be uint8 (H, W, 3), got {piece.dtype} {piece.shape}")
        chw = torch.from_numpy(piece.transpose(2, 0, 1).astype(np.float32))  # a copy: pieces are read-only
        x = (chw / 255 - mean_t) / std_t
        out.append(x.to(dtype).contiguous())
    return out


def to_strip(chw: torch.Tensor, patch_size: int = 14) -> torch.Tensor:
    """The official strip layout ``[3, p, N·p]`` of an image-shaped ``[3, H, W]`` piece.

    Patch ``n = r·(W/p) + c`` lands at columns ``n·p … n·p + p - 1``. Only needed to compare with the
    official description; the vision tower here takes image-shaped pieces.
    """
    channels, height, width = chw.shape
    if height % patch_size or width % patch_size:
        raise ValueError(f"piece {height}x{width} is not a whole number of {patch_size}-px patches")
    rows, cols = height // patch_size, width // patch_size
    grid = chw.reshape(channels, rows, patch_size, cols, patch_size).permute(0, 2, 1, 3, 4)
    return grid.reshape(channels, patch_size, rows * cols * patch_size)
