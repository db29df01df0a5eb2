"""ObjectDrop nodes without ComfyUI (fake comfy_api): schemas, the conditioning values, errors, and the Remove
pipeline with the sampler replaced by a fake that erases the object."""

from __future__ import annotations

import asyncio
import inspect
import logging

import pytest
import torch
import torch.nn.functional as F

from segdrop.testing import fake_comfy_models
from segdrop.testing.fake_comfy_models import FakeCLIP, FakeVAE

IDS = {"SegDrop_ObjectDropConditioning", "SegDrop_ObjectDropRemove"}
WIDGETS = dict(seed=0, steps=3, cfg=1.0, sampler_name="euler", scheduler="normal", mask_grow=0, context=1.0,
               resolution=64, effect_threshold=0.08)


def fake_model(in_channels=9):
    return fake_comfy_models.fake_model(in_channels)


def scene(size=64):
    image = torch.full((1, size, size, 3), 0.5)
    image[0, 24:40, 24:40] = torch.tensor([0.9, 0.1, 0.1])
    mask = torch.zeros(1, size, size)
    mask[0, 24:40, 24:40] = 1
    return image, mask


@pytest.fixture
def objectdrop(nodes, monkeypatch):
    from segdrop.nodes import objectdrop as module

    calls = []

    def erase(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, callback):
        """The 'model': the image latent with the masked cells set to the background (grey 0.5)."""
        values = positive[0][1]
        assert "noise_mask" not in values and torch.count_nonzero(latent) == 0
        calls.append(dict(values=values, cfg=cfg, steps=steps, negative=negative, seed=seed))
        out = values["concat_latent_image"].clone()
        cells = F.max_pool2d(values["concat_mask"], 8) > 0.5
        out[:, :3] = torch.where(cells, torch.full_like(out[:, :3], 0.5), out[:, :3])
        for step in range(steps):
            callback(step, None, None, steps)
        return out

    monkeypatch.setattr(module, "sample", erase)
    monkeypatch.setattr(module, "progress_and_interrupt", lambda total: (lambda offset: lambda *a: None, lambda: None))
    module.calls = calls
    return module


def test_schemas_ids_tooltips_and_arguments(nodes):
    classes = asyncio.run(asyncio.run(nodes.comfy_entrypoint()).get_node_list())
    ours = [cls for cls in classes if cls.define_schema().node_id in IDS]
    assert {cls.define_schema().node_id for cls in ours} == IDS
    for cls in ours:
        schema = cls.define_schema()
        assert schema.description and schema.category == "SegDrop"
        for socket in schema.inputs + schema.outputs:
            assert socket.tooltip, f"{schema.node_id}: {socket.id or socket.options} has no tooltip"
        assert [s.id for s in schema.inputs] == list(inspect.signature(cls.execute).parameters)


def test_remove_schema_defaults(objectdrop):
    schema = objectdrop.ObjectDropRemove.define_schema()
    defaults = {s.id: s.options.get("default") for s in schema.inputs}
    assert defaults["steps"] == 50 and defaults["cfg"] == 1.0 and defaults["resolution"] == 512
    assert [s.io_type for s in schema.outputs] == ["IMAGE", "MASK", "IMAGE"]
    conditioning = objectdrop.ObjectDropConditioning.define_schema()
    assert [s.io_type for s in conditioning.outputs] == ["CONDITIONING", "CONDITIONING", "LATENT"]


def test_conditioning_uses_the_ungrayed_image_and_sets_no_noise_mask(objectdrop):
    image, mask = scene()
    vae = FakeVAE()
    positive = [[torch.ones(1, 77, 768), {"pooled_output": torch.ones(1, 768)}]]
    negative = [[torch.zeros(1, 77, 768), {}]]
    out_pos, out_neg, latent = objectdrop.ObjectDropConditioning.execute(positive, negative, vae, image, mask).result
    expected = FakeVAE().encode(image)  # the photo as it is: the object is not grayed out
    for cond, original in ((out_pos, positive), (out_neg, negative)):
        values = cond[0][1]
        assert torch.equal(values["concat_latent_image"], expected)
        cells = F.max_pool2d(mask[:, None], 8)  # a latent cell is masked when any of its pixels is
        assert torch.equal(values["concat_mask"], F.interpolate(cells, scale_factor=8, mode="nearest"))
        assert cond[0][0] is original[0][0] and "concat_mask" not in original[0][1]  # the input is not modified
    assert torch.equal(vae.encoded[0], image)
    assert set(latent) == {"samples"} and torch.equal(latent["samples"], torch.zeros_like(expected))


def test_conditioning_crops_to_multiples_of_8_like_inpaint_conditioning(objectdrop):
    image = torch.rand(1, 70, 67, 3)
    vae = FakeVAE()
    cond = [[torch.zeros(1), {}]]
    out, _, latent = objectdrop.ObjectDropConditioning.execute(cond, cond, vae, image, torch.ones(70, 67)).result
    assert torch.equal(vae.encoded[0], image[:, 3:67, 1:65])
    assert tuple(out[0][1]["concat_mask"].shape) == (1, 1, 64, 64) and latent["samples"].shape[-2:] == (8, 8)


def run_remove(module, image, mask, model=None, **widgets):
    arguments = {**WIDGETS, **widgets}
    return module.ObjectDropRemove.execute(model or fake_model(), FakeCLIP(), FakeVAE(), image, mask, **arguments).result


def test_remove_erases_the_object_and_keeps_the_rest_exactly(objectdrop):
    image, mask = scene()
    result, effect, preview = run_remove(objectdrop, image, mask)
    assert result.shape == image.shape and effect.shape == mask.shape
    assert torch.allclose(result[0, 24:40, 24:40], torch.full((16, 16, 3), 0.5))  # the object is gone
    outside = effect == 0
    assert outside.any() and torch.equal(result[outside], image[outside])
    assert torch.all(effect[mask > 0.5] == 1)
    assert preview.shape[0] == 1 and preview.shape[-1] == 3 and preview.shape[1] == 64 and preview.shape[2] % 3 == 0  # crop | output | mask
    call = objectdrop.calls[0]
    assert call["cfg"] == 1.0 and call["steps"] == 3
    assert torch.equal(call["values"]["concat_mask"].amax(), torch.tensor(1.0))


def test_remove_batches_with_one_mask_or_one_per_image(objectdrop):
    image, mask = scene()
    images = torch.cat([image, image.flip(2)])
    result, effect, preview = run_remove(objectdrop, images, mask)
    assert result.shape == images.shape and effect.shape == (2, 64, 64) and preview.shape[0] == 2
    masks = torch.cat([mask, mask.flip(2)])
    result, effect, _ = run_remove(objectdrop, images, masks)
    assert torch.allclose(result[1, 24:40, 24:40], torch.full((16, 16, 3), 0.5))
    assert len(objectdrop.calls) == 4


def test_empty_mask_returns_the_image_unchanged_with_a_warning(objectdrop, caplog):
    image, _ = scene()
    with caplog.at_level(logging.WARNING, logger="segdrop"):
        result, effect, _ = run_remove(objectdrop, image, torch.zeros(1, 64, 64))
    assert torch.equal(result, image) and torch.count_nonzero(effect) == 0
    assert "mask is empty" in caplog.text and not objectdrop.calls
    # Load Image's MASK for a picture without alpha is a 64x64 zero mask whatever the image size: also empty.
    result, effect, _ = run_remove(objectdrop, image[:, :48, :40], torch.zeros(1, 64, 64))
    assert torch.equal(result, image[:, :48, :40]) and effect.shape == (1, 48, 40)


def test_text_to_image_model_is_refused(objectdrop):
    image, mask = scene()
    with pytest.raises(ValueError, match=r"load an SD inpainting checkpoint \(9 input channels\) and the removal LoRA"):
        run_remove(objectdrop, image, mask, model=fake_model(4))
    assert not objectdrop.calls


def test_size_and_batch_mismatches_are_clear(objectdrop):
    image, mask = scene()
    with pytest.raises(ValueError, match=r"mask is 32x32 .* image is 64x64.*resize"):
        run_remove(objectdrop, image, torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        run_remove(objectdrop, image.expand(2, -1, -1, -1), mask.expand(3, -1, -1))
