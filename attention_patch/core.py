"""Attention that also hands its head-averaged probabilities to a sink, in bounded query chunks.

Both backends (ComfyUI replace patches, diffusers processors) call :func:`attention_with_capture` with the
projected ``q, k, v`` in ``(batch, tokens, heads * dim_head)`` layout. Rows that are not captured (e.g. the
unconditional half of a CFG batch) go through the backend's own attention function, so only the kept rows pay
for explicit float32 probabilities; the result equals ordinary attention to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]
ChunkSink = Callable[[int, int, torch.Tensor], None]
"""``sink(query_start, query_end, probs)`` with ``probs`` of shape ``(rows, query_end - query_start, keys)``."""

DEFAULT_CHUNK_BYTES = 128 * 2**20


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Plain scaled-dot-product attention in ``(b, n, h*d)`` layout: the default for uncaptured rows."""
    b, n, inner = q.shape
    d = inner // heads
    qh, kh, vh = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(qh, kh, vh)
    return out.transpose(1, 2).reshape(b, n, inner)


def query_chunk(rows: int, heads: int, keys: int, budget_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Queries per chunk so that one float32 probability block stays within ``budget_bytes``."""
    per_query = max(1, rows * heads * keys * 4)
    return max(1, budget_bytes // per_query)


def attention_with_capture(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    sink: ChunkSink,
    rows: slice | None = None,
    fallback: AttentionFn = sdpa_attention,
    scale: float | None = None,
    budget_bytes: int = DEFAULT_CHUNK_BYTES,
) -> torch.Tensor:
    """Attention output for all rows; probabilities of ``rows`` (default all), averaged over heads, to ``sink``.

    Probabilities are computed in float32 whatever the input dtype; heads are averaged inside each chunk, so no
    per-head map larger than one chunk ever exists.
    """
    b, n, inner = q.shape
    d = inner // heads
    rows = rows if rows is not None else slice(0, b)
    start, stop, _ = rows.indices(b)
    if stop <= start:
        return fallback(q, k, v, heads)
    out = fallback(q, k, v, heads) if (start, stop) != (0, b) else torch.empty_like(q)

    r = stop - start
    scale = d**-0.5 if scale is None else scale
    # (rows * heads, tokens, d) blocks, so each chunk is one batched GEMM into a reused buffer.
    qh = (q[start:stop].float().reshape(r, n, heads, d).transpose(1, 2) * scale).reshape(r * heads, n, d)
    keys_t = k[start:stop].float().reshape(r, -1, heads, d).permute(0, 2, 3, 1).reshape(r * heads, d, -1)
    vh = v[start:stop].float().reshape(r, -1, heads, d).transpose(1, 2).reshape(r * heads, -1, d)
    keys = keys_t.shape[-1]
    step = min(n, query_chunk(r, heads, keys, budget_bytes))
    rows_out = torch.empty(r * heads, n, d, dtype=torch.float32, device=q.device)
    buffer = torch.empty(r * heads, step, keys, dtype=torch.float32, device=q.device)
    for s in range(0, n, step):
        e = min(n, s + step)
        probs = buffer[:, : e - s]
        torch.bmm(qh[:, s:e], keys_t, out=probs)
        probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()  # softmax in place: no second block allocated
        probs.div_(probs.sum(dim=-1, keepdim=True))
        torch.bmm(probs, vh, out=rows_out[:, s:e])
        sink(s, e, probs.view(r, heads, e - s, keys).sum(dim=1).mul_(1.0 / heads))
    out[start:stop] = rows_out.view(r, heads, n, d).transpose(1, 2).reshape(r, n, inner).to(q.dtype)
    return out
