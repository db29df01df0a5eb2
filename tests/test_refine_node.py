"""Background Inpaint Refine without ComfyUI: the re-noising DDIM sampler (``distill.renoise_sampler``) with fake
denoisers, and the node glue (fake comfy_api) with the sampling replaced by a fake m′ that paints the generated
cells grey."""

from __future__ import annotations

import inspect
import logging

import pytest
import torch
import torch.nn.functional as F

from segdrop.distill.renoise_sampler import ancestral_step, ddim_renoise
from segdrop.testing.fake_comfy_models import FakeCLIP, FakeVAE, fake_model

NODE_ID = "SegDrop_BackgroundInpaintRefine"
WIDGETS = dict(prompt="a photo of a background", seed=0, steps=3, eta=0.0, postprocess=False)


# ---------------------------------------------------------------------------------------------- the sampler


def schedule(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def scene_latent(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x0 target, known latent, known mask): the known region is the left half of a 1x4x6x8 latent."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(1, 4, 6, 8, generator=g)
    keep = torch.zeros(1, 1, 6, 8)
    keep[..., :4] = 1
    return target, target.clone(), keep


def draws(seed: int, shape, count: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) for _ in range(count)]


def test_known_region_is_renoised_with_fresh_noise_before_every_step():
    target, known, keep = scene_latent()
    sigmas = schedule(10.0, 4.0, 1.5, 0.5, 0.0)
    seen = []

    def denoise(x, sigma):
        seen.append((x.clone(), float(sigma)))
        return torch.zeros_like(x)  # a bad model: the known region must not care

    start = torch.randn(target.shape, generator=torch.Generator().manual_seed(99)) * 10.0
    ddim_renoise(denoise, start, sigmas, known, keep, torch.Generator().manual_seed(7))
    expected_noise = draws(7, known.shape, 4)  # eta 0: exactly one draw per step, for the known region
    left = keep.expand_as(known) > 0.5
    assert len(seen) == 4
    for (x, sigma), eps, s in zip(seen, expected_noise, sigmas[:-1]):
        assert sigma == pytest.approx(float(s))
        assert torch.allclose(x[left], (known + s * eps)[left], atol=1e-6)
    assert torch.equal(seen[0][0][~left], start[~left])  # the generated region starts from the given x_T
    for a, b in zip(expected_noise, expected_noise[1:]):
        assert not torch.allclose(a, b)  # fresh noise each step, not one noise reused


def test_eta0_with_a_perfect_denoiser_returns_x0_and_keeps_the_noise_direction():
    target, known, keep = scene_latent()
    eps = torch.randn(target.shape, generator=torch.Generator().manual_seed(3))
    sigmas = schedule(12.0, 6.0, 2.0, 0.3, 0.0)
    out = ddim_renoise(lambda x, s: target, target + 12.0 * eps, sigmas, known, keep, torch.Generator().manual_seed(1))
    assert torch.equal(out, target)
    # A schedule that stops above 0: deterministic DDIM moves along the start noise, x = x0 + sigma_end * eps.
    out = ddim_renoise(lambda x, s: target, target + 12.0 * eps, sigmas[:-1], known, keep,
                       torch.Generator().manual_seed(1))
    generated = keep.expand_as(target) < 0.5
    assert torch.allclose(out[generated], (target + 0.3 * eps)[generated], atol=1e-5)


def test_eta_step_is_compvis_ddim_in_vp_form():
    """One step with eta: k-diffusion form x = x0 + sigma * eps equals CompVis DDIM on x_vp = sqrt(a) x."""
    sigma, sigma_next, eta = 5.0, 2.0, 0.7
    x0 = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(5))
    eps = torch.randn(1, 4, 3, 3, generator=torch.Generator().manual_seed(6))
    nothing_known = torch.zeros(1, 1, 3, 3)
    out = ddim_renoise(lambda x, s: x0, x0 + sigma * eps, schedule(sigma, sigma_next), x0, nothing_known,
                       torch.Generator().manual_seed(11), eta=eta)
    _, z = draws(11, x0.shape, 2)  # the step's known-region draw, then the ancestral noise
    a_t, a_prev = 1 / (1 + sigma**2), 1 / (1 + sigma_next**2)
    sigma_t = eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5
    x_prev = a_prev**0.5 * x0 + (1 - a_prev - sigma_t**2) ** 0.5 * eps + sigma_t * z
    assert torch.allclose(out, x_prev / a_prev**0.5, atol=1e-5)
    down, up = ancestral_step(sigma, sigma_next, 0.0)
    assert (down, up) == (sigma_next, 0.0)


def test_same_seed_same_output_other_seed_other_output():
    target, known, keep = scene_latent()

    def denoise(x, sigma):
        return 0.5 * x / (1 + float(sigma))

    start = torch.randn(target.shape, generator=torch.Generator().manual_seed(0)) * 8
    sigmas = schedule(8.0, 3.0, 1.0, 0.0)
    runs = [ddim_renoise(denoise, start, sigmas, known, keep, torch.Generator().manual_seed(s), eta=0.5)
            for s in (4, 4, 5)]
    assert torch.equal(runs[0], runs[1]) and not torch.allclose(runs[0], runs[2])


def test_callback_gets_k_diffusion_dicts():
    target, known, keep = scene_latent()
    calls = []
    ddim_renoise(lambda x, s: target, target, schedule(3.0, 1.0, 0.0), known, keep, torch.Generator().manual_seed(0),
                 callback=calls.append)
    assert [c["i"] for c in calls] == [0, 1]
    assert all(torch.equal(c["denoised"], target) and {"x", "sigma", "sigma_hat"} <= set(c) for c in calls)


# ---------------------------------------------------------------------------------------------- the node glue




def square_found(size=64) -> torch.Tensor:
    """The red square as GMM(D) finds it: the 3x3 majority filter drops its 4 corner pixels."""
    found = torch.zeros(1, size, size)
    found[0, 24:40, 24:40] = 1
    found[0, [24, 24, 39, 39], [24, 39, 24, 39]] = 0
    return found


def scene(size=64, batch=1):
    """Grey with a red square (24..40); M_pre over-covers it (16..48), as the paper's preliminary mask does."""
    image = torch.full((batch, size, size, 3), 0.5)
    image[:, 24:40, 24:40] = torch.tensor([0.9, 0.1, 0.1])
    prelim = torch.zeros(1, size, size)
    prelim[0, 16:48, 16:48] = 1
    return image, prelim


@pytest.fixture
def refine(nodes, monkeypatch):
    from segdrop.nodes import refine as module

    calls = []

    def paint_grey(model, positive, latent, keep, sigmas, seed, eta, callback):
        """The 'm′': generated cells become the grey background; known cells stay."""
        calls.append(dict(latent=latent.clone(), keep=keep.clone(), seed=seed, eta=eta, sigmas=sigmas,
                          positive=positive))
        out = latent.clone()
        out[:, :3] = torch.where(keep > 0.5, out[:, :3], torch.full_like(out[:, :3], 0.5))
        for step in range(len(sigmas) - 1):
            callback(step, None, None, len(sigmas) - 1)
        return out

    progress = {}

    def fake_progress(total):
        progress["total"] = total
        progress["steps"] = []
        return (lambda offset: lambda step, *a: progress["steps"].append(offset + step + 1)), lambda: None

    monkeypatch.setattr(module, "inpaint_background", paint_grey)
    monkeypatch.setattr(module, "ddim_sigmas", lambda model, steps: torch.linspace(10, 0, steps + 1))
    monkeypatch.setattr(module, "progress_and_interrupt", fake_progress)
    module.calls, module.progress = calls, progress
    return module


def run(module, image, mask, model=None, vae=None, clip=None, **widgets):
    arguments = {**WIDGETS, **widgets}
    return module.BackgroundInpaintRefine.execute(model or fake_model(), clip or FakeCLIP(), vae or FakeVAE(), image,
                                                  mask, **arguments).result


def test_schema_ids_tooltips_defaults_and_arguments(refine, nodes):
    import asyncio

    classes = asyncio.run(asyncio.run(nodes.comfy_entrypoint()).get_node_list())
    assert refine.BackgroundInpaintRefine in classes
    schema = refine.BackgroundInpaintRefine.define_schema()
    assert schema.node_id == NODE_ID and schema.category == "SegDrop" and schema.description
    for socket in schema.inputs + schema.outputs:
        assert socket.tooltip, f"{socket.id or socket.options} has no tooltip"
    assert [s.id for s in schema.inputs] == list(inspect.signature(refine.BackgroundInpaintRefine.execute).parameters)
    defaults = {s.id: s.options.get("default") for s in schema.inputs}
    assert defaults["prompt"] == "a photo of a background" and defaults["steps"] == 50
    assert defaults["eta"] == 0.0 and defaults["postprocess"] is False
    assert [s.io_type for s in schema.outputs] == ["MASK", "IMAGE", "IMAGE"]


def test_refined_mask_is_what_changed_inside_the_preliminary_mask(refine):
    image, prelim = scene()
    clip = FakeCLIP()
    mask, background, difference = run(refine, image, prelim, clip=clip, seed=5, eta=0.3)
    assert torch.equal(mask, square_found())
    assert torch.allclose(background, torch.full_like(image, 0.5))  # the fake m′ painted the object away
    assert difference.shape == (1, 64, 64, 3) and torch.equal(difference[..., 0], difference[..., 2])
    assert torch.allclose(difference[..., 0], (image - background).abs().mean(-1))
    call = refine.calls[0]
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[2:6, 2:6] = True
    assert torch.equal(call["keep"], (~cells).float()[None, None])  # 1 = background kept, 0 = M_pre
    assert call["seed"] == 5 and call["eta"] == 0.3 and len(call["sigmas"]) == 4
    assert clip.prompts == ["a photo of a background"]
    assert refine.progress == {"total": 3, "steps": [1, 2, 3]}


def test_mask_sizes_map_to_the_latent_grid(refine):
    image, prelim = scene()
    grid = F.max_pool2d(prelim[:, None], 8)[:, 0]
    half = F.interpolate(prelim[:, None], size=(32, 32), mode="nearest")[:, 0]
    for mask in (prelim, prelim[0], grid, half):
        assert torch.equal(refine.preliminary_cells(image, mask, 8), grid > 0.5)
    one_pixel = torch.zeros(1, 64, 64)
    one_pixel[0, 9, 17] = 1  # any pixel of a cell makes the cell foreground (M_pre over-covers on purpose)
    cells = refine.preliminary_cells(image, one_pixel, 8)
    assert cells.sum() == 1 and bool(cells[0, 1, 2])


def test_mask_of_another_shape_is_refused_with_the_fix(refine):
    image, _ = scene()
    with pytest.raises(ValueError, match="mask is 64x32 .* image is 64x64.*resize"):
        run(refine, image, torch.ones(1, 32, 64))
    with pytest.raises(ValueError, match="3 masks for 2 images"):
        run(refine, image.expand(2, -1, -1, -1), torch.ones(3, 64, 64))


def test_empty_preliminary_mask_returns_the_image_and_warns(refine, caplog):
    image, _ = scene()
    with caplog.at_level(logging.WARNING, logger="segdrop"):
        mask, background, difference = run(refine, image, torch.zeros(1, 64, 64))
    assert torch.count_nonzero(mask) == 0 and torch.equal(background, image) and torch.count_nonzero(difference) == 0
    assert not refine.calls and "empty" in caplog.text
    # Load Image's 64x64 all-zero MASK for a picture without alpha, on a non-square image: also just empty.
    wide = torch.rand(1, 48, 96, 3)
    mask, background, _ = run(refine, wide, torch.zeros(1, 64, 64))
    assert mask.shape == (1, 48, 96) and torch.equal(background, wide)


def test_full_preliminary_mask_warns_and_keeps_what_changed(refine, caplog):
    image, _ = scene()
    with caplog.at_level(logging.WARNING, logger="segdrop"):
        mask, _, _ = run(refine, image, torch.ones(1, 64, 64))
    assert "no background to keep" in caplog.text
    assert torch.count_nonzero(refine.calls[0]["keep"]) == 0
    assert torch.equal(mask, square_found())  # GMM(D) over the whole image


@pytest.mark.filterwarnings("ignore:Attention map 0 has fewer than 2 distinct values")  # image 1: nothing changed
def test_batches_one_mask_for_all_or_one_per_image(refine, caplog):
    image, prelim = scene(batch=2)
    image[1] = 0.5  # nothing to find in the second image
    mask, background, _ = run(refine, image, prelim)
    assert mask.shape == (2, 64, 64) and background.shape == (2, 64, 64, 3)
    assert torch.equal(mask[:1], square_found()) and len(refine.calls) == 2
    per_image = torch.cat([prelim, torch.zeros(1, 64, 64)])
    with caplog.at_level(logging.WARNING, logger="segdrop"):
        mask, background, _ = run(refine, image, per_image)
    assert len(refine.calls) == 3 and torch.equal(background[1], image[1]) and "image 1 is empty" in caplog.text
    assert refine.progress["total"] == 3  # steps x images that are sampled


def test_image_sides_not_multiple_of_8_are_padded_and_cropped_back(refine):
    image = torch.full((1, 60, 70, 3), 0.5)
    image[:, 20:36, 20:36] = torch.tensor([0.9, 0.1, 0.1])
    prelim = torch.zeros(1, 60, 70)
    prelim[0, 12:44, 12:44] = 1
    vae = FakeVAE()
    mask, background, difference = run(refine, image, prelim, vae=vae)
    assert vae.encoded[0].shape == (1, 64, 72, 3)
    assert torch.equal(vae.encoded[0][:, :60, :70], image) and torch.equal(vae.encoded[0][:, 60:, :70],
                                                                         image[:, 59:60].expand(-1, 4, -1, -1))
    assert mask.shape == (1, 60, 70) and background.shape == (1, 60, 70, 3) and difference.shape == (1, 60, 70, 3)
    assert mask.sum() == 252  # the 16x16 square less the 4 corners the majority filter drops


def test_inpainting_layout_model_is_refused_with_the_fix(refine):
    image, prelim = scene()
    with pytest.raises(ValueError) as caught:
        run(refine, image, prelim, model=fake_model(9))
    message = str(caught.value)
    assert "9 input channels" in message and "inpainting checkpoint" in message
    assert "text-to-image checkpoint" in message and "LoraLoader" in message
    assert not refine.calls
