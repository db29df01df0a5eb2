"""ObjectDrop removal nodes inside a real ComfyUI, through the executor, on the tiny 9-channel SD1.5-inpainting
checkpoint (random weights: the output is noise, so these tests check plumbing, shapes and exactness, not
removal quality).

The removal LoRA of the shipped workflow is replaced by a LoRA made here: kohya-format keys for every UNet
attention projection ComfyUI maps (``comfy.lora.model_lora_keys_unet``) with all-zero ``lora_up`` weights, so
the core LoraLoader really loads and applies it and the model is unchanged.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from segdrop.testing.comfy_lora_checks import write_zero_lora

pytestmark = pytest.mark.comfyui

REMOVE, CONDITIONING = "SegDrop_ObjectDropRemove", "SegDrop_ObjectDropConditioning"
PACK_DIR = Path(__file__).resolve().parents[2]
ZERO_LORA = "segdrop_zero_removal_lora.safetensors"
FAST = {"seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "mask_grow": 2,
        "context": 0.2, "resolution": 64, "effect_threshold": 0.08}


@pytest.fixture(scope="session")
def inpaint_checkpoint(comfyui_session) -> str:
    from segdrop.testing.comfy_checkpoint import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(comfyui_session, inpainting=True)


def alpha_masked_image(directory: Path, size: int, name: str) -> str:
    """Grey with a red square (rows/cols size/4 .. 3size/4), whose alpha is 0 on a smaller centred square, so Load
    Image's MASK (1 - alpha) marks the object."""
    from PIL import Image, ImageDraw

    path = directory / name
    if not path.is_file():
        image = Image.new("RGBA", (size, size), (128, 128, 128, 255))
        draw = ImageDraw.Draw(image)
        draw.rectangle([size // 4, size // 4, 3 * size // 4 - 1, 3 * size // 4 - 1], fill=(220, 30, 30, 255))
        draw.rectangle([3 * size // 8, 3 * size // 8, 5 * size // 8 - 1, 5 * size // 8 - 1], fill=(220, 30, 30, 0))
        image.save(path)
    return name


@pytest.fixture(scope="session")
def masked_image(comfyui_session):
    directory = Path(comfyui_session.folder_paths.get_input_directory())
    return lambda size=128: alpha_masked_image(directory, size, f"segdrop_objectdrop_{size}.png")


@pytest.fixture(scope="session")
def zero_lora(comfyui_session, inpaint_checkpoint) -> str:
    """A kohya-format LoRA with zero up-weights on the tiny inpainting UNet's attention projections."""
    return write_zero_lora(comfyui_session, inpaint_checkpoint, ZERO_LORA)


def remove_graph(checkpoint: str, image: str, mask_image: str | None = None, **widgets) -> dict:
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": REMOVE, "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                               "image": ["2", 0], "mask": ["2", 1], **FAST, **widgets}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    if mask_image is not None:
        graph["5"] = {"class_type": "LoadImage", "inputs": {"image": mask_image}}
        graph["3"]["inputs"]["mask"] = ["5", 1]
    return graph


def require_nodes(comfyui) -> None:
    missing = [n for n in (REMOVE, CONDITIONING) if not comfyui.has_node(n)]
    if missing:
        pytest.fail(f"{missing} not registered (pack load errors: {comfyui.pack_error.strip()[:2000]})")


def test_remove_runs_and_keeps_the_input_outside_the_effect_mask(comfyui, run_prompt, inpaint_checkpoint, masked_image):
    import torch

    require_nodes(comfyui)
    result = run_prompt(remove_graph(inpaint_checkpoint, masked_image(128)))
    image, mask = result["2"][0], result["2"][1]
    out, effect, preview = result["3"]
    assert float(mask.sum()) == 32 * 32  # Load Image's alpha mask: the centred 32x32 square
    assert tuple(out.shape) == (1, 128, 128, 3) and tuple(effect.shape) == (1, 128, 128)
    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3 and preview.shape[2] % 3 == 0
    assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1
    outside = effect == 0
    assert bool(outside.any()), "the effect mask covers the whole image: the crop context is too large"
    assert torch.equal(out[outside], image[outside])
    assert bool((effect[mask > 0.5] == 1).all())  # the (grown) object mask is always pasted
    assert result.ui["4"]["images"]


def test_conditioning_node_with_core_ksampler(comfyui, run_prompt, inpaint_checkpoint, masked_image):
    import torch

    require_nodes(comfyui)
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": inpaint_checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": masked_image(64)}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {"class_type": CONDITIONING, "inputs": {"positive": ["3", 0], "negative": ["3", 0], "vae": ["1", 2],
                                                     "pixels": ["2", 0], "mask": ["2", 1]}},
        "5": {"class_type": "KSampler", "inputs": {"model": ["1", 0], "positive": ["4", 0], "negative": ["4", 1],
                                                   "latent_image": ["4", 2], "seed": 0, "steps": 2, "cfg": 1.0,
                                                   "sampler_name": "euler", "scheduler": "normal", "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
        "8": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }
    # VAEEncode (node 8) only runs when something uses it: feed it to a second sampler's latent.
    graph["10"] = {**graph["5"], "inputs": {**graph["5"]["inputs"], "latent_image": ["8", 0], "denoise": 0.5}}
    graph["11"] = {"class_type": "VAEDecode", "inputs": {"samples": ["10", 0], "vae": ["1", 2]}}
    graph["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}}
    result = run_prompt(graph)
    positive, negative, latent = result["4"]
    encoded = result["8"][0]["samples"]
    for cond in (positive, negative):
        values = cond[0][1]
        assert torch.equal(values["concat_latent_image"], encoded)  # the un-grayed photo's latent
        assert tuple(values["concat_mask"].shape) == (1, 1, 64, 64) and float(values["concat_mask"].sum()) == 16 * 16
    assert set(latent) == {"samples"} and torch.count_nonzero(latent["samples"]) == 0  # no noise_mask
    assert tuple(result["6"][0].shape) == (1, 64, 64, 3) and bool(torch.isfinite(result["6"][0]).all())


def test_shipped_object_removal_workflow_runs(comfyui, run_prompt, inpaint_checkpoint, masked_image, zero_lora):
    import torch

    require_nodes(comfyui)
    path = PACK_DIR / "workflows" / "api" / "object_removal.api.json"
    graph = comfyui.api_from_workflow_file(path, checkpoint=inpaint_checkpoint, image=masked_image(128))
    by_type = {node["class_type"]: node_id for node_id, node in graph.items()}
    graph[by_type["LoraLoader"]]["inputs"]["lora_name"] = zero_lora
    graph[by_type[REMOVE]]["inputs"].update(steps=2, resolution=64, context=0.2)
    warnings: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            warnings.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        result = run_prompt(graph)
    finally:
        logging.getLogger().removeHandler(handler)
    assert not [w for w in warnings if "lora key not loaded" in w], warnings
    out = result[by_type[REMOVE]][0]
    assert tuple(out.shape) == (1, 128, 128, 3) and bool(torch.isfinite(out).all())
    for node_id, node in graph.items():
        if node["class_type"] in ("PreviewImage", "SaveImage"):
            assert result.ui.get(node_id, {}).get("images"), (node_id, result.ui)


def test_text_to_image_checkpoint_is_refused(comfyui, run_prompt, tiny_checkpoint, masked_image):
    require_nodes(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(remove_graph(tiny_checkpoint, masked_image(64)))
    error = caught.value
    assert error.node_id == "3" and error.node_type == REMOVE
    assert "4 input channels" in error.exception_message
    assert "load an SD inpainting checkpoint (9 input channels) and the removal LoRA" in error.exception_message


def test_image_and_mask_size_mismatch_is_refused(comfyui, run_prompt, inpaint_checkpoint, masked_image):
    require_nodes(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(remove_graph(inpaint_checkpoint, masked_image(64), mask_image=masked_image(128)))
    message = caught.value.exception_message
    assert "mask is 128x128" in message and "image is 64x64" in message and "resize" in message, message


def test_empty_mask_returns_the_image(comfyui, run_prompt, inpaint_checkpoint, test_image):
    import torch

    require_nodes(comfyui)
    result = run_prompt(remove_graph(inpaint_checkpoint, test_image))  # no alpha: Load Image's MASK is empty
    assert torch.equal(result["3"][0], result["2"][0]) and torch.count_nonzero(result["3"][1]) == 0
