"""Segmentation metrics: IoU and DiffSeg's per-image Hungarian-matched accuracy / mIoU (``diffseg/utils.py``).

DiffSeg matches predicted segments to ground-truth classes *per image* with
``scipy.optimize.linear_sum_assignment(maximize=True)`` on the confusion matrix; a predicted segment left
unmatched counts only as false negatives of the ground-truth classes it covers (its pixels are not a false
positive of any class). This is more lenient than dataset-level cluster matching (STEGO/PiCIE).
"""

from __future__ import annotations

import numpy as np
import torch


def _numpy(array) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def iou(pred, gt) -> float:
    """Jaccard index of two bool masks; 1.0 when both are empty."""
    pred, gt = _numpy(pred).astype(bool), _numpy(gt).astype(bool)
    if pred.shape != gt.shape:
        raise ValueError(f"Shapes differ: pred {pred.shape}, gt {gt.shape}.")
    union = np.logical_or(pred, gt).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, gt).sum() / union)


def confusion_matrix(pred_labels, gt_labels, ignore: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows = ground-truth classes present, columns = predicted segments present. Returns (matrix, gt ids)."""
    pred, gt = _numpy(pred_labels).reshape(-1), _numpy(gt_labels).reshape(-1)
    if pred.shape != gt.shape:
        raise ValueError(f"Shapes differ: pred {pred.shape}, gt {gt.shape}.")
    if ignore is not None:
        keep = gt != ignore
        pred, gt = pred[keep], gt[keep]
    gt_ids, gt_index = np.unique(gt, return_inverse=True)
    pred_ids, pred_index = np.unique(pred, return_inverse=True)
    matrix = np.zeros((gt_ids.size, pred_ids.size), dtype=np.int64)
    np.add.at(matrix, (gt_index, pred_index), 1)
    return matrix, gt_ids


def hungarian_miou(pred_labels, gt_labels, ignore: int | None = None) -> tuple[float, float, dict[int, float]]:
    """Per-image Hungarian matching as in DiffSeg. Returns (pixel accuracy, mIoU, {gt class: IoU}).

    ``pred_labels``/``gt_labels``: int ``(H, W)``; ``ignore``: a ground-truth id excluded from scoring
    (e.g. 255). Each ground-truth class is matched to at most one predicted segment (maximum total overlap);
    TP = matched overlap, FP = matched segment outside the class, FN = class pixels outside its segment.
    """
    from scipy.optimize import linear_sum_assignment

    matrix, gt_ids = confusion_matrix(pred_labels, gt_labels, ignore)
    total = int(matrix.sum())
    if total == 0:
        return float("nan"), float("nan"), {}
    rows, cols = linear_sum_assignment(matrix, maximize=True)
    true_positive = np.zeros(gt_ids.size)
    false_positive = np.zeros(gt_ids.size)
    true_positive[rows] = matrix[rows, cols]
    false_positive[rows] = matrix[:, cols].sum(axis=0) - matrix[rows, cols]
    false_negative = matrix.sum(axis=1) - true_positive
    per_class = true_positive / (true_positive + false_positive + false_negative)
    accuracy = float(true_positive.sum() / total)
    return accuracy, float(np.nanmean(per_class)), {int(c): float(v) for c, v in zip(gt_ids, per_class)}


def hungarian_counts(pred_labels, gt_labels, n_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The official ``hungarian_matching`` for one image: (TP, FP, FN per class, valid pixel count).

    Sum these over a dataset, then ACC = ΣTP / Σcount and mIoU = nanmean(TP / (TP + FP + FN)) gives the
    paper's numbers. Ground-truth ids outside ``0..n_class-1`` (e.g. 255) are ignored. The official matrix is
    padded to ``n_class`` rows, so a segment may be matched to a class absent from the image (counted as FP).
    """
    from scipy.optimize import linear_sum_assignment

    gt, pred = _numpy(gt_labels).reshape(-1).astype(np.int64), _numpy(pred_labels).reshape(-1).astype(np.int64)
    columns = max(n_class, int(pred.max()) + 1)
    valid = (gt >= 0) & (gt < n_class)
    hist = np.bincount(columns * gt[valid] + pred[valid], minlength=n_class * columns).reshape(n_class, columns)
    rows, cols = linear_sum_assignment(hist, maximize=True)
    true_positive = np.zeros(n_class)
    true_positive[rows] = hist[rows, cols]
    false_negative = hist.sum(axis=1) - true_positive
    reordered = hist[:, cols]
    false_positive = np.zeros(n_class)
    false_positive[rows] = reordered.sum(axis=0) - np.diag(reordered)
    return true_positive, false_positive, false_negative, int(hist.sum())


# ----------------------------------------------------------------------------------------------- binary masks


def _binary_pairs(preds, truths) -> list[tuple[np.ndarray, np.ndarray]]:
    """(pred, truth) bool pairs from two sequences of masks (or two stacked (N, H, W) arrays); sizes may differ
    between images but not within a pair."""
    preds, truths = list(preds), list(truths)
    if len(preds) != len(truths):
        raise ValueError(f"{len(preds)} predictions but {len(truths)} ground-truth masks")
    pairs = []
    for i, (p, t) in enumerate(zip(preds, truths)):
        p, t = _numpy(p).astype(bool), _numpy(t).astype(bool)
        if p.shape != t.shape:
            raise ValueError(f"mask {i}: prediction {p.shape} and ground truth {t.shape} differ in size")
        pairs.append((p, t))
    return pairs


def pooled_iou(preds, truths) -> dict[str, float]:
    """Concept distillation's metric: foreground and background IoU over ALL pixels of all images pooled
    (``sklearn.jaccard_score`` on the flattened set), ``miou`` = their mean, plus pooled pixel ``accuracy``.
    Large images weigh more than small ones; one badly missed image barely moves it. A class absent from both
    predictions and truths scores 1.0 (as :func:`iou`); no pixels at all is an error."""
    tp = fp = fn = tn = 0
    for p, t in _binary_pairs(preds, truths):
        tp += int(np.count_nonzero(p & t))
        fp += int(np.count_nonzero(p & ~t))
        fn += int(np.count_nonzero(~p & t))
        tn += int(np.count_nonzero(~p & ~t))
    total = tp + fp + fn + tn
    if total == 0:
        raise ValueError("pooled_iou needs at least one pixel")
    iou_fg = 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
    iou_bg = 1.0 if tn + fp + fn == 0 else tn / (tn + fp + fn)
    return {"iou_fg": iou_fg, "iou_bg": iou_bg, "miou": (iou_fg + iou_bg) / 2, "accuracy": (tp + tn) / total}


def mean_image_iou(preds, truths) -> float:
    """Mean over images of the per-image foreground IoU (the common per-image protocol, not the paper's). An image
    whose prediction and truth are both empty scores 1.0 (correctly found no object), as :func:`iou`."""
    pairs = _binary_pairs(preds, truths)
    if not pairs:
        raise ValueError("mean_image_iou needs at least one image")
    return float(np.mean([iou(p, t) for p, t in pairs]))
