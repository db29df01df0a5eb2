"""IoU and DiffSeg's per-image Hungarian matching."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from segdrop.segment import hungarian_counts, hungarian_miou, iou


def test_iou_basic():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert iou(a, b) == 1.0
    a[:2] = True
    b[1:3] = True
    assert iou(a, b) == 4 / 12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), classes=st.integers(1, 6))
def test_permuted_labels_are_perfect(seed, classes):
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, classes, size=(12, 10))
    permutation = rng.permutation(50)[:classes] + 3
    accuracy, miou, per_class = hungarian_miou(permutation[gt], gt)
    assert accuracy == 1.0 and miou == 1.0
    assert set(per_class) == set(np.unique(gt).tolist())


def test_known_example():
    gt = np.array([[0, 0, 1, 1],
                   [0, 0, 1, 1]])
    pred = np.array([[5, 5, 5, 7],
                     [5, 5, 9, 7]])
    # 5 -> class 0 (TP 4, FP 1), 7 -> class 1 (TP 2); segment 9 is unmatched: only FN of class 1.
    accuracy, miou, per_class = hungarian_miou(pred, gt)
    assert accuracy == 6 / 8
    assert per_class == {0: 4 / 5, 1: 2 / 4}
    assert miou == (4 / 5 + 2 / 4) / 2


def test_ignore_label_and_official_counts():
    gt = np.array([[0, 0, 255, 1]])
    pred = np.array([[2, 2, 0, 1]])
    accuracy, miou, _ = hungarian_miou(pred, gt, ignore=255)
    assert accuracy == 1.0 and miou == 1.0
    tp, fp, fn, total = hungarian_counts(pred, gt, n_class=3)
    assert total == 3 and tp.sum() == 3 and fn.sum() == 0
