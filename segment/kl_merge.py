"""DiffSeg's iterative KL merging (Tian et al., google/diffseg ``generate_masks`` / ``mask_merge``).

Input: the aggregated self-attention ``(B, N, hf, wf)`` from :func:`aggregate_self_attention` (one
probability map per pixel). Steps, as in the official code:

1. an ``M x M`` anchor grid (official ``generate_sampling_grid``, generalised from 63 to ``hf-1`` / ``wf-1``);
2. iteration 0: every anchor becomes the mean of all pixel maps within ``tau`` of it (symmetric KL
   ``½KL(a‖b) + ½KL(b‖a)``, strict ``<``, the anchor's own pixel included);
3. iterations ≥ 1: a greedy pass in index order; a proposal that was already matched is not an anchor again
   but **is** still averaged into later proposals (the official behaviour, "Quirk 1");
4. the proposals are upsampled bilinearly to the output size and every pixel takes the argmax (first on ties).

Deviations from the official code (all deliberate):

* iteration 0 runs in float32 with logs of ``max(p, eps)`` instead of float16: the official fp16 cast flushes
  probabilities below ~3e-8 to 0, ``0 * log 0`` becomes NaN and whole anchors silently vanish (on peaky maps
  every anchor, which then crashes). ``eps=1e-12`` changes nothing on maps whose entries are all above it;
* the distance uses the matmul form ``½[Σa log a + Σb log b − a·log b − b·log a]`` (two GEMMs per image),
  which equals the elementwise sum to float32 rounding; iterations ≥ 1 run in float64 as in the official code;
* labels are renumbered contiguously by area (largest segment = 0); the official ids are proposal indices;
* ``max_segments`` and ``tau_mode="size_aware"`` are extensions, off by default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .aggregate import aggregate_self_attention, check_finite

REFERENCE_POSITIONS = 64 * 64
"""The finest map size DiffSeg's thresholds were tuned on (SD1.x at 512²)."""


@dataclass
class KLMergeResult:
    """Segments of a batch.

    ``labels``: int64 ``(B, H, W)``, ids ``0..count-1`` ordered by area (0 = largest).
    ``proposals[b]``: float32 ``(count_b, hf, wf)``, the merged attention map of each label (same order).
    ``masks[b]``: bool ``(count_b, H, W)``, one mask per label, largest first.
    ``counts[b]``: number of segments of image ``b``.
    """

    labels: torch.Tensor
    proposals: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @property
    def count(self) -> list[int]:
        return self.counts


def sampling_grid(size: int, anchors_per_side: int) -> torch.Tensor:
    """Anchor coordinates along one axis, exactly as the official ``generate_sampling_grid``.

    Official (size 64): ``seg = 63 // (M-1); tot = seg*(M-1); start = (63 - tot)//2;
    linspace(start, start+tot, M).astype(int)``. M=16 -> 1, 5, ..., 61; M=8 -> 0, 9, ..., 63.
    """
    if anchors_per_side < 2:
        raise ValueError(f"The anchor grid needs at least 2 anchors per side, got {anchors_per_side}.")
    if anchors_per_side > size:
        raise ValueError(
            f"The anchor grid ({anchors_per_side} per side) is larger than the attention map ({size} pixels "
            f"per side). Use grid <= {size}."
        )
    last = size - 1
    step = last // (anchors_per_side - 1)
    total = step * (anchors_per_side - 1)
    start = (last - total) // 2
    # linspace(...).astype(int) truncates; the values are integers up to float rounding, so round first.
    values = torch.linspace(start, start + total, anchors_per_side, dtype=torch.float64)
    return torch.floor(values + 1e-9).to(torch.int64)


def anchor_indices(height: int, width: int, grid: int | tuple[int, int]) -> torch.Tensor:
    """Flat ``y*width + x`` indices of the anchors, row-major (official meshgrid ``indexing='ij'``)."""
    grid_h, grid_w = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = sampling_grid(height, grid_h), sampling_grid(width, grid_w)
    return (rows[:, None] * width + cols[None, :]).reshape(-1)


def effective_taus(
    tau: float | Sequence[float], iterations: int, positions: int, tau_mode: str = "raw"
) -> list[float]:
    """Per-iteration thresholds. ``size_aware`` scales by ``log(positions) / log(4096)``.

    Why log: the symmetric KL between two maps is bounded by (and for peaky maps grows like) the log of the
    number of positions (KL(δ‖uniform) = log N), so a map with 256 positions yields divergences about
    log 256 / log 4096 = 2/3 as large as the same layout at 64² and a raw τ tuned at 64² merges too much.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}.")
    if isinstance(tau, (int, float)):
        taus = [float(tau)] * iterations
    else:
        taus = [float(value) for value in tau]
        if len(taus) != iterations:
            raise ValueError(f"Got {len(taus)} thresholds for {iterations} iterations; give one per iteration.")
    if any(not math.isfinite(value) or value <= 0 for value in taus):
        raise ValueError(
            f"The KL threshold tau must be > 0 (DiffSeg uses 1.1 for COCO, 0.9 for Cityscapes), got {taus}."
        )
    if tau_mode == "size_aware":
        scale = math.log(positions) / math.log(REFERENCE_POSITIONS)
        taus = [value * scale for value in taus]
    elif tau_mode != "raw":
        raise ValueError(f"tau_mode must be 'raw' or 'size_aware', got {tau_mode!r}.")
    return taus


_KLTerms = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""``(maps, logs, self_terms)``: rows ``p``, ``log max(p, eps)`` and ``Σ p log p``, computed once per map set."""


def _row_dot(x: torch.Tensor, y: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Row-wise dot product without a full-size temporary (a batched 1x1 GEMM per chunk)."""
    out = torch.empty(x.shape[0], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        stop = min(start + chunk, x.shape[0])
        out[start:stop] = torch.bmm(x[start:stop, None, :], y[start:stop, :, None]).view(-1)
    return out


def _kl_terms(maps: torch.Tensor, eps: float) -> _KLTerms:
    """The per-map parts of the symmetric KL, so each caller pays for the logs once and can slice rows."""
    logs = torch.empty_like(maps)
    torch.clamp(maps, min=eps, out=logs).log_()
    return maps, logs, _row_dot(maps, logs)


def _pairwise_kl(a: _KLTerms, b: _KLTerms) -> torch.Tensor:
    """``½KL(a‖b) + ½KL(b‖a)`` of every row of ``a`` against every row of ``b``: (I, J), the one implementation.

    Matmul form ``½[Σa log a + Σb log b − a·log b − b·log a]`` (two GEMMs), in the dtype of the terms.
    """
    maps_a, logs_a, self_a = a
    maps_b, logs_b, self_b = b
    cross = maps_a @ logs_b.T
    cross.addmm_(logs_a, maps_b.T)
    return cross.neg_().add_(self_b[None, :]).add_(self_a[:, None]).mul_(0.5)


def symmetric_kl(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Pairwise ``½KL(a‖b) + ½KL(b‖a)`` between rows of ``a`` (I, N) and ``b`` (J, N) -> (I, J).

    Logs of ``max(p, eps)``; equals the elementwise ``½Σ(a−b)(log a − log b)`` with the same clamp.
    """
    return _pairwise_kl(_kl_terms(a, eps), _kl_terms(b, eps))


def _rows(terms: _KLTerms, index: torch.Tensor | slice) -> _KLTerms:
    """The terms of a subset of maps (anchors, one merged row): slices, no recomputed logs."""
    return tuple(part[index] for part in terms)


def _iteration_zero(maps: torch.Tensor, anchors: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """Mean of all pixel maps within ``tau`` of each anchor. maps: (N, K) float32 -> (A, K) proposals."""
    terms = _kl_terms(maps, eps)
    check_finite(terms[2], "The aggregated attention")  # NaN/inf anywhere in a map reaches its Σ p log p
    distance = _pairwise_kl(_rows(terms, anchors), terms)
    member = distance < tau
    member[torch.arange(len(anchors)), anchors] = True  # D(a, a) = 0 exactly; guard against rounding
    weights = member.to(maps.dtype)
    weights.div_(weights.sum(dim=1, keepdim=True))
    return weights @ maps


def _greedy_merge(proposals: torch.Tensor, tau: float, eps: float) -> torch.Tensor:
    """One official merge pass (float64): index order, matched proposals stay available as members."""
    terms = _kl_terms(proposals, eps)
    member = (_pairwise_kl(terms, terms) < tau).numpy()
    member[range(len(proposals)), range(len(proposals))] = True
    matched = [False] * len(proposals)
    groups = []
    for index in range(len(proposals)):
        if matched[index]:
            continue
        row = member[index]
        groups.append(row)
        for other in row.nonzero()[0]:
            matched[other] = True
    weights = torch.from_numpy(np.stack(groups)).to(proposals.dtype)
    weights.div_(weights.sum(dim=1, keepdim=True))
    return weights @ proposals


def _merge_to_count(proposals: torch.Tensor, max_segments: int, eps: float) -> torch.Tensor:
    """Merge the two closest proposals (symmetric KL, plain mean) until at most ``max_segments`` remain.

    Float64, with the distance matrix updated incrementally: one new column per merge, not a full recompute.
    Dead proposals get distance inf, so the argmin needs no mask.
    """
    terms = maps, logs, self_terms = _kl_terms(proposals.double().clone(), eps)
    count = len(maps)
    distance = _pairwise_kl(terms, terms)
    distance.fill_diagonal_(math.inf)
    alive = torch.ones(count, dtype=torch.bool)
    for _ in range(count - max_segments):
        first, second = sorted(divmod(int(distance.argmin()), count))  # first minimum in row-major order
        maps[first].add_(maps[second]).mul_(0.5)
        merged = slice(first, first + 1)
        _, logs[merged], self_terms[merged] = _kl_terms(maps[merged], eps)
        alive[second] = False
        column = _pairwise_kl(terms, _rows(terms, merged))[:, 0].masked_fill_(~alive, math.inf)
        column[first] = math.inf
        distance[second], distance[:, second] = math.inf, math.inf
        distance[first], distance[:, first] = column, column
    return maps[alive]


def _labels_from_proposals(
    proposals: torch.Tensor, grid_size: tuple[int, int], out_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bilinear upsample + argmax, then relabel by area. Returns (labels, proposals in label order, masks)."""
    maps = proposals.float().reshape(-1, 1, *grid_size)
    best_value = best_index = None
    for start in range(0, len(maps), 32):  # chunks bound the memory of many upsampled proposals
        chunk = maps[start : start + 32]
        if tuple(grid_size) != tuple(out_size):
            chunk = F.interpolate(chunk, size=out_size, mode="bilinear", align_corners=False)
        value, index = chunk[:, 0].max(dim=0)
        if best_value is None:
            best_value, best_index = value, index
        else:
            better = value > best_value  # strict: the first proposal wins ties, like argmax
            best_value = torch.where(better, value, best_value)
            best_index = torch.where(better, index + start, best_index)
    raw = best_index
    areas = torch.bincount(raw.reshape(-1), minlength=len(proposals))
    present = torch.nonzero(areas).reshape(-1)
    order = present[torch.argsort(-areas[present], stable=True)]  # largest first, ties by proposal index
    remap = torch.full((len(proposals),), -1, dtype=torch.int64)
    remap[order] = torch.arange(len(order))
    labels = remap[raw]
    masks = labels[None] == torch.arange(len(order))[:, None, None]
    return labels, proposals[order].float().reshape(len(order), *grid_size), masks


def _as_aggregate(aggregated: Any) -> torch.Tensor:
    if hasattr(aggregated, "self_attn"):  # an AttentionMaps: aggregate with DiffSeg's defaults
        return aggregate_self_attention(aggregated)
    if not isinstance(aggregated, torch.Tensor):
        raise TypeError(f"Expected a tensor (B, N, h, w) or AttentionMaps, got {type(aggregated).__name__}.")
    if aggregated.dim() == 3:
        aggregated = aggregated[None]
    if aggregated.dim() != 4 or aggregated.shape[1] != aggregated.shape[2] * aggregated.shape[3]:
        raise ValueError(
            "Expected the aggregated self-attention (B, h*w, h, w) (one map per pixel), "
            f"got {tuple(aggregated.shape)}."
        )
    return aggregated


def kl_merge_segment(
    aggregated: torch.Tensor | Any,
    *,
    grid: int | tuple[int, int] = 16,
    iterations: int | None = None,
    tau: float | Sequence[float] = 1.1,
    tau_mode: Literal["raw", "size_aware"] = "raw",
    eps: float = 1e-12,
    max_segments: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> KLMergeResult:
    """Segment images by merging attention maps (DiffSeg §3, §5).

    ``aggregated``: ``(B, N, hf, wf)`` or ``(N, hf, wf)`` with ``N = hf*wf`` (output of
    :func:`aggregate_self_attention`), or an ``AttentionMaps`` (aggregated with DiffSeg's defaults).
    ``grid``: anchors per side (M; 16 -> 256 anchors). ``tau``: KL threshold, one value or one per iteration
    (DiffSeg: 1.1 COCO, 0.9 Cityscapes). ``iterations``: merge iterations including iteration 0 (default
    ``len(tau)`` for a list, else 3 as in DiffSeg; 1 is allowed, unlike the official code). ``eps``: probability clamp inside the logs (1e-12; see the module
    notes). ``max_segments``: keep merging the two closest segments until at most this many remain.
    ``out_size``: label size (H, W), default 8x the grid (512² for SD1.5's 64² maps).
    """
    maps = _as_aggregate(aggregated)
    batch, positions, hf, wf = maps.shape
    if iterations is None:
        iterations = 3 if isinstance(tau, (int, float)) else len(tau)
    taus = effective_taus(tau, iterations, positions, tau_mode)
    if not eps > 0:
        raise ValueError(f"eps must be > 0 (it keeps log(0) out of the KL), got {eps}.")
    if max_segments is not None and max_segments < 1:
        raise ValueError(f"max_segments must be >= 1, got {max_segments}.")
    anchors = anchor_indices(hf, wf, grid)
    out_size = tuple(out_size) if out_size is not None else (8 * hf, 8 * wf)

    labels = torch.empty(batch, *out_size, dtype=torch.int64)
    result = KLMergeResult(labels=labels)
    for image in range(batch):
        pixel_maps = maps[image].reshape(positions, positions)
        if pixel_maps.dtype != torch.float32:
            pixel_maps = pixel_maps.float()
        proposals = _iteration_zero(pixel_maps, anchors, taus[0], eps).double()
        for tau_k in taus[1:]:
            proposals = _greedy_merge(proposals, tau_k, eps)
        if max_segments is not None and len(proposals) > max_segments:
            proposals = _merge_to_count(proposals, max_segments, eps)
        image_labels, ordered, masks = _labels_from_proposals(proposals, (hf, wf), out_size)
        labels[image] = image_labels
        result.proposals.append(ordered)
        result.masks.append(masks)
        result.counts.append(len(ordered))
    return result


def name_segments(
    labels: torch.Tensor,
    cross_attention: torch.Tensor | Any,
    tokens: list[str],
) -> list[str]:
    """Name each segment by the prompt word with the highest mean cross-attention inside it.

    ``labels``: ``(H, W)`` int ids 0..K-1. ``cross_attention``: ``(T, h, w)`` per-token maps, or an
    ``AttentionMaps`` (its cross-attention averaged over layers, image 0). Multi-token words are summed;
    start/end/padding tokens are ignored. Returns K names (segment id order).
    """
    from ..attention_patch.tokens import word_spans

    spans = word_spans(tokens)
    if not spans:
        raise ValueError("The prompt has no words to name segments with (it is empty).")
    if hasattr(cross_attention, "cross_attn"):
        per_word = torch.stack([cross_attention.cross_attention_for(pos)[0] for _, pos in spans])
    else:
        cross = torch.as_tensor(cross_attention).float()
        if cross.dim() != 3:
            raise ValueError(f"cross_attention must be (T, h, w), got {tuple(cross.shape)}.")
        per_word = torch.stack([cross[pos].sum(0) for _, pos in spans])
    if labels.dim() != 2:
        raise ValueError(f"labels must be (H, W), got {tuple(labels.shape)}.")
    per_word = F.interpolate(per_word[None], size=tuple(labels.shape), mode="bilinear", align_corners=False)[0]
    count = int(labels.max()) + 1 if labels.numel() else 0
    flat = labels.reshape(-1)
    sums = torch.zeros(count, len(spans)).index_add_(0, flat, per_word.reshape(len(spans), -1).T)
    areas = torch.bincount(flat, minlength=count).clamp_min(1)
    best = (sums / areas[:, None]).argmax(dim=1)
    return [spans[int(index)][0] for index in best]
