"""Background Inpaint Refine and the concept distillation workflows inside a real ComfyUI, on the tiny random
4-channel SD1.5 checkpoint (random weights: the pictures are noise, so these tests check plumbing, the sampler's
arithmetic through ComfyUI's own sampling, shapes and errors, not mask quality).

m′ of the shipped workflows (a background LoRA) is replaced by a LoRA made here: kohya-format keys for the tiny
UNet's attention projections with all-zero ``lora_up`` weights, so the core LoraLoader really loads and applies it
and the model is unchanged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segdrop.testing.comfy_lora_checks import write_zero_lora
from segdrop.testing.workflow_checks import assert_core_nodes_match, load_build_workflows

pytestmark = pytest.mark.comfyui

REFINE = "SegDrop_BackgroundInpaintRefine"
PACK_DIR = Path(__file__).resolve().parents[2]
ZERO_LORA = "segdrop_zero_background_lora.safetensors"
FAST = {"prompt": "a photo of a background", "seed": 0, "steps": 2, "eta": 0.0, "postprocess": False}


def alpha_masked_image(directory: Path, width: int, height: int, name: str) -> str:
    """Grey with a red box (the middle half), whose alpha is 0 on a larger box (3/16 .. 13/16 of each side), so
    Load Image's MASK (1 - alpha) is a preliminary mask that over-covers the object, as M_pre does."""
    from PIL import Image, ImageDraw

    path = directory / name
    if not path.is_file():
        image = Image.new("RGBA", (width, height), (128, 128, 128, 255))
        draw = ImageDraw.Draw(image)
        draw.rectangle([width // 4, height // 4, 3 * width // 4 - 1, 3 * height // 4 - 1], fill=(220, 30, 30, 255))
        box = [3 * width // 16, 3 * height // 16, 13 * width // 16 - 1, 13 * height // 16 - 1]
        alpha = Image.new("L", (width, height), 255)
        ImageDraw.Draw(alpha).rectangle(box, fill=0)
        image.putalpha(alpha)
        image.save(path)
    return name


@pytest.fixture(scope="session")
def masked_image(comfyui_session):
    directory = Path(comfyui_session.folder_paths.get_input_directory())
    return lambda width=64, height=None: alpha_masked_image(directory, width, height or width,
                                                            f"segdrop_refine_{width}x{height or width}.png")


@pytest.fixture(scope="session")
def inpaint_checkpoint(comfyui_session) -> str:
    from segdrop.testing.comfy_checkpoint import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(comfyui_session, inpainting=True)


@pytest.fixture(scope="session")
def zero_lora(comfyui_session, tiny_checkpoint) -> str:
    """A kohya-format LoRA with zero up-weights on the tiny text-to-image UNet's attention projections."""
    return write_zero_lora(comfyui_session, tiny_checkpoint, ZERO_LORA)


def refine_graph(checkpoint: str, image: str, mask_image: str | None = None, **widgets) -> dict:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": REFINE, "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                               "image": ["2", 0], "mask": ["2", 1], **FAST, **widgets}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["3", 2]}},
    }
    if mask_image is not None:
        graph["6"] = {"class_type": "LoadImage", "inputs": {"image": mask_image}}
        graph["3"]["inputs"]["mask"] = ["6", 1]
    return graph


def require_node(comfyui) -> None:
    if not comfyui.has_node(REFINE):
        pytest.fail(f"{REFINE} not registered (pack load errors: {comfyui.pack_error.strip()[:2000]})")


def test_refine_runs_through_the_executor(comfyui, run_prompt, tiny_checkpoint, masked_image):
    import torch
    import torch.nn.functional as F

    require_node(comfyui)
    result = run_prompt(refine_graph(tiny_checkpoint, masked_image(64), eta=0.5))  # DDIM eta > 0: ancestral noise
    image, prelim = result["2"][0], result["2"][1]
    mask, background, difference = result["3"]
    assert tuple(mask.shape) == (1, 64, 64) and mask.dtype == torch.float32
    assert tuple(background.shape) == (1, 64, 64, 3) and background.dtype == torch.float32
    assert tuple(difference.shape) == (1, 64, 64, 3) and difference.dtype == torch.float32
    for picture in (background, difference):
        assert bool(torch.isfinite(picture).all()) and float(picture.min()) >= 0 and float(picture.max()) <= 1
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.allclose(difference[..., 0], (image - background).abs().mean(-1), atol=1e-6)
    assert torch.equal(difference[..., 0], difference[..., 1]) and torch.equal(difference[..., 0], difference[..., 2])
    # The refined mask lies inside M_pre's latent cells, up to the official bilinear upsampling's half-cell growth.
    cells = F.max_pool2d(prelim[:, None], 8)
    grown = F.interpolate(F.max_pool2d(cells, 3, 1, 1), scale_factor=8, mode="nearest")[:, 0]
    assert bool((mask <= grown).all())
    assert result.ui["4"]["images"] and result.ui["5"]["images"]


def test_the_sampler_is_cfg1_ddim_with_fresh_background_noise_on_the_uniform_grid(comfyui, tiny_checkpoint,
                                                                                masked_image):
    """Through ComfyUI's real sampling: one conditional UNet call per step (no uncond pass), at the DDIM "uniform"
    sigmas, and before each call the kept latent cells are process_in(VAE latent) + sigma * fresh noise drawn
    from torch.Generator(seed + 1), a new draw every step. The same seed reproduces the output."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from PIL import Image

    require_node(comfyui)
    cls = comfyui.node_class(REFINE)
    model, clip, vae = comfyui.load_checkpoint(tiny_checkpoint)
    path = Path(comfyui.folder_paths.get_input_directory()) / masked_image(64)
    picture = Image.open(path)
    image = torch.from_numpy(np.asarray(picture.convert("RGB"), np.float32) / 255)[None]
    prelim = 1 - torch.from_numpy(np.asarray(picture.getchannel("A"), np.float32) / 255)[None]
    calls = []

    def record(apply_model, args):
        calls.append((args["input"].clone(), args["timestep"].clone(), list(args["cond_or_uncond"])))
        return apply_model(args["input"], args["timestep"], **args["c"])

    watched = model.clone()
    watched.set_model_unet_function_wrapper(record)
    seed, steps = 7, 4
    with comfyui.activated(), torch.inference_mode():
        outputs = [cls.execute(watched, clip, vae, image, prelim, "a photo of a background", s, steps, 0.0, False).result
                   for s in (seed, seed, seed + 1)]
        known = model.get_model_object("latent_format").process_in(vae.encode(image))
        sampling = model.get_model_object("model_sampling")
        grid = torch.stack([sampling.sigma(torch.tensor(float(t))) for t in (751, 501, 251, 1)])
    assert len(calls) == 3 * steps and all(c[2] == [0] for c in calls)
    keep = (F.max_pool2d(prelim[:, None], 8) < 0.5).expand_as(known)
    assert 0 < int(keep.sum()) < keep.numel()
    generator = torch.Generator().manual_seed(seed + 1)
    noises = [torch.randn(known.shape, generator=generator) for _ in range(steps)]
    for (x, sigma, _), noise, expected_sigma in zip(calls[:steps], noises, grid):
        assert torch.allclose(sigma, expected_sigma.expand_as(sigma), rtol=1e-5)
        assert torch.allclose(x[keep], (known + expected_sigma * noise)[keep], rtol=1e-4, atol=1e-4)
    assert not torch.allclose(noises[0], noises[1])
    assert all(torch.equal(a, b) for a, b in zip(outputs[0], outputs[1]))
    assert not torch.equal(outputs[0][1], outputs[2][1])


def test_cancel_stops_the_sampling(comfyui, tiny_checkpoint):
    import comfy.model_management
    import torch

    require_node(comfyui)
    cls = comfyui.node_class(REFINE)
    model, clip, vae = comfyui.load_checkpoint(tiny_checkpoint)
    calls = []

    def interrupt(apply_model, args):
        calls.append(1)
        comfy.model_management.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    watched = model.clone()
    watched.set_model_unet_function_wrapper(interrupt)
    image = torch.rand(1, 64, 64, 3)
    prelim = torch.zeros(1, 64, 64)
    prelim[:, 16:48, 16:48] = 1
    try:
        with comfyui.activated(), torch.inference_mode(), pytest.raises(comfy.model_management.InterruptProcessingException):
            cls.execute(watched, clip, vae, image, prelim, "a photo of a background", 0, 10, 0.0, False)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert len(calls) == 1  # stopped right after the first step


def test_empty_mask_returns_the_image(comfyui, run_prompt, tiny_checkpoint, test_image):
    import torch

    require_node(comfyui)
    result = run_prompt(refine_graph(tiny_checkpoint, test_image))  # no alpha: Load Image's 64x64 MASK is empty
    mask, background, difference = result["3"]
    assert torch.count_nonzero(mask) == 0 and torch.equal(background, result["2"][0])
    assert torch.count_nonzero(difference) == 0 and tuple(mask.shape) == (1, 128, 128)


def test_inpainting_checkpoint_is_refused(comfyui, run_prompt, inpaint_checkpoint, masked_image):
    require_node(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(refine_graph(inpaint_checkpoint, masked_image(64)))
    error = caught.value
    assert error.node_id == "3" and error.node_type == REFINE
    assert "9 input channels" in error.exception_message and "inpainting checkpoint" in error.exception_message
    assert "Load the text-to-image checkpoint" in error.exception_message


def test_mask_of_another_shape_is_refused(comfyui, run_prompt, tiny_checkpoint, masked_image):
    require_node(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(refine_graph(tiny_checkpoint, masked_image(64), mask_image=masked_image(128, 64)))
    message = caught.value.exception_message
    assert "mask is 128x64" in message and "image is 64x64" in message and "resize" in message, message


def test_shipped_foreground_refine_workflow_runs(comfyui, run_prompt, tiny_checkpoint, make_image, zero_lora):
    import torch

    from segdrop.testing.comfy_lora_checks import captured_warnings

    require_node(comfyui)
    graph = comfyui.api_from_workflow_file(PACK_DIR / "workflows" / "api" / "foreground_refine.api.json",
                                           checkpoint=tiny_checkpoint, image=make_image(64))
    by_type = {node["class_type"]: node_id for node_id, node in graph.items()}
    graph[by_type["LoraLoader"]]["inputs"]["lora_name"] = zero_lora
    graph[by_type["SegDrop_AttentionCapture"]]["inputs"].update(t0=2, prompt="a red square", preview_word="square")
    graph[by_type["SegDrop_GMMBinarize"]]["inputs"]["words"] = "square"
    graph[by_type[REFINE]]["inputs"]["steps"] = 2
    with captured_warnings() as warnings:
        result = run_prompt(graph)
    assert not [w for w in warnings if "lora key not loaded" in w], warnings
    mask, background, difference = result[by_type[REFINE]]
    assert tuple(mask.shape) == (1, 64, 64) and tuple(background.shape) == tuple(difference.shape) == (1, 64, 64, 3)
    assert bool(torch.isfinite(background).all())
    for node_id, node in graph.items():
        if node["class_type"] == "PreviewImage":
            assert result.ui.get(node_id, {}).get("images"), (node_id, result.ui)


def test_shipped_distillation_guidance_workflow_runs(comfyui, run_prompt, tiny_checkpoint, zero_lora):
    import torch

    graph = comfyui.api_from_workflow_file(PACK_DIR / "workflows" / "api" / "distillation_guidance.api.json",
                                           checkpoint=tiny_checkpoint)
    by_type = {node["class_type"]: node_id for node_id, node in graph.items()}
    assert not [t for t in by_type if t.startswith("SegDrop_")]  # core nodes only
    graph[by_type["LoraLoader"]]["inputs"]["lora_name"] = zero_lora
    graph[by_type["EmptyLatentImage"]]["inputs"].update(width=64, height=64)
    graph[by_type["KSampler"]]["inputs"]["steps"] = 2
    result = run_prompt(graph)
    image = result[by_type["VAEDecode"]][0]
    assert tuple(image.shape) == (1, 64, 64, 3) and bool(torch.isfinite(image).all())
    assert result.ui[by_type["SaveImage"]]["images"]


def test_guidance_scale_zero_samples_the_background_prompt_alone(comfyui, run_prompt, tiny_checkpoint):
    """KSampler cfg = s is eps(y_b) + s * (eps(y_f) - eps(y_b)) with y_b negative: s = 0 is y_b alone."""

    def graph(positive: str, negative: str, cfg: float) -> dict:
        return {
            "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint}},
            "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": positive}},
            "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": negative}},
            "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                                                       "latent_image": ["4", 0], "seed": 3, "steps": 2, "cfg": cfg,
                                                       "sampler_name": "ddim", "scheduler": "ddim_uniform",
                                                       "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        }

    guided = run_prompt(graph("a photo of a bird", "a photo of a background", 0.0))["5"][0]["samples"]
    alone = run_prompt(graph("a photo of a background", "a photo of a bird", 1.0))["5"][0]["samples"]
    other = run_prompt(graph("a photo of a bird", "a photo of a background", 1.0))["5"][0]["samples"]
    # Not bit for bit: cfg 0 runs cond and uncond as one batch of 2, cfg 1 runs the cond alone.
    assert float((guided - alone).abs().max()) < 1e-3 * float(alone.abs().max()), float((guided - alone).abs().max())
    assert float((guided - other).abs().max()) > 1e-2 * float(alone.abs().max())


def test_core_node_widgets_of_the_new_workflows_match_comfyui(comfyui):
    """build_workflows' socket and widget lists for the core nodes the new workflows use are ComfyUI's own
    (``/object_info``'s input_order), with the frontend's extra ``control_after_generate`` after a seed."""
    build = load_build_workflows()
    used = {node_type for name in ("foreground_refine", "distillation_guidance")
            for node_type, _, _ in build.WORKFLOWS[name].values() if not node_type.startswith("SegDrop_")}
    assert {"KSampler", "CLIPTextEncode", "EmptyLatentImage", "VAEDecode", "LoraLoader"} <= used
    assert_core_nodes_match(comfyui, build, used)
