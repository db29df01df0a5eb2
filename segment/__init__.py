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
from .metrics import confusion_matrix, hungarian_counts, hungarian_miou, iou, mean_image_iou, pooled_iou
from .refine import difference_image, postprocess_mask, refine_mask, upsample_prelim
from .segmenter import SegmentationUNet, SegmenterFileError, load_segmenter, predict_masks, save_segmenter

__all__ = [
    "GMMResult",
    "KLMergeResult",
    "SegmentationUNet",
    "SegmenterFileError",
    "aggregate_self_attention",
    "anchor_indices",
    "confusion_matrix",
    "difference_image",
    "effective_taus",
    "gmm_binarize",
    "gmm_binarize_attention",
    "hungarian_counts",
    "hungarian_miou",
    "iou",
    "kl_merge_segment",
    "load_segmenter",
    "mean_image_iou",
    "name_segments",
    "orphan_filter",
    "pooled_iou",
    "postprocess_mask",
    "predict_masks",
    "refine_mask",
    "remove_small_components",
    "resize_mask",
    "resolution_weights",
    "sampling_grid",
    "save_segmenter",
    "symmetric_kl",
    "upsample_prelim",
]
