"""ObjectDrop insertion: the ComfyUI-free placement math (segdrop.removal.placement) and the
SegDrop_ObjectDropInsert node's glue with a fake model (a 'shadow' below the pasted object), VAE and CLIP."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from segdrop.removal.placement import Placement, check_placement, fit_to_mask, place_object, scaled_size
from segdrop.testing import fake_comfy_models
from segdrop.testing.fake_comfy_models import FakeCLIP, FakeVAE

RED = torch.tensor([0.9, 0.1, 0.1])


def cutout(height=4, width=6, margin=2):
    """A red ``height x width`` object with a ``margin`` px empty border around it (values outside are blue)."""
    image = torch.zeros(height + 2 * margin, width + 2 * margin, 3)
    image[..., 2] = 1.0
    image[margin:margin + height, margin:margin + width] = RED
    mask = torch.zeros(image.shape[:2])
    mask[margin:margin + height, margin:margin + width] = 1
    return image, mask


def background(height=32, width=40):
    return torch.rand(height, width, 3, generator=torch.Generator().manual_seed(0))


# --- place_object -----------------------------------------------------------------------------------------------

def test_composite_values_are_exact():
    bg = background()
    obj, mask = cutout()
    composite, placed = place_object(bg, obj, mask, x=10, y=5)
    assert composite.shape == (32, 40, 3) and placed.shape == (32, 40)
    expected = bg.clone()
    expected[5:9, 10:16] = RED  # trimmed to the mask's box: the margin is not pasted
    assert torch.equal(composite, expected)
    expected_mask = torch.zeros(32, 40)
    expected_mask[5:9, 10:16] = 1
    assert torch.equal(placed, expected_mask)


def test_soft_mask_blends_linearly_and_zero_keeps_the_background():
    bg = torch.zeros(8, 8, 3)
    obj = torch.ones(2, 2, 3)
    mask = torch.tensor([[1.0, 0.5], [0.25, 0.0]])
    composite, placed = place_object(bg, obj, mask, x=3, y=4)
    assert torch.equal(composite[4:6, 3:5, 0], mask) and torch.equal(placed[4:6, 3:5], mask)
    assert torch.count_nonzero(composite) == 3 * 3  # three weighted pixels x 3 channels


def test_alpha_channels_are_ignored():
    bg = torch.cat([background(), torch.ones(32, 40, 1)], -1)
    obj, mask = cutout()
    composite, _ = place_object(bg, torch.cat([obj, torch.ones(*obj.shape[:2], 1)], -1), mask, 0, 0)
    assert composite.shape == (32, 40, 3) and torch.equal(composite[0:4, 0:6], RED.expand(4, 6, 3))


def test_scaling_resizes_the_trimmed_object():
    bg = background()
    obj, mask = cutout(4, 6)
    composite, placed = place_object(bg, obj, mask, x=1, y=2, scale=2.0)
    assert placed.sum() == 8 * 12 and torch.equal(placed[2:10, 1:13], torch.ones(8, 12))
    assert torch.allclose(composite[2:10, 1:13], RED.expand(8, 12, 3), atol=1e-6)
    assert torch.equal(composite[placed == 0], bg[placed == 0])
    _, half = place_object(bg, obj, mask, x=0, y=0, scale=0.5)
    assert torch.equal(half.nonzero().amax(0), torch.tensor([1, 2]))  # 2 x 3 px
    assert scaled_size(4, 6, 0.01) == (1, 1)


def test_object_filling_the_background_exactly_is_allowed():
    bg = background(4, 6)
    obj, mask = cutout(4, 6)
    composite, placed = place_object(bg, obj, mask, 0, 0)
    assert torch.equal(composite, RED.expand(4, 6, 3)) and bool((placed == 1).all())


@pytest.mark.parametrize("x, y, where", [(36, 5, "partly"), (10, 30, "partly"), (40, 0, "entirely"), (0, 99, "entirely")])
def test_object_outside_the_background_is_an_error_naming_the_valid_range(x, y, where):
    obj, mask = cutout(4, 6)
    with pytest.raises(ValueError) as caught:
        place_object(background(), obj, mask, x, y)
    message = str(caught.value)
    assert f"lies {where} outside the 40x32 background" in message
    assert "x must be 0..34 and y must be 0..28" in message and "placement mask" in message


def test_negative_position_is_an_error():
    obj, mask = cutout(4, 6)
    with pytest.raises(ValueError, match="partly outside"):
        place_object(background(), obj, mask, -1, 0)


def test_object_larger_than_the_background_is_an_error_naming_the_scale():
    obj, mask = cutout(4, 6)
    with pytest.raises(ValueError) as caught:
        place_object(background(), obj, mask, 0, 0, scale=10.0)
    message = str(caught.value)
    assert "60x40 (width x height) after scaling" in message and "background is only 40x32" in message
    assert "lower scale (about 0.667 x the current scale fits)" in message


def test_empty_object_mask_is_an_error_mentioning_invert_mask():
    obj, _ = cutout()
    with pytest.raises(ValueError, match="object mask is empty.*Invert Mask"):
        place_object(background(), obj, torch.zeros(obj.shape[:2]), 0, 0)


def test_mask_size_mismatch_and_bad_scale_are_errors():
    obj, mask = cutout()
    with pytest.raises(ValueError, match="object mask is 5x5 .* object image is 10x8"):
        place_object(background(), obj, torch.ones(5, 5), 0, 0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        place_object(background(), obj, mask, 0, 0, scale=0.0)


def test_check_placement_accepts_the_last_valid_corner():
    check_placement((32, 40), Placement(34, 28, 4, 6))
    with pytest.raises(ValueError):
        check_placement((32, 40), Placement(35, 28, 4, 6))


# --- fit_to_mask --------------------------------------------------------------------------------------------------

def test_fit_keeps_aspect_fills_the_limiting_side_and_centres():
    _, mask = cutout(4, 6)
    target = torch.zeros(32, 40)
    target[10:22, 4:34] = 1  # 12 high, 30 wide: height limits, scale 3 -> 12 x 18, centred horizontally
    x, y, scale = fit_to_mask(mask, target)
    assert (x, y, scale) == (4 + (30 - 18) // 2, 10, 3.0)
    composite, placed = place_object(background(), cutout(4, 6)[0], mask, x, y, scale)
    assert placed.sum() == 12 * 18 and bool((placed <= target).all())


def test_fit_with_the_width_limiting_and_a_fractional_scale():
    _, mask = cutout(4, 6)
    target = torch.zeros(32, 40)
    target[0:32, 5:14] = 1  # 9 wide: scale 1.5 -> 6 x 9, centred vertically
    x, y, scale = fit_to_mask(mask, target)
    assert (x, y, scale) == (5, 13, 1.5)
    _, placed = place_object(background(), cutout(4, 6)[0], mask, x, y, scale)
    assert bool((placed[placed > 0] == 1).all()) and placed.nonzero().amin(0).tolist() == [13, 5]
    assert bool((placed <= target).all())


def test_fit_to_an_empty_placement_mask_is_an_error():
    _, mask = cutout()
    with pytest.raises(ValueError, match="placement mask is empty"):
        fit_to_mask(mask, torch.zeros(32, 40))


# --- the node (fake model, VAE, CLIP) -----------------------------------------------------------------------------

WIDGETS = dict(seed=0, steps=2, cfg=1.0, sampler_name="euler", scheduler="normal", mask_grow=0, context=1.0,
               resolution=64, effect_threshold=0.08)


def fake_model(in_channels=9):
    return fake_comfy_models.fake_model(in_channels)


@pytest.fixture
def insert(nodes, monkeypatch):
    from segdrop.nodes import objectdrop_insert as module

    calls = []

    def shadow(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, callback):
        """The 'model': the composite's latent with the latent row just below the object darkened (a shadow)."""
        values = positive[0][1]
        assert "noise_mask" not in values and torch.count_nonzero(latent) == 0
        calls.append(dict(values=values, steps=steps))
        out = values["concat_latent_image"].clone()
        cells = F.max_pool2d(values["concat_mask"], 8) > 0.5
        below = torch.zeros_like(cells)
        below[..., 1:, :] = cells[..., :-1, :] & ~cells[..., 1:, :]
        out[:, :3] = torch.where(below, torch.zeros_like(out[:, :3]), out[:, :3])
        for step in range(steps):
            callback(step, None, None, steps)
        return out

    from segdrop.nodes import (
        objectdrop as shared,  # sample_in_crop, the crop-sample-stitch both nodes use, samples here
    )

    monkeypatch.setattr(shared, "sample", shadow)
    monkeypatch.setattr(module, "progress_and_interrupt", lambda total: (lambda offset: lambda *a: None, lambda: None))
    module.calls = calls
    return module


def run_insert(module, bg, obj, mask, x=0, y=0, scale=1.0, model=None, placement_mask=None, **widgets):
    node = module.ObjectDropInsert
    clip = FakeCLIP()
    out = node.execute(model or fake_model(), clip, FakeVAE(), bg, obj, mask, x, y, scale,
                       **{**WIDGETS, **widgets}, placement_mask=placement_mask)
    assert clip.prompts == [""]
    return out.result


def grey_background(batch=1, size=64):
    return torch.full((batch, size, size, 3), 0.5)


def red_object():
    obj, mask = cutout(16, 16, margin=4)
    return obj[None], mask[None]


def test_schema_defaults(insert):
    schema = insert.ObjectDropInsert.define_schema()
    defaults = {s.id: s.options.get("default") for s in schema.inputs}
    assert defaults["steps"] == 50 and defaults["cfg"] == 1.0 and defaults["scale"] == 1.0
    optional = [s.id for s in schema.inputs if getattr(s, "optional", False)]
    assert optional == ["placement_mask"]
    assert [s.io_type for s in schema.outputs] == ["IMAGE", "IMAGE", "MASK"]


def test_insert_adds_the_shadow_and_keeps_the_background_elsewhere(insert):
    bg = grey_background()
    obj, mask = red_object()
    result, composite, effect = run_insert(insert, bg, obj, mask, x=24, y=16)
    assert result.shape == bg.shape and composite.shape == bg.shape and effect.shape == (1, 64, 64)
    assert torch.equal(composite[0, 16:32, 24:40], RED.expand(16, 16, 3))
    assert torch.equal(composite[0, :16], bg[0, :16])
    assert bool((effect[0, 16:32, 24:40] == 1).all())
    assert float(result[0, 34:37, 26:38].max()) < 0.25  # the 'shadow' below the object (grey 0.5) was pasted
    assert float(effect[0, 34:37, 26:38].min()) > 0.5
    outside = effect == 0
    assert bool(outside.any()) and torch.equal(result[outside], bg[outside])
    values = insert.calls[0]["values"]
    assert float(values["concat_mask"].sum()) > 0 and insert.calls[0]["steps"] == 2


def test_insert_uses_the_placement_mask_and_batches(insert):
    bg = grey_background(batch=2)
    obj, mask = red_object()
    placement = torch.zeros(2, 64, 64)
    placement[0, 8:16, 8:40] = 1  # 8 high: the 16x16 object becomes 8x8, centred at columns 20..28
    placement[1, 40:64, 0:24] = 1
    result, composite, effect = run_insert(insert, bg, obj, mask, x=999, y=999, placement_mask=placement)
    assert result.shape == (2, 64, 64, 3) and len(insert.calls) == 2
    assert torch.allclose(composite[0, 8:16, 20:28], RED.expand(8, 8, 3), atol=1e-6)
    assert torch.equal(composite[0, 8:16, 8:20], bg[0, 8:16, 8:20])
    assert torch.equal(composite[1, 40:64, 0:24], RED.expand(24, 24, 3))


def test_insert_errors_are_clear(insert):
    bg = grey_background()
    obj, mask = red_object()
    with pytest.raises(ValueError, match="outside the 64x64 background: x must be 0..48"):
        run_insert(insert, bg, obj, mask, x=60, y=0)
    with pytest.raises(ValueError, match="4 input channels.*insertion checkpoint"):
        run_insert(insert, bg, obj, mask, model=fake_model(4))
    with pytest.raises(ValueError, match="object mask is empty"):
        run_insert(insert, bg, obj, torch.zeros(1, 64, 64))  # Load Image's empty 64x64 mask of an RGB picture
    with pytest.raises(ValueError, match="3 object images for 2 backgrounds"):
        run_insert(insert, grey_background(2), obj.expand(3, -1, -1, -1), mask)
    with pytest.raises(ValueError, match="background 0: .*outside"):
        run_insert(insert, grey_background(2), obj, mask, x=60)
    assert not insert.calls  # errors come before any sampling
