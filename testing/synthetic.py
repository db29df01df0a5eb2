"""Synthetic block-structured attention with known regions, for tests and benchmarks (no model needed).

Regions are the Voronoi cells of random seeds in the unit square, evaluated at pixel centres, so every
resolution sees the same layout. Each query pixel attends by ``softmax(sharpness * (contrast * same_region
- d² / (2 * width²)))`` over keys, with ``d`` in image units: attention stays mostly inside the own region
and decays with distance, like real self-attention. ``width`` in *grid cells* instead of image units
(``local_cells``) makes maps peakier on finer grids, the case where DiffSeg's τ is scale-dependent.
"""

from __future__ import annotations

import torch

Resolution = tuple[int, int]


def voronoi_labels(seeds: torch.Tensor, size: Resolution) -> torch.Tensor:
    """Region id (nearest seed) of every pixel centre of a ``size`` grid. seeds: (R, 2) in [0, 1]² as (y, x)."""
    h, w = size
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    points = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    return torch.cdist(points, seeds.double()).argmin(dim=1).reshape(h, w)


def block_attention(
    seeds: torch.Tensor,
    size: Resolution,
    *,
    sharpness: float = 1.0,
    contrast: float = 6.0,
    width: float = 0.25,
    local_cells: float | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Self-attention ``(N, N)`` float32 at ``size`` (rows = queries, softmax over keys, ``y*w + x`` order)."""
    h, w = size
    labels = voronoi_labels(seeds, size).reshape(-1)
    ys = (torch.arange(h, dtype=torch.float64) + 0.5) / h
    xs = (torch.arange(w, dtype=torch.float64) + 0.5) / w
    points = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)
    if local_cells is not None:
        points = points * torch.tensor([h, w], dtype=torch.float64)
        scale = local_cells
    else:
        scale = width
    distance2 = torch.cdist(points, points).square_()
    logits = contrast * (labels[:, None] == labels[None, :]).double() - distance2 / (2 * scale**2)
    if noise:
        logits += noise * torch.randn(logits.shape, dtype=torch.float64, generator=generator)
    return torch.softmax(sharpness * logits, dim=-1).float()


def sd15_like_attention(
    seeds: torch.Tensor,
    batch: int = 1,
    finest: Resolution = (64, 64),
    levels: int = 4,
    **options,
) -> dict[Resolution, torch.Tensor]:
    """``{(h, w): (B, N, N)}`` at ``finest`` and its halvings (64/32/16/8 for SD1.5), same layout per image."""
    maps = {}
    for level in range(levels):
        size = (finest[0] >> level, finest[1] >> level)
        single = block_attention(seeds, size, **options)
        maps[size] = single[None].expand(batch, -1, -1).contiguous()
    return maps
