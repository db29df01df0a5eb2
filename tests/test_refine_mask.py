"""The refined mask M = up(M_pre) AND g(|x - x̂|), checked bit for bit against a reference written here."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage
from sklearn.mixture import GaussianMixture

from segdrop.segment import difference_image, postprocess_mask, refine_mask, upsample_prelim

# ------------------------------------------------------------------------------------------------ reference


def ref_bilinear_nonzero(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (align_corners=False, edge-clamped) resize in float64, then nonzero -> True."""

    def axis(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = np.floor(src).astype(int)
        hi = np.minimum(lo + 1, n_in - 1)
        return lo, hi, src - lo

    rl, rh, rw = axis(mask.shape[0], size[0])
    cl, ch, cw = axis(mask.shape[1], size[1])
    m = mask.astype(np.float64)
    top = m[rl][:, cl] * (1 - cw) + m[rl][:, ch] * cw
    bottom = m[rh][:, cl] * (1 - cw) + m[rh][:, ch] * cw
    return (top * (1 - rw[:, None]) + bottom * rw[:, None]) != 0


def ref_majority(mask: np.ndarray) -> np.ndarray:
    """Interior pixels: at least 5 of the 3x3 box; the border keeps its value."""
    out = mask.copy()
    h, w = mask.shape
    counts = sum(mask[1 + dy:h - 1 + dy, 1 + dx:w - 1 + dx].astype(int) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    out[1:-1, 1:-1] = counts >= 5
    return out


def ref_refine(image: np.ndarray, inpainted: np.ndarray, prelim: np.ndarray) -> np.ndarray:
    d = np.abs(image.astype(np.float64) / 255 - inpainted.astype(np.float64) / 255).mean(-1)
    gmm = GaussianMixture(n_components=2, random_state=0).fit(d.reshape(-1, 1))
    changed = ref_majority(d > np.mean(gmm.means_))
    return ref_bilinear_nonzero(prelim, d.shape) & changed


def scene(seed: int = 0):
    """16x16: noisy background, a 6x6 object at rows/cols 5..10; the inpainting repaints it as background
    with small codec-like noise everywhere; M_pre covers latent cells 1..2 of a 4x4 grid (pixels 4..11)."""
    rng = np.random.default_rng(seed)
    background = rng.integers(90, 110, (16, 16, 3))
    image = background.copy()
    image[5:11, 5:11] = (220, 30, 30)
    inpainted = np.clip(background + rng.integers(-3, 4, (16, 16, 3)), 0, 255)
    prelim = np.zeros((4, 4), bool)
    prelim[1:3, 1:3] = True
    return image.astype(np.uint8), inpainted.astype(np.uint8), prelim


# ------------------------------------------------------------------------------------------------ tests


def test_refined_mask_matches_the_reference_exactly():
    for seed in range(3):
        image, inpainted, prelim = scene(seed)
        got = refine_mask(image, inpainted, prelim)
        assert got.dtype == bool and got.shape == (16, 16)
        np.testing.assert_array_equal(got, ref_refine(image, inpainted, prelim))
        truth = np.zeros((16, 16), bool)
        truth[5:11, 5:11] = True
        truth[[5, 5, 10, 10], [5, 10, 5, 10]] = False  # the 5-of-9 majority filter rounds the corners
        np.testing.assert_array_equal(got, truth)  # the object, and only the object, changed


def test_refinement_cuts_what_the_prelim_does_not_cover():
    image, inpainted, _ = scene()
    prelim = np.zeros((4, 4), bool)
    prelim[1, 1] = True  # covers pixels 2..9 after the half-cell dilation
    got = refine_mask(image, inpainted, prelim)
    np.testing.assert_array_equal(got, ref_refine(image, inpainted, prelim))
    expected = np.zeros((16, 16), bool)
    expected[5:10, 5:10] = True
    expected[5, 5] = False  # an object corner, removed by the majority filter
    np.testing.assert_array_equal(got, expected)


def test_difference_image_is_the_mean_absolute_rgb_difference():
    a = np.zeros((2, 2, 3), np.uint8)
    b = a.copy()
    b[0, 0] = (255, 0, 0)
    b[1, 1] = (51, 51, 51)
    d = difference_image(a, b)
    assert d.dtype == np.float32
    np.testing.assert_allclose(d, [[1 / 3, 0], [0, 0.2]], rtol=1e-6)
    np.testing.assert_allclose(difference_image(a.astype(np.float32), b / 255.0), d, rtol=1e-6)


def test_upsampling_dilates_by_half_a_latent_cell():
    prelim = np.zeros((4, 4), bool)
    prelim[1, 2] = True  # pixels rows 4..7, cols 8..11 with nearest upsampling
    got = upsample_prelim(prelim, (16, 16))
    expected = np.zeros((16, 16), bool)
    expected[2:10, 6:14] = True  # 2 px (half of the 4 px cell) on every side
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(got, ref_bilinear_nonzero(prelim, (16, 16)))
    corner = np.zeros((4, 4), bool)
    corner[0, 0] = True
    expected = np.zeros((16, 16), bool)
    expected[:6, :6] = True  # clamped at the image border
    np.testing.assert_array_equal(upsample_prelim(corner, (16, 16)), expected)
    factor2 = upsample_prelim(prelim, (8, 8))
    expected = np.zeros((8, 8), bool)
    expected[1:5, 3:7] = True  # factor 2 (cell = rows 2..3, cols 4..5): one pixel
    np.testing.assert_array_equal(factor2, expected)
    np.testing.assert_array_equal(upsample_prelim(prelim, (4, 4)), prelim)
    rng = np.random.default_rng(1)
    for _ in range(5):
        random = rng.random((8, 8)) > 0.7
        np.testing.assert_array_equal(upsample_prelim(random, (64, 64)), ref_bilinear_nonzero(random, (64, 64)))


def test_empty_prelim_gives_an_empty_mask():
    image, inpainted, prelim = scene()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = refine_mask(image, inpainted, np.zeros_like(prelim))
    assert got.shape == (16, 16) and not got.any()


def test_identical_inpainting_gives_an_empty_mask_with_a_warning():
    image, _, prelim = scene()
    with pytest.warns(RuntimeWarning, match="fewer than 2 distinct values"):
        got = refine_mask(image, image.copy(), prelim)
    assert not got.any()


def test_postprocess_closes_and_fills_holes():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:11] = True
    mask[:, 5] = False  # a 1-px gap: the cross closing bridges it except at its two open ends
    mask[4:7, 7:10] = False  # a 3x3 hole: too big for the closing, filled by binary_fill_holes
    got = postprocess_mask(mask)
    expected = np.zeros((12, 12), bool)
    expected[2:10, 2:11] = True
    expected[[2, 9], 5] = False
    np.testing.assert_array_equal(got, expected)
    cross = ndimage.generate_binary_structure(2, 1)
    np.testing.assert_array_equal(got, ndimage.binary_fill_holes(ndimage.binary_closing(mask, cross)))


def test_postprocess_border_quirk_and_padding():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # touches the top-left border
    paper = postprocess_mask(mask)
    assert not paper[0].any() and not paper[:, 0].any()  # scipy's border_value=0 erodes the edge (as the paper)
    np.testing.assert_array_equal(postprocess_mask(mask, pad_border=True), mask)


def test_refine_with_postprocess_fills_an_unchanged_hole():
    rng = np.random.default_rng(3)
    background = rng.integers(90, 110, (16, 16, 3))
    image = background.copy()
    image[3:13, 3:13] = (30, 200, 30)
    image[6:9, 6:9] = background[6:9, 6:9]  # a 3x3 see-through hole: the inpainting leaves it unchanged
    inpainted = np.clip(background + rng.integers(-3, 4, (16, 16, 3)), 0, 255).astype(np.uint8)
    image = image.astype(np.uint8)
    prelim = np.ones((4, 4), bool)
    raw = refine_mask(image, inpainted, prelim)
    np.testing.assert_array_equal(raw, ref_refine(image, inpainted, prelim))
    assert not raw[7, 7]
    post = refine_mask(image, inpainted, prelim, postprocess=True)
    np.testing.assert_array_equal(post, postprocess_mask(raw))
    expected = np.zeros((16, 16), bool)
    expected[3:13, 3:13] = True
    expected[[3, 3, 12, 12], [3, 12, 3, 12]] = False  # corners: majority filter
    np.testing.assert_array_equal(post, expected)


def test_bad_inputs_are_clear_errors():
    image, inpainted, prelim = scene()
    with pytest.raises(ValueError, match="decode the inpainting at the image's size"):
        refine_mask(image, inpainted[:8], prelim)
    with pytest.raises(ValueError, match="not larger than the image"):
        refine_mask(image, inpainted, np.zeros((32, 32), bool))
    with pytest.raises(ValueError, match=r"not within \[0, 1\]"):
        difference_image(image.astype(np.float32), inpainted)
    with pytest.raises(TypeError, match="uint8"):
        difference_image(image.astype(np.int16), inpainted)
    with pytest.raises(ValueError, match="binary mask"):
        upsample_prelim(np.full((4, 4), 0.3), (16, 16))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        difference_image(image[..., 0], inpainted[..., 0])
    np.testing.assert_array_equal(refine_mask(image, inpainted, prelim.astype(np.uint8)), refine_mask(image, inpainted, prelim))
