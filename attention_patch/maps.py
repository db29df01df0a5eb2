"""The ATTENTION payload passed between nodes: averaged attention maps of one capture.

Layouts (all float32, on CPU, batch first):

* ``self_attn[(h, w)]``: ``(B, N, N)`` with ``N = h * w``, the mean over layers of that resolution, heads and
  timesteps of softmax(Q K^T / sqrt(d)). Rows are queries, columns keys, both in row-major ``y * w + x`` order;
  every row sums to 1.
* ``cross_attn[(h, w)]``: ``(B, N, T)``, the same mean for cross-attention over the ``T`` context positions
  (77 for CLIP). Column ``j`` is the token at position ``j`` of ``tokens`` (position 0 is the start token).
* ``self_counts`` / ``cross_counts``: how many (layer, timestep) maps were averaged per resolution. They give
  each layer equal weight when resolutions are combined (concept distillation's plain mean over layers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

Resolution = tuple[int, int]


@dataclass
class AttentionMaps:
    self_attn: dict[Resolution, torch.Tensor] = field(default_factory=dict)
    cross_attn: dict[Resolution, torch.Tensor] = field(default_factory=dict)
    self_counts: dict[Resolution, int] = field(default_factory=dict)
    cross_counts: dict[Resolution, int] = field(default_factory=dict)
    tokens: list[str] = field(default_factory=list)
    image_size: tuple[int, int] = (0, 0)
    """(height, width) of the image in pixels."""
    meta: dict[str, Any] = field(default_factory=dict)
    """What produced the maps: timesteps, prompt, backend, layers."""

    @property
    def batch_size(self) -> int:
        for maps in (self.self_attn, self.cross_attn):
            for value in maps.values():
                return int(value.shape[0])
        return 0

    @property
    def latent_size(self) -> Resolution:
        """The finest attention grid, i.e. the latent grid for SD-family UNets."""
        sizes = list(self.self_attn) + list(self.cross_attn)
        if not sizes:
            raise ValueError("These attention maps are empty: the capture kept no layer.")
        return max(sizes, key=lambda hw: hw[0] * hw[1])

    def words(self) -> list[str]:
        """The prompt's words, as the tokenizer split them (no start/end/padding tokens)."""
        from .tokens import words_of

        return words_of(self.tokens)

    def cross_attention_for(
        self,
        positions: list[int],
        resolutions: list[Resolution] | None = None,
        size: Resolution | None = None,
    ) -> torch.Tensor:
        """Cross-attention of the given token positions, summed over positions, averaged over layers.

        Every layer counts equally whatever its resolution (concept distillation's plain mean); coarser maps are
        upsampled to ``size`` (default: the finest grid) by nearest-neighbour repetition. Returns ``(B, h, w)``.
        """
        if not self.cross_attn:
            raise ValueError(
                "These attention maps hold no cross-attention. Capture with a prompt and with cross-attention "
                "kept (AttentionCapture's 'concept distillation' preset keeps it)."
            )
        chosen = resolutions or sorted(self.cross_attn, key=lambda hw: -hw[0] * hw[1])
        missing = [hw for hw in chosen if hw not in self.cross_attn]
        if missing:
            raise ValueError(f"No cross-attention at {missing}; captured resolutions: {sorted(self.cross_attn)}")
        height, width = size or max(chosen, key=lambda hw: hw[0] * hw[1])
        total = None
        count = 0
        for hw in chosen:
            maps = self.cross_attn[hw]
            if max(positions) >= maps.shape[-1] or min(positions) < 0:
                raise ValueError(f"Token position out of range 0..{maps.shape[-1] - 1}: {positions}")
            summed = maps[..., positions].sum(-1).reshape(-1, 1, hw[0], hw[1])
            summed = F.interpolate(summed, size=(height, width), mode="nearest-exact")
            weight = self.cross_counts.get(hw, 1)
            total = summed * weight if total is None else total + summed * weight
            count += weight
        return (total / count)[:, 0]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.self_attn, self.cross_attn) for t in d.values())

    def __repr__(self) -> str:  # shown in ComfyUI's debug output; never dump tensors
        self_part = ", ".join(f"{h}x{w}" for h, w in self.self_attn)
        cross_part = ", ".join(f"{h}x{w}" for h, w in self.cross_attn)
        return (
            f"AttentionMaps(batch={self.batch_size}, image={self.image_size}, self=[{self_part}], "
            f"cross=[{cross_part}], tokens={len(self.tokens)})"
        )
