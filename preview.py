"""Pictures people can look at: heatmaps, label colourings and overlays as ``(B, H, W, 3)`` floats in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# A perceptually ordered map (dark blue -> teal -> yellow), sampled at 5 points and interpolated.
_VIRIDIS = torch.tensor(
    [[0.267, 0.005, 0.329], [0.231, 0.322, 0.546], [0.128, 0.567, 0.551], [0.369, 0.789, 0.383], [0.993, 0.906, 0.144]]
)


def normalize(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map of a ``(B, ...)`` batch to [0, 1]; constant maps become 0."""
    flat = maps.reshape(maps.shape[0], -1).float()
    low, high = flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values
    return ((flat - low) / (high - low).clamp_min(1e-12)).reshape(maps.shape)


def colormap(values: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` in [0, 1] -> ``(B, H, W, 3)`` colours."""
    scaled = values.clamp(0, 1) * (len(_VIRIDIS) - 1)
    low = scaled.floor().long().clamp(max=len(_VIRIDIS) - 2)
    frac = (scaled - low).unsqueeze(-1)
    palette = _VIRIDIS.to(values.device)
    return palette[low] * (1 - frac) + palette[low + 1] * frac


def heatmap(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Attention maps ``(B, h, w)`` as coloured pictures at ``size`` (nearest upsampling shows the real grid)."""
    up = F.interpolate(normalize(maps).unsqueeze(1), size=size, mode="nearest")[:, 0]
    return colormap(up)


def label_colors(count: int) -> torch.Tensor:
    """Distinct colours for ``count`` labels (golden-ratio hues)."""
    hues = torch.arange(count, dtype=torch.float32) * 0.618034 % 1.0
    k = (torch.tensor([5.0, 3.0, 1.0]) + hues.unsqueeze(1) * 6) % 6
    rgb = 1 - 0.75 * (torch.minimum(k, 4 - k).clamp(0, 1))
    return rgb * 0.85 + 0.1


def colorize_labels(labels: torch.Tensor) -> torch.Tensor:
    """``(B, H, W)`` integer labels -> ``(B, H, W, 3)``."""
    return label_colors(int(labels.max()) + 1)[labels.long()]


def overlay(image: torch.Tensor, colors: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """Blend ``(B, H, W, 3)`` colours over a ``(B, H, W, 3)`` image, resizing the colours to the image."""
    if colors.shape[1:3] != image.shape[1:3]:
        colors = F.interpolate(colors.permute(0, 3, 1, 2), size=image.shape[1:3], mode="nearest").permute(0, 2, 3, 1)
    return image * (1 - alpha) + colors * alpha


def self_attention_pca(self_attn: torch.Tensor, hw: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """The first three principal components of each pixel's attention row, as RGB: regions that attend alike
    get alike colours, which is what DiffSeg merges. ``self_attn``: ``(B, N, N)``."""
    pictures = []
    for rows in self_attn.float():
        centered = rows - rows.mean(0, keepdim=True)
        _, _, v = torch.pca_lowrank(centered, q=3, center=False, niter=2)
        comps = normalize((centered @ v[:, :3]).T.unsqueeze(1)).squeeze(1).T
        pictures.append(comps.reshape(hw[0], hw[1], 3))
    stacked = torch.stack(pictures).permute(0, 3, 1, 2)
    return F.interpolate(stacked, size=size, mode="nearest").permute(0, 2, 3, 1)
