"""Segmentation from diffusion attention, ComfyUI-free: concept distillation's GMM mask and DiffSeg's KL merge."""

from .aggregate import aggregate_self_attention, resolution_weights
from .gmm import (
    GMMResult,
    gmm_binarize,
    gmm_binarize_attention,
    orphan_filter,
    remove_small_components,
    resize_mask,
)
from .kl_merge import (
    KLMergeResult,
    anchor_indices,
    effective_taus,
    kl_merge_segment,
    name_segments,
    sampling_grid,
    symmetric_kl,
)
from .metrics import confusion_matrix, hungarian_counts, hungarian_miou, iou

__all__ = [
    "GMMResult",
    "KLMergeResult",
    "aggregate_self_attention",
    "anchor_indices",
    "confusion_matrix",
    "effective_taus",
    "gmm_binarize",
    "gmm_binarize_attention",
    "hungarian_counts",
    "hungarian_miou",
    "iou",
    "kl_merge_segment",
    "name_segments",
    "orphan_filter",
    "remove_small_components",
    "resize_mask",
    "resolution_weights",
    "sampling_grid",
    "symmetric_kl",
]
