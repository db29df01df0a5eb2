"""DiffSeg's multi-resolution self-attention aggregation (Tian et al., google/diffseg ``aggregate_weights``).

Every resolution's attention is brought to the finest grid and the resolutions are mixed with weights
proportional to their side length (64:32:16:8 for SD1.x, i.e. 0.533/0.267/0.133/0.067):

* the **key** axis (what a pixel attends to) is upsampled bilinearly (half-pixel centres, as TF's
  ``UpSampling2D`` and torch's ``align_corners=False``), then every key map is renormalised to sum 1;
* the **query** axis (which pixel attends) is repeated nearest-neighbour.

The result ``(B, hf*wf, hf, wf)`` holds one probability map per finest-grid pixel (row ``y*wf + x``). The
finest SD1.5 output is 64 MiB per image in float32; it is the only full-size tensor this module allocates:
coarse resolutions are upsampled on their own (small) query sets and added to the output through a broadcast
view instead of materialising repeated copies.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

Resolution = tuple[int, int]


def _self_attention_dict(self_attn: Any) -> Mapping[Resolution, torch.Tensor]:
    """Accept a plain ``{(h, w): tensor}`` dict or an ``AttentionMaps`` (anything with ``.self_attn``)."""
    maps = getattr(self_attn, "self_attn", self_attn)
    if not isinstance(maps, Mapping) or not maps:
        raise ValueError(
            "No self-attention to aggregate. Capture with self-attention kept (AttentionCapture's DiffSeg preset) "
            "or pass a dict {(h, w): tensor (B, N, N)}."
        )
    return maps


def resolution_weights(
    resolutions: list[Resolution], weights: str | Mapping[Resolution, float] | None = "resolution"
) -> dict[Resolution, float]:
    """Normalised mixing weights, one per resolution.

    ``"resolution"`` (or ``None``) is DiffSeg's default: weight ∝ sqrt(h*w) (= ∝ side length; 64:32:16:8 for
    SD1.x, 128:64 i.e. 2:1 for SDXL at 1024²). A dict gives explicit (relative) weights; resolutions it omits
    get weight 0.
    """
    if weights is None or weights == "resolution":
        raw = {hw: math.sqrt(hw[0] * hw[1]) for hw in resolutions}
    elif isinstance(weights, str):
        raise ValueError(f"Unknown weights {weights!r}: use 'resolution', None or a dict {{(h, w): weight}}.")
    else:
        unknown = [hw for hw in weights if hw not in resolutions]
        if unknown:
            raise ValueError(f"Weights given for {unknown}, which are not among the resolutions {resolutions}.")
        raw = {hw: float(weights.get(hw, 0.0)) for hw in resolutions}
        if any(value < 0 or not math.isfinite(value) for value in raw.values()):
            raise ValueError(f"Resolution weights must be finite and >= 0, got {raw}.")
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("All resolution weights are zero: give at least one resolution a positive weight.")
    return {hw: value / total for hw, value in raw.items()}


def _head_mean(attention: torch.Tensor, hw: Resolution) -> torch.Tensor:
    """(B, N, N) or (B, H, N, N) -> (B, N, N) float32 (no copy when already float32 without heads)."""
    n = hw[0] * hw[1]
    if attention.dim() == 4:
        attention = attention.float().mean(dim=1)
    elif attention.dim() != 3:
        raise ValueError(f"Self-attention at {hw} must be (B, N, N) or (B, heads, N, N), got {tuple(attention.shape)}")
    if attention.shape[-1] != n or attention.shape[-2] != n:
        raise ValueError(f"Self-attention at {hw} must have N = {n} queries and keys, got {tuple(attention.shape)}")
    return attention.float()


def check_finite(values: torch.Tensor, what: str) -> None:
    """Raise on NaN/inf with the one true cause, shared by every segment step so the advice stays consistent.

    Pass a cheap summary where possible (row sums): NaN/inf anywhere in a row makes its sum non-finite.
    """
    if not torch.isfinite(values).all():
        raise ValueError(
            f"{what} contains NaN or inf. The capture already computes attention probabilities in float32, so "
            "the model or the latent produced non-finite values: typically a float16 model overflowing (load the "
            "model in float32 or bfloat16) or a latent encoded by a different model's VAE."
        )


def bilinear_matrix(source: int, target: int) -> torch.Tensor:
    """(target, source) matrix of 1-D bilinear resampling with half-pixel centres (``align_corners=False``).

    Equals torch's ``F.interpolate(mode='bilinear', align_corners=False)`` (and TF2's ``UpSampling2D``) along
    one axis; the 2-D resize is separable, so two small GEMMs replace the (slower) interpolate kernel.
    """
    position = (torch.arange(target, dtype=torch.float64) + 0.5) * (source / target) - 0.5
    position = position.clamp_min(0.0)
    low = position.floor().long().clamp_max(source - 1)
    high = (low + 1).clamp_max(source - 1)
    frac = position - low
    matrix = torch.zeros(target, source, dtype=torch.float64)
    matrix[torch.arange(target), low] += 1.0 - frac
    matrix[torch.arange(target), high] += frac
    return matrix.float()


def _upsampled_keys(attention: torch.Tensor, hw: Resolution, size: Resolution, weight: float) -> torch.Tensor:
    """(B, N, N) at ``hw`` -> (B, N, hf*wf): key maps bilinearly upsampled, renormalised to sum ``weight``."""
    batch, queries, _ = attention.shape
    (h, w), (hf, wf) = hw, size
    rows, cols = bilinear_matrix(h, hf), bilinear_matrix(w, wf)
    keys = attention.reshape(batch * queries, h, w)
    # Sum of each upsampled map = row-weights · map · column-weights: renormalise before upsampling.
    sums = torch.einsum("nhw,h,w->n", keys, rows.sum(0), cols.sum(0))
    check_finite(sums, f"The self-attention at {hw}")
    scale = (weight / sums.clamp_min(torch.finfo(torch.float32).tiny))[:, None, None]
    keys = torch.matmul(keys * scale, cols.T)  # (n, h, wf)
    keys = torch.matmul(rows, keys)  # (n, hf, wf)
    return keys.reshape(batch, queries, hf * wf)


def _nearest_index(source: int, target: int) -> torch.Tensor:
    """torch's 'nearest' source index for every target position (= repeat when target % source == 0)."""
    return torch.div(torch.arange(target) * source, target, rounding_mode="floor")


def _add_repeated_queries(out: torch.Tensor, keys: torch.Tensor, hw: Resolution, size: Resolution) -> None:
    """out (B, hf, wf, K) += keys (B, h*w, K) with the query axis repeated nearest-neighbour to (hf, wf)."""
    batch, _, key_count = keys.shape
    (h, w), (hf, wf) = hw, size
    if hf % h == 0 and wf % w == 0:  # DiffSeg's case: a broadcast view, no repeated copy
        view = out.view(batch, h, hf // h, w, wf // w, key_count)
        view.add_(keys.view(batch, h, 1, w, 1, key_count))
        return
    rows, cols = _nearest_index(h, hf), _nearest_index(w, wf)
    index = (rows[:, None] * w + cols[None, :]).reshape(-1)
    out.view(batch, hf * wf, key_count).add_(keys[:, index])


def aggregate_self_attention(
    self_attn: Mapping[Resolution, torch.Tensor] | Any,
    weights: str | Mapping[Resolution, float] | None = "resolution",
    size: Resolution | None = None,
) -> torch.Tensor:
    """Mix per-resolution self-attention into one probability map per finest-grid pixel (DiffSeg §2).

    ``self_attn``: ``{(h, w): (B, N, N) or (B, heads, N, N)}`` (rows = queries, keys in ``y*w + x`` order) or an
    ``AttentionMaps``. ``size``: the output grid (default: the finest captured resolution).
    Returns float32 ``(B, hf*wf, hf, wf)``; every ``out[b, q]`` sums to 1.
    """
    maps = _self_attention_dict(self_attn)
    resolutions = sorted(maps, key=lambda hw: -hw[0] * hw[1])
    size = tuple(size) if size is not None else tuple(resolutions[0])
    mix = resolution_weights(resolutions, weights)
    batches = {int(maps[hw].shape[0]) for hw in resolutions}
    if len(batches) != 1:
        raise ValueError(f"All resolutions must have the same batch size, got {batches}.")
    batch = batches.pop()
    hf, wf = size
    finest_n = hf * wf
    out: torch.Tensor | None = None

    # Coarse resolutions: upsample keys on their own (small) query sets and sum them on the finest coarse
    # query grid that all of them divide, so the big output is written in a single pass.
    active = [hw for hw in resolutions if mix[hw] > 0]
    finest_exact = tuple(active[0]) == tuple(size)
    coarse_list = active[1:] if finest_exact else active
    coarse = None
    coarse_hw = None
    if coarse_list:
        coarse_hw = coarse_list[0]
        nested = all(coarse_hw[0] % hw[0] == 0 and coarse_hw[1] % hw[1] == 0 for hw in coarse_list[1:])
        nested = nested and hf % coarse_hw[0] == 0 and wf % coarse_hw[1] == 0
        if not nested:
            coarse_hw = size
        coarse = torch.zeros(batch, coarse_hw[0] * coarse_hw[1], finest_n) if not nested else None
        for hw in coarse_list:
            keys = _upsampled_keys(_head_mean(maps[hw], hw), hw, size, mix[hw])
            if coarse is None and tuple(hw) == tuple(coarse_hw):
                coarse = keys
            else:
                _add_repeated_queries(coarse.view(batch, coarse_hw[0], coarse_hw[1], finest_n), keys, hw, coarse_hw)

    if not finest_exact:
        out = coarse if tuple(coarse_hw) == tuple(size) else torch.zeros(batch, finest_n, finest_n)
        if out is not coarse:
            _add_repeated_queries(out.view(batch, hf, wf, finest_n), coarse, coarse_hw, size)
        return out.view(batch, finest_n, hf, wf)

    # The finest resolution: renormalise rows (identity upsample) and add the coarse sum, in one pass.
    attention = _head_mean(maps[active[0]], active[0])
    sums = attention.sum(dim=-1, keepdim=True)
    check_finite(sums, f"The self-attention at {active[0]}")
    scale = mix[active[0]] / sums.clamp_min_(torch.finfo(torch.float32).tiny)
    if coarse is None:
        out = torch.mul(attention, scale)
    else:
        out = torch.empty(batch, finest_n, finest_n)
        ch, cw = coarse_hw
        sh, sw = hf // ch, wf // cw
        torch.addcmul(
            coarse.view(batch, ch, 1, cw, 1, finest_n),
            attention.view(batch, ch, sh, cw, sw, finest_n),
            scale.view(batch, ch, sh, cw, sw, 1),
            out=out.view(batch, ch, sh, cw, sw, finest_n),
        )
    return out.view(batch, finest_n, hf, wf)
