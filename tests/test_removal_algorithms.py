"""segdrop.removal without ComfyUI: crop box, working size, stitch and the effect-aware composite mask."""

from __future__ import annotations

import pytest
import torch

from segdrop.removal import (
    CropBox,
    changed_region,
    conditioning_set_values,
    crop,
    crop_box,
    dilate,
    effect_mask,
    mask_bbox,
    stitch,
    working_size,
)


def square_mask(h=100, w=120, top=30, left=40, size=20) -> torch.Tensor:
    mask = torch.zeros(h, w)
    mask[top : top + size, left : left + size] = 1
    return mask


def test_mask_bbox_is_tight_and_none_for_empty():
    assert mask_bbox(square_mask()) == CropBox(30, 40, 50, 60)
    assert mask_bbox(torch.zeros(8, 8)) is None


@pytest.mark.parametrize("context", [0.0, 0.5, 1.0, 3.0, 50.0])
@pytest.mark.parametrize("where", [(30, 40), (0, 0), (80, 100), (0, 100), (80, 0)])
def test_crop_box_contains_the_mask_and_stays_in_bounds(context, where):
    mask = square_mask(top=where[0], left=where[1])
    box = crop_box(mask, context)
    tight = mask_bbox(mask)
    assert 0 <= box.top <= tight.top and 0 <= box.left <= tight.left
    assert tight.bottom <= box.bottom <= 100 and tight.right <= box.right <= 120
    assert crop(mask[..., None], box).sum() == mask.sum()  # the whole mask is inside


def test_crop_box_grows_more_below_than_above():
    box = crop_box(square_mask(h=200, w=200, top=80, left=80, size=40), context=1.0)
    above, below = 80 - box.top, box.bottom - 120
    assert below > above and below == 28 and above == 12
    assert 80 - box.left == box.right - 120 == 20  # half the width on each side
    assert crop_box(torch.zeros(10, 10)) is None
    with pytest.raises(ValueError):
        crop_box(square_mask(), -1)


@pytest.mark.parametrize("where", [(30, 40), (0, 0), (80, 100), (45, 0)])
def test_square_box_is_square_holds_the_mask_and_stays_in_bounds(where):
    from segdrop.removal.crop import square_box

    mask = square_mask(top=where[0], left=where[1])  # 20 px object in a 100 x 120 image
    box = square_box(mask, 1.0)
    assert box.height == box.width == 40  # (1 + context) x the long side
    assert 0 <= box.top and box.bottom <= 100 and 0 <= box.left and box.right <= 120
    assert crop(mask[..., None], box).sum() == mask.sum()
    if where == (30, 40):  # room on every side: centred on the object
        assert box == CropBox(20, 30, 60, 70)
    big = square_box(mask, 9.0)  # 200 px asked: the largest square that fits, still holding the object
    assert big.height == big.width == 100 and big.top == 0 and 0 <= big.left <= 20
    assert crop(mask[..., None], big).sum() == mask.sum()
    assert square_box(torch.zeros(10, 10), 1.0) is None
    with pytest.raises(ValueError, match="context"):
        square_box(mask, -0.5)


def test_full_image_mask_crops_everything():
    assert crop_box(torch.ones(33, 47), 1.0) == CropBox(0, 0, 33, 47)


@pytest.mark.parametrize("size,expected", [((100, 200), (256, 512)), ((512, 512), (512, 512)), ((37, 300), (64, 512)),
                                           ((3, 1000), (8, 512))])
def test_working_size_long_side_and_multiples_of_8(size, expected):
    h, w = working_size(*size, resolution=512)
    assert (h, w) == expected and h % 8 == 0 and w % 8 == 0


def test_stitch_of_an_identity_result_reproduces_the_input_exactly():
    torch.manual_seed(0)
    image = torch.rand(2, 100, 120, 3)
    box = crop_box(square_mask(), 1.0)
    for mask in (None, torch.rand(box.height, box.width), torch.ones(box.height, box.width)):
        assert torch.equal(stitch(image, crop(image, box).clone(), box, mask), image)


def test_stitch_pastes_inside_the_mask_only():
    image = torch.zeros(1, 40, 40, 3)
    box = CropBox(10, 10, 30, 30)
    mask = torch.zeros(20, 20)
    mask[5:10, 5:10] = 1
    out = stitch(image, torch.ones(1, 20, 20, 3), box, mask)
    assert out.sum() == 25 * 3 and torch.equal(out[0, 15:20, 15:20], torch.ones(5, 5, 3))
    assert image.sum() == 0  # the input is not modified
    with pytest.raises(ValueError, match="box"):
        stitch(image, torch.ones(1, 5, 5, 3), box)


def scene():
    """A 64x64 grey scene with an object (rows 10-29) and its shadow below (rows 30-39); output: both gone,
    plus a one-pixel speck far away and VAE-like noise everywhere."""
    torch.manual_seed(0)
    before = torch.full((64, 64, 3), 0.5)
    before[10:30, 20:40] = torch.tensor([0.9, 0.1, 0.1])
    before[30:40, 18:44] = 0.2  # shadow
    after = torch.full((64, 64, 3), 0.5) + 0.02 * torch.randn(64, 64, 3)
    after[60, 2] = 1.0  # an isolated speck: a component smaller than min_area
    obj = torch.zeros(64, 64)
    obj[10:30, 20:40] = 1
    return before, after, obj


def test_effect_mask_contains_object_and_changed_region_not_far_unchanged_pixels():
    before, after, obj = scene()
    mask = effect_mask(before, after, obj, grow=2, feather=2)
    assert mask.shape == (64, 64) and mask.min() >= 0 and mask.max() <= 1
    assert torch.all(mask[obj > 0.5] == 1)
    assert torch.all(mask[30:40, 18:44] == 1)  # the removed shadow, outside the object mask
    assert torch.all(mask[:5] == 0) and torch.all(mask[50:] == 0) and torch.all(mask[:, 50:] == 0)
    assert mask[60, 2] == 0  # the speck was dropped
    # Soft edge: values between 0 and 1 just outside the union.
    assert 0 < float(mask[42, 30]) < 1


def test_effect_mask_keeps_the_object_even_when_nothing_changed_and_batches():
    before, _, obj = scene()
    mask = effect_mask(before[None].expand(2, -1, -1, -1), before[None].expand(2, -1, -1, -1), obj[None].expand(2, -1, -1))
    assert mask.shape == (2, 64, 64) and torch.all(mask[:, obj > 0.5] == 1)
    assert torch.all(mask[:, 50:] == 0)


def test_changed_region_threshold_and_min_area():
    before = torch.zeros(20, 20, 3)
    after = before.clone()
    after[2:8, 2:8] = 0.5
    after[15, 15] = 0.5
    after[10:12, 10:12] = 0.05  # below the threshold
    region = changed_region(before, after, threshold=0.08, min_area=4)
    assert region.sum() == 36 and region[2:8, 2:8].all()
    assert changed_region(before, after, threshold=0.08, min_area=1).sum() == 37


def test_dilate_grows_by_pixels():
    mask = torch.zeros(9, 9)
    mask[4, 4] = 1
    assert dilate(mask, 2).sum() == 25 and dilate(mask, 0) is mask


def test_conditioning_set_values_copies():
    cond = [[torch.zeros(1), {"pooled_output": 1}]]
    out = conditioning_set_values(cond, {"concat_mask": 2})
    assert out[0][1] == {"pooled_output": 1, "concat_mask": 2} and cond[0][1] == {"pooled_output": 1}


def test_the_concat_mask_marks_whole_latent_cells_that_comfyui_keeps():
    """A 2-px line: ComfyUI's bilinear shrink + round of the raw mask loses it; of the cell mask it keeps every cell
    the line touches, the max-pool rule the removal recipe trains with."""
    import torch.nn.functional as F

    from segdrop.removal.conditioning import latent_cell_mask

    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 20:22, 3:61] = 1
    comfy_shrink = lambda m: F.interpolate(m, size=(8, 8), mode="bilinear").round()  # noqa: E731  (concat_cond)
    assert comfy_shrink(mask).sum() == 0
    cells = latent_cell_mask(mask)
    assert torch.equal(comfy_shrink(cells), F.max_pool2d(mask, 8))
    assert cells.shape == mask.shape and bool((cells >= mask).all())


def test_edge_taper_fades_out_only_at_crop_sides_inside_the_image():
    from segdrop.removal.crop import CropBox, edge_taper, stitch

    box = CropBox(top=4, left=0, bottom=20, right=16)  # left side on the image border, the others inside
    taper = edge_taper(box, (32, 16), width=4)
    assert taper.shape == (16, 16) and float(taper[8, 8]) == 1.0
    assert bool((taper[0] == 0).all()) and bool((taper[-1] == 0).all())  # top and bottom: inside the image
    assert float(taper[8, 0]) == 1.0 and float(taper[8, -1]) == 1.0  # left: the image border; right: the border too
    original = torch.rand(1, 32, 16, 3)
    out = stitch(original, torch.zeros(1, 16, 16, 3), box, taper[None])
    assert torch.equal(out[0, 4], original[0, 4]) and torch.equal(out[0, 19], original[0, 19])  # no seam rows


def test_stitch_effects_pastes_the_object_and_the_change_fading_at_inner_crop_sides_and_keeps_alpha():
    from segdrop.removal import stitch_effects
    from segdrop.removal.crop import CropBox

    photo = torch.full((1, 32, 32, 4), 0.5)
    photo[..., 3] = 0.25  # an alpha channel the stitch must keep
    box = CropBox(top=8, left=0, bottom=24, right=16)  # the left side lies on the image border
    back = torch.full((1, 16, 16, 3), 0.5)
    back[:, :, :4] = 0.0  # a change reaching the top/bottom crop sides (inside the image) and the left border
    back[:, 6:10, 8:12] = 0.9  # the object's pixels
    object_mask = torch.zeros(1, 16, 16)
    object_mask[:, 6:10, 8:12] = 1
    out, weights = stitch_effects(photo, back, box, threshold=0.1, min_area=1, grow=1, feather=1,
                                  object_mask=object_mask)
    assert out.shape == photo.shape and torch.equal(out[..., 3], photo[..., 3])
    assert bool((weights[0, 6:10, 8:12] == 1).all()) and torch.allclose(out[0, 14:18, 8:12, :3], torch.tensor(0.9))
    assert bool((weights[0, 0] == 0).all()) and bool((weights[0, -1] == 0).all())  # faded at the inner sides
    assert float(weights[0, 8, 0]) == 1.0 and float(out[0, 16, 0, 0]) == 0.0  # full at the image border
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[8:24, :16] = False
    assert torch.equal(out[0][outside], photo[0][outside])


def test_paste_effects_takes_plain_uint8_arrays_and_keeps_untouched_pixels_exactly():
    import numpy as np

    from segdrop.removal import paste_effects

    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, (2, 24, 24, 3), dtype=np.uint8)
    after = before.copy()
    after[:, 4:8, 4:8] = 0  # the object region
    after[:, 12:18, 4:10] = before[:, 12:18, 4:10] // 2  # a removed shadow: a large change away from the object
    after[:, 20:, 20:] = np.clip(before[:, 20:, 20:].astype(int) + 3, 0, 255)  # regeneration noise below threshold
    masks = np.zeros((2, 24, 24), bool)
    masks[:, 4:8, 4:8] = True
    out = paste_effects(before, after, masks, threshold=0.08, min_area=4, grow=1, feather=1)
    assert out.dtype == np.uint8 and out.shape == before.shape
    assert np.array_equal(out[:, 4:8, 4:8], after[:, 4:8, 4:8])
    assert np.array_equal(out[:, 13:17, 5:9], after[:, 13:17, 5:9])  # the shadow's inside comes from the output
    assert np.array_equal(out[:, 20:, 20:], before[:, 20:, 20:])  # small changes far away keep the input exactly
    assert np.array_equal(paste_effects(before[0], after[0], masks[0], 0.08, 4, 1, 1), out[0])
