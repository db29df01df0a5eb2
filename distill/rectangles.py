"""The background-rectangle loss mask of concept distillation's fine-tuning (Dombrowski et al., ICCV 2023, §3.3).

Half of the fine-tuning samples teach the model what BACKGROUND looks like under the background prompt: the loss
is taken only on a rectangle of the preliminary mask's background, so the model learns background texture without
ever being asked to paint the object. :func:`sample_background_rectangle` follows the reference implementation
(MischaD/fobadiffusion, ``GMMMaskSuggestor.get_rectangular_inpainting_mask``) rule for rule, in latent cells:

* pick two background cells as corners, uniformly and independently (the same cell twice: draw again, not counted);
  the box spans them inclusively, ``rows = Δrow`` and ``cols = Δcol`` (no +1: the code's "width" and "height");
* reject when ``rows <= min_rows or cols <= min_cols or rows * cols < min_area`` (too small), when
  ``(rows > max_rows and cols > max_cols) or rows * cols > max_area`` (too large), or when
  ``background cells in the box / (rows * cols) < min_background`` (2/3; the code divides by ``rows * cols``, not by
  the inclusive box's ``(rows + 1) * (cols + 1)`` cells, which makes the test slightly lenient; kept as written);
* accept: the loss mask is box AND background (object cells inside the box never count);
* after ``max_tries`` (100) rejections: the whole background;
* at most one background cell (M_pre covers the image): all zeros, there is no background to learn from.

The paper's numbers (10, 256, 32, 1024, 2/3, 100) are for SD's 64x64 latent. :meth:`RectangleBounds.for_latent`
scales them PER AXIS for another grid: row lengths by ``height / 64``, column lengths by ``width / 64`` and areas by
their product, i.e. the rules are applied as if the latent were stretched to 64x64. For a square grid of side s that
is lengths x s/64 and areas x (s/64)^2 (the toy's 32x32 latent: 5, 64, 16, 256); per-axis rather than a geometric
mean so a non-square grid's boxes keep the shape the paper's boxes have after the stretch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

PAPER_GRID = (64, 64)  # SD 1.x latent, where the paper's numbers hold


@dataclass(frozen=True)
class RectangleBounds:
    """Acceptance rules for background rectangles on a ``grid`` = (rows, cols) latent; defaults are the paper's."""

    min_rows: float = 10.0  # reject Δrow <= min_rows
    min_cols: float = 10.0  # reject Δcol <= min_cols
    min_area: float = 256.0  # reject Δrow * Δcol < min_area
    max_rows: float = 32.0  # reject Δrow > max_rows AND Δcol > max_cols
    max_cols: float = 32.0
    max_area: float = 1024.0  # reject Δrow * Δcol > max_area
    min_background: float = 2 / 3  # reject (background cells in the box) / (Δrow * Δcol) < min_background
    max_tries: int = 100  # rejections before falling back to the whole background
    grid: tuple[int, int] = PAPER_GRID  # the latent (rows, cols) these numbers are for

    def for_latent(self, height: int, width: int) -> "RectangleBounds":
        """These bounds rescaled from ``grid`` to a ``height x width`` latent (per axis, see the module docstring)."""
        if height < 1 or width < 1:
            raise ValueError(f"latent size must be positive, got {height}x{width}")
        sy, sx = height / self.grid[0], width / self.grid[1]
        return replace(self, min_rows=self.min_rows * sy, min_cols=self.min_cols * sx, min_area=self.min_area * sy * sx,
                       max_rows=self.max_rows * sy, max_cols=self.max_cols * sx, max_area=self.max_area * sy * sx,
                       grid=(int(height), int(width)))

    def accepts_shape(self, rows: int, cols: int) -> bool:
        """The size rules alone (not the background fraction)."""
        area = rows * cols
        too_small = rows <= self.min_rows or cols <= self.min_cols or area < self.min_area
        too_large = (rows > self.max_rows and cols > self.max_cols) or area > self.max_area
        return not (too_small or too_large)

    def to_dict(self) -> dict:
        """JSON-ready (the model card records the bounds a model was trained with)."""
        return {**asdict(self), "grid": list(self.grid)}


def _as_bool_tensor(background) -> torch.Tensor:
    mask = torch.as_tensor(np.asarray(background) if not isinstance(background, torch.Tensor) else background)
    if mask.ndim != 2:
        raise ValueError(f"background must be a 2-D (rows, cols) mask, got shape {tuple(mask.shape)}")
    return mask.bool().cpu()


def sample_background_rectangle(background, generator: torch.Generator,
                                bounds: RectangleBounds | None = None) -> torch.Tensor:
    """Bool (h, w) loss mask: a random background rectangle AND the background (rules in the module docstring).

    ``background``: bool (h, w) tensor or array, True = background of M_pre (i.e. ``~M_pre``). Every random draw
    comes from ``generator``, so a seed gives the same mask. ``bounds`` default: the paper's, scaled to (h, w).
    """
    bg = _as_bool_tensor(background)
    h, w = bg.shape
    bounds = bounds if bounds is not None else RectangleBounds().for_latent(h, w)
    if tuple(bounds.grid) != (h, w):
        raise ValueError(f"bounds are for a {bounds.grid[0]}x{bounds.grid[1]} latent but the mask is {h}x{w}; "
                         f"use RectangleBounds().for_latent({h}, {w})")
    cells = bg.nonzero()  # (n, 2) row-major, as np.where in the reference
    n = cells.shape[0]
    if n <= 1:  # the reference: foreground >= h*w - 1 cells
        return torch.zeros(h, w, dtype=torch.bool)
    table = torch.zeros(h + 1, w + 1, dtype=torch.int64)  # summed-area table: background count of any box in O(1)
    table[1:, 1:] = bg.long().cumsum(0).cumsum(1)
    failures = 0
    while failures < bounds.max_tries:
        i, j = torch.randint(0, n, (2,), generator=generator).tolist()
        if i == j:
            continue  # the same corner twice: not counted
        (r0, c0), (r1, c1) = cells[i].tolist(), cells[j].tolist()
        top, bottom, left, right = min(r0, r1), max(r0, r1), min(c0, c1), max(c0, c1)
        rows, cols = bottom - top, right - left
        if not bounds.accepts_shape(rows, cols):
            failures += 1
            continue
        count = int(table[bottom + 1, right + 1] - table[top, right + 1] - table[bottom + 1, left] + table[top, left])
        if count / (rows * cols) < bounds.min_background:  # the reference's ratio test, as written
            failures += 1
            continue
        box = torch.zeros(h, w, dtype=torch.bool)
        box[top:bottom + 1, left:right + 1] = True
        return box & bg
    return bg.clone()


__all__ = ["PAPER_GRID", "RectangleBounds", "sample_background_rectangle"]
