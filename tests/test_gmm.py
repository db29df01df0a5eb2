"""Concept distillation's GMM binarisation: the authors' code, plus the documented extensions."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segdrop.attention_patch.maps import AttentionMaps
from segdrop.segment import (
    gmm_binarize,
    gmm_binarize_attention,
    orphan_filter,
    remove_small_components,
    resize_mask,
)
from segdrop.testing.reference import authors_gmm_mask


def bimodal_map(seed, size=(24, 20), separation=12.0):
    """Two Gaussian clusters (well separated) on a random spatial layout; returns (map, labels)."""
    rng = np.random.default_rng(seed)
    labels = rng.random(size) < rng.uniform(0.2, 0.8)
    low_mean, scale = rng.uniform(-1, 1), rng.uniform(0.05, 0.5)
    high_mean = low_mean + separation * scale
    values = np.where(labels, rng.normal(high_mean, scale * rng.uniform(0.3, 1), size),
                      rng.normal(low_mean, scale * rng.uniform(0.3, 1), size))
    return torch.from_numpy(values.astype(np.float32)), torch.from_numpy(labels)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_bimodal_maps_are_separated(seed):
    values, labels = bimodal_map(seed)
    result = gmm_binarize(values)
    assert torch.equal(result.mask[0], orphan_filter(labels))
    unfiltered = gmm_binarize(values, majority_filter=False)
    assert torch.equal(unfiltered.mask[0], labels)
    assert result.means[0, 0] < result.thresholds[0] < result.means[0, 1]


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.floats(0.5, 20.0), shift=st.floats(-5.0, 5.0))
def test_affine_invariance(seed, scale, shift):
    values, _ = bimodal_map(seed)
    base = gmm_binarize(values)
    moved = gmm_binarize(values * scale + shift)
    assert torch.equal(base.mask, moved.mask)
    torch.testing.assert_close(base.soft, moved.soft, atol=1e-4, rtol=0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_matches_authors_code(seed):
    rng = np.random.default_rng(seed)
    # attention-like maps: a smooth blob plus noise, not necessarily well separated
    ys, xs = np.mgrid[0:32, 0:32] / 32
    blob = np.exp(-((ys - rng.uniform(0.2, 0.8)) ** 2 + (xs - rng.uniform(0.2, 0.8)) ** 2) / rng.uniform(0.01, 0.1))
    values = (0.05 + 0.3 * blob + rng.normal(0, 0.03, blob.shape)).astype(np.float32)
    result = gmm_binarize(torch.from_numpy(values))
    assert np.array_equal(result.mask[0].numpy(), authors_gmm_mask(values))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_batch_order_does_not_matter(seed):
    maps = torch.stack([bimodal_map(seed + k)[0] for k in range(3)])
    permutation = torch.tensor([2, 0, 1])
    forward, shuffled = gmm_binarize(maps), gmm_binarize(maps[permutation])
    assert torch.equal(forward.mask[permutation], shuffled.mask)
    torch.testing.assert_close(forward.thresholds[permutation], shuffled.thresholds)


def test_constant_map_falls_back_with_warning():
    with pytest.warns(RuntimeWarning, match="fewer than 2 distinct"):
        result = gmm_binarize(torch.full((2, 8, 8), 0.3))
    assert not result.mask.any()
    assert torch.equal(result.soft, torch.zeros(2, 8, 8))
    assert torch.isnan(result.thresholds).all()


def test_nan_raises_clear_error():
    values = torch.rand(8, 8)
    values[2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN.*float32.*float16 model") as error:
        gmm_binarize(values)
    assert "precision option" not in str(error.value)  # no such option exists
    values[2, 3] = float("inf")
    with pytest.raises(ValueError, match="NaN"):
        gmm_binarize(values)


def test_orphan_filter_removes_isolated_pixels_and_keeps_border():
    mask = torch.zeros(7, 7, dtype=torch.bool)
    mask[3, 3] = True  # isolated interior pixel: removed
    mask[0, 0] = True  # isolated border pixel: the border is never filtered
    mask[6, 2] = True
    filtered = orphan_filter(mask)
    assert not filtered[3, 3] and filtered[0, 0] and filtered[6, 2]
    block = torch.zeros(7, 7, dtype=torch.bool)
    block[1:6, 1:6] = True
    block[3, 3] = False  # a one-pixel hole is filled (8 of 9 neighbours set)
    filtered = orphan_filter(block)
    assert filtered[3, 3]
    assert not filtered[1, 1]  # a corner of the block has only 4 of 9 set


def test_ignore_mask_fits_only_the_image_extent():
    values, labels = bimodal_map(7, size=(16, 16))
    canvas = torch.full((24, 24), -1.0)
    canvas[:16, :16] = values
    ignore = torch.ones(24, 24, dtype=torch.bool)
    ignore[:16, :16] = False
    result = gmm_binarize(canvas, ignore_mask=ignore, majority_filter=False)
    assert torch.equal(result.mask[0, :16, :16], labels)
    assert not result.mask[0][ignore].any()
    assert result.soft[0][ignore].eq(0).all()


def test_threshold_shift_and_min_area():
    values, _ = bimodal_map(3)
    base = gmm_binarize(values, majority_filter=False)
    shifted = gmm_binarize(values, majority_filter=False, threshold_shift=0.45)
    assert (shifted.mask <= base.mask).all()
    mask = torch.zeros(12, 12)
    mask[1:6, 1:6] = 5.0
    mask[9, 9] = 5.0
    mask[9, 10] = 5.0
    result = gmm_binarize(mask, majority_filter=False, min_area=3)
    assert result.mask[0, 1:6, 1:6].all() and not result.mask[0, 9, 9]


def flood_fill_small_components_removed(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Reference: breadth-first 4-connected flood fill, pixel by pixel, keeping components >= min_area."""
    seen = np.zeros_like(mask, dtype=bool)
    out = np.zeros_like(mask, dtype=bool)
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        component, queue = [], [start]
        seen[start] = True
        while queue:
            y, x = queue.pop()
            component.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(component) >= min_area:
            out[tuple(np.array(component).T)] = True
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), density=st.floats(0.2, 0.7), min_area=st.integers(2, 12))
def test_remove_small_components_matches_flood_fill(seed, density, min_area):
    masks = np.random.default_rng(seed).random((2, 17, 23)) < density
    ours = remove_small_components(torch.from_numpy(masks), min_area)
    assert ours.dtype == torch.bool and ours.shape == masks.shape
    for image in range(2):
        assert np.array_equal(ours[image].numpy(), flood_fill_small_components_removed(masks[image], min_area))


def test_remove_small_components_is_4_connected():
    diagonal = torch.eye(4, dtype=torch.bool)  # four pixels touching only at corners: four components of 1
    assert not remove_small_components(diagonal, 2).any()
    line = torch.zeros(4, 4, dtype=torch.bool)
    line[1, :] = True
    assert torch.equal(remove_small_components(line, 4), line)
    assert torch.equal(remove_small_components(line, 1), line)


def test_resize_mask_nearest():
    mask = torch.tensor([[True, False], [False, True]])
    big = resize_mask(mask, (4, 6))
    assert big.shape == (4, 6) and big.dtype == torch.bool
    assert big[:2, :3].all() and not big[:2, 3:].any() and big[2:, 3:].all()
    assert resize_mask(mask[None].float(), (4, 4)).shape == (1, 4, 4)


def test_attention_maps_helper():
    values, labels = bimodal_map(11, size=(8, 8))
    cross = torch.zeros(1, 64, 4)
    cross[0, :, 2] = values.reshape(-1)
    payload = AttentionMaps(cross_attn={(8, 8): cross}, tokens=["<|startoftext|>", "a</w>", "bird</w>", "<|endoftext|>"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = gmm_binarize_attention(payload, [2], majority_filter=False)
    assert torch.equal(result.mask[0], labels)


def test_remove_small_components_with_8_connectivity_joins_diagonals():
    diagonal = torch.eye(4, dtype=torch.bool)
    assert torch.equal(remove_small_components(diagonal, 4, connectivity=8), diagonal)
    assert not remove_small_components(diagonal, 5, connectivity=8).any()
    with pytest.raises(ValueError, match="connectivity must be 4 or 8"):
        remove_small_components(diagonal, 2, connectivity=6)
