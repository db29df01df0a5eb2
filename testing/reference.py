"""Straightforward float64 NumPy versions of the DiffSeg steps, written like the official code (loops,
elementwise KL), for tests and benchmarks. Slow on purpose: they are the yardstick, not the product.

The only intended difference from google/diffseg: the KL uses logs of ``max(p, eps)`` in float64 instead of
the official float16 cast (see :func:`official_fp16_distance` for what that cast does).
"""

from __future__ import annotations

import numpy as np

from ..segment.kl_merge import anchor_indices


def bilinear_matrix_np(source: int, target: int) -> np.ndarray:
    """1-D bilinear resampling matrix (target, source), half-pixel centres (TF ``UpSampling2D``)."""
    matrix = np.zeros((target, source))
    for out in range(target):
        position = max((out + 0.5) * source / target - 0.5, 0.0)
        low = min(int(np.floor(position)), source - 1)
        high = min(low + 1, source - 1)
        frac = position - low
        matrix[out, low] += 1 - frac
        matrix[out, high] += frac
    return matrix


def aggregate_reference(self_attn: dict, weights: dict | None = None) -> np.ndarray:
    """Official ``aggregate_weights`` in float64: (B, N, hf, wf)."""
    resolutions = sorted(self_attn, key=lambda hw: -hw[0] * hw[1])
    hf, wf = resolutions[0]
    raw = weights or {hw: np.sqrt(hw[0] * hw[1]) for hw in resolutions}
    total = sum(raw[hw] for hw in resolutions)
    batch = np.asarray(self_attn[resolutions[0]]).shape[0]
    out = np.zeros((batch, hf, wf, hf, wf))
    for hw in resolutions:
        h, w = hw
        maps = np.asarray(self_attn[hw], dtype=np.float64)
        if maps.ndim == 4:
            maps = maps.mean(axis=1)
        keys = maps.reshape(batch, h * w, h, w)
        rows, cols = bilinear_matrix_np(h, hf), bilinear_matrix_np(w, wf)
        keys = np.matmul(rows, np.matmul(keys, cols.T))  # bilinear on the key axes, separable
        keys = keys / keys.sum(axis=(-1, -2), keepdims=True)
        keys = keys.reshape(batch, h, w, hf, wf)
        keys = np.repeat(np.repeat(keys, hf // h, axis=1), wf // w, axis=2)
        out += raw[hw] / total * keys
    return out.reshape(batch, hf * wf, hf, wf)


def kl_elementwise(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """``½KL(a‖b) + ½KL(b‖a)`` of a (I, N) against b (J, N), elementwise, float64 -> (I, J)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    log_a, log_b = np.log(np.maximum(a, eps)), np.log(np.maximum(b, eps))
    out = np.empty((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        out[i] = 0.5 * np.sum(a[i] * (log_a[i] - log_b), axis=1) - 0.5 * np.sum(b * (log_a[i] - log_b), axis=1)
    return out


def official_fp16_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The official iteration-0 distance: inputs cast to float16, no clamp (0·log 0 -> NaN)."""
    a16, b16 = np.asarray(a).astype(np.float16), np.asarray(b).astype(np.float16)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_a, log_b = np.log(a16), np.log(b16)
        out = np.empty((a16.shape[0], b16.shape[0]), dtype=np.float16)
        for i in range(a16.shape[0]):
            diff = log_a[i] - log_b
            out[i] = 0.5 * np.sum(a16[i] * diff, axis=1) - 0.5 * np.sum(b16 * diff, axis=1)
    return out


def kl_matmul64(a: np.ndarray, b: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Same distance as :func:`kl_elementwise` through float64 matmuls (fast enough for 256 x 4096 x 4096)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    log_a, log_b = np.log(np.maximum(a, eps)), np.log(np.maximum(b, eps))
    self_a, self_b = np.einsum("in,in->i", a, log_a), np.einsum("jn,jn->j", b, log_b)
    return 0.5 * (self_a[:, None] + self_b[None, :] - a @ log_b.T - log_a @ b.T)


def kl_merge_reference(
    aggregated: np.ndarray,
    grid: int = 16,
    taus: tuple[float, ...] = (1.1, 1.1, 1.1),
    eps: float = 1e-12,
    out_size: tuple[int, int] | None = None,
    anchors_subset: int | None = None,
    distance: str = "elementwise",
) -> tuple[np.ndarray, np.ndarray]:
    """Official ``generate_masks`` + NMS for one image (N, hf, wf), float64. Returns (labels, proposals).

    ``anchors_subset``: only the first n anchors (for timing the slow iteration 0); labels then meaningless.
    ``distance="matmul"``: iteration 0 through float64 matmuls (same numbers to ~1e-12, minutes faster).
    """
    positions, hf, wf = aggregated.shape
    maps = np.asarray(aggregated, dtype=np.float64).reshape(positions, positions)
    anchors = anchor_indices(hf, wf, grid).numpy()
    if anchors_subset is not None:
        anchors = anchors[:anchors_subset]
    proposals = []
    kl = kl_elementwise if distance == "elementwise" else kl_matmul64
    block = 1 if distance == "elementwise" else len(anchors)
    rows_of_distances = np.concatenate([kl(maps[anchors[i : i + block]], maps, eps)
                                        for i in range(0, len(anchors), block)])
    for anchor_distances in rows_of_distances:  # iteration 0: each anchor against every pixel map
        member = anchor_distances < taus[0]
        proposals.append(maps[member].mean(axis=0) if member.any() else np.full(positions, np.nan))
    proposals = np.stack(proposals)
    for tau in taus[1:]:  # greedy pass, matched proposals remain members (official Quirk 1)
        pairwise = kl_elementwise(proposals, proposals, eps)
        matched, merged = set(), []
        for index in range(len(proposals)):
            if index in matched:
                continue
            matched.add(index)
            member = pairwise[index] < tau
            if member.any():
                matched.update(np.nonzero(member)[0].tolist())
                merged.append(proposals[member].mean(axis=0))
        proposals = np.stack(merged)
    return upsample_proposals(proposals, (hf, wf), out_size or (8 * hf, 8 * wf)).argmax(axis=0), proposals


def upsample_proposals(proposals: np.ndarray, grid: tuple[int, int], out_size: tuple[int, int]) -> np.ndarray:
    """``(K, hf*wf)`` proposals bilinearly upsampled to ``(K, *out_size)`` (align_corners=False), float64: what
    ``kl_merge_reference`` takes the argmax of."""
    rows, cols = bilinear_matrix_np(grid[0], out_size[0]), bilinear_matrix_np(grid[1], out_size[1])
    return np.einsum("Yh,khw,Xw->kYX", rows, proposals.reshape(-1, *grid), cols)


def relabel_by_area(labels: np.ndarray) -> np.ndarray:
    """Contiguous ids, largest area first (ties: smaller original id first), as ``kl_merge_segment`` does."""
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = {int(old): new for new, old in enumerate(order)}
    return np.vectorize(remap.get)(labels)


def authors_gmm_mask(values: np.ndarray) -> np.ndarray:
    """fobadiffusion's ``GMMMaskSuggestor``: midpoint of the two GMM means, then the valid 3x3 box filter (> 0.5)
    written back to the interior. Seeded (``random_state=0``) as ours is; the authors leave it unseeded."""
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(n_components=2, random_state=0).fit(values.reshape(-1, 1))
    binary = values > np.mean(gmm.means_)
    padded = binary.astype(np.float64)
    box = sum(padded[dy : dy + padded.shape[0] - 2, dx : dx + padded.shape[1] - 2] for dy in range(3) for dx in range(3))
    binary[1:-1, 1:-1] = box / 9 > 0.5
    return binary

