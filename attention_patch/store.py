"""Running float32 sums of head-averaged attention, per kind and resolution, filled during a capture.

A capture runs ``groups`` timesteps of ``images`` images as one batch (row ``g * images + i``); the store sums
the groups away at once, so its size is ``images x N x keys`` per resolution, independent of the number of
layers and timesteps. Hits are counted per patched layer: a layer that never fired is an error, not an empty
map (a wrong block key fails silently otherwise).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .core import ChunkSink
from .maps import AttentionMaps, Resolution

SELF, CROSS = "self", "cross"


def resolution_of(tokens: int, latent_hw: Resolution) -> Resolution:
    """The grid ``(h, w)`` of a layer with ``tokens`` queries in a UNet whose finest grid is ``latent_hw``.

    Tries the latent grid halved k times, rounding up as strided convolutions do.
    """
    height, width = latent_hw
    for level in range(8):
        factor = 2**level
        h, w = -(-height // factor), -(-width // factor)
        if h * w == tokens:
            return h, w
    raise ValueError(f"A layer has {tokens} tokens, which is no downsampling of the {height}x{width} latent grid.")


@dataclass
class AttentionStore:
    keep_self: bool = True
    keep_cross: bool = True
    self_resolutions: set[Resolution] | None = None
    """Keep self-attention only at these grids (None: all)."""
    cross_resolutions: set[Resolution] | None = None
    layers: set[str] | None = None
    """Keep only these layer names (None: all)."""
    images: int = 1
    latent_hw: Resolution = (64, 64)
    sums: dict[tuple[str, Resolution], torch.Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, Resolution], int] = field(default_factory=dict)
    hits: dict[str, int] = field(default_factory=dict)

    def register(self, layer_names: Iterable[str]) -> None:
        for name in layer_names:
            self.hits.setdefault(name, 0)

    def wants(self, kind: str, layer: str, hw: Resolution) -> bool:
        if self.layers is not None and layer not in self.layers:
            return False
        if kind == SELF:
            return self.keep_self and (self.self_resolutions is None or hw in self.self_resolutions)
        return self.keep_cross and (self.cross_resolutions is None or hw in self.cross_resolutions)

    def sink(self, kind: str, hw: Resolution, rows: int, keys: int, device: torch.device) -> ChunkSink:
        """A chunk sink that adds ``rows = groups * images`` probability rows into the running sum."""
        if rows % self.images:
            raise RuntimeError(f"{rows} captured rows are not a whole number of groups of {self.images} images.")
        groups = rows // self.images
        total = self.sums.get((kind, hw))
        if total is None or total.shape[-1] != keys:
            if total is not None:
                raise RuntimeError(f"{kind}-attention at {hw} changed its key count from {total.shape[-1]} to {keys}.")
            total = torch.zeros(self.images, hw[0] * hw[1], keys, dtype=torch.float32, device=device)
            self.sums[(kind, hw)] = total
        self.counts[(kind, hw)] = self.counts.get((kind, hw), 0) + groups

        def add(start: int, end: int, probs: torch.Tensor) -> None:
            total[:, start:end] += probs.reshape(groups, self.images, end - start, keys).sum(0)

        return add

    def hit(self, layer: str) -> None:
        self.hits[layer] = self.hits.get(layer, 0) + 1

    def check_hits(self) -> None:
        """Raise if a registered layer never fired: its map would silently be missing from the averages."""
        silent = [name for name, count in self.hits.items() if count == 0]
        if silent:
            shown = ", ".join(silent[:4]) + (f" and {len(silent) - 4} more" if len(silent) > 4 else "")
            raise RuntimeError(
                f"{len(silent)} of {len(self.hits)} patched attention layers never ran ({shown}): the patch keys do "
                "not match this model's blocks, or another patch replaced them. Please report this with the "
                "model's type."
            )

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.sums.values())

    def to_maps(self, tokens: list[str], image_size: tuple[int, int], meta: dict | None = None) -> AttentionMaps:
        """Means (sum / count) moved to CPU, as the ATTENTION payload."""
        maps = AttentionMaps(tokens=list(tokens), image_size=image_size, meta=dict(meta or {}))
        for (kind, hw), total in sorted(self.sums.items(), key=lambda item: (item[0][0], -item[0][1][0])):
            count = self.counts[(kind, hw)]
            mean = (total / count).cpu()
            if kind == SELF:
                maps.self_attn[hw], maps.self_counts[hw] = mean, count
            else:
                maps.cross_attn[hw], maps.cross_counts[hw] = mean, count
        maps.meta.setdefault("layer_hits", dict(self.hits))
        return maps
