"""ObjectDrop exports in real ComfyUI: a peft LoRA saved by ``training.export.save_lora`` loads in the core
LoraLoader with zero unloaded keys and reproduces diffusers' output; a full fine-tune saved by
``save_unet_single_file`` loads in the core UNETLoader ("Load Diffusion Model") as a 9-channel inpainting SD15."""

from __future__ import annotations

import uuid

import pytest

from segdrop.testing.comfy_lora_checks import (
    captured_warnings,
    comfy_unet_forward,
    lora_loader_graph,
    sample_inputs,
    twin_forward,
    with_sampler,
)

pytestmark = pytest.mark.comfyui

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def twin(comfyui_session):
    from segdrop.testing.comfy_checkpoint import tiny_diffusers_twin

    with comfyui_session.activated():
        return tiny_diffusers_twin(comfyui_session, inpainting=True)


def test_lora_loads_in_core_loraloader_with_zero_unloaded_keys(comfyui, twin, run_prompt):
    import copy

    import torch
    from peft import LoraConfig

    from segdrop.testing.comfy_checkpoint import TINY_INPAINT_CHECKPOINT
    from segdrop.training.export import KOHYA_FILE, save_lora

    unet = copy.deepcopy(twin)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)
    unet.eval()
    modules = sum(1 for name, _ in unet.named_modules() if name.endswith(".base_layer"))
    assert modules == 7 * 8  # 7 transformer blocks x (attn1, attn2) x (q, k, v, out)

    folder = comfyui.cache / "loras"
    sub = f"segdrop_test_{uuid.uuid4().hex[:8]}"
    save_lora(unet, folder / sub, {"base": TINY_INPAINT_CHECKPOINT, "steps": 0, "recipe": "objectdrop-test"})
    comfyui.folder_paths.add_model_folder_path("loras", str(folder))
    lora_name = f"{sub}/{KOHYA_FILE}"
    assert comfyui.folder_paths.get_full_path("loras", lora_name) is not None

    graph = lora_loader_graph(TINY_INPAINT_CHECKPOINT, lora_name)
    with captured_warnings() as warnings:
        result = run_prompt(graph, fresh_cache=True)
    not_loaded = [w for w in warnings if "lora key not loaded" in w or "NOT LOADED" in w]
    assert not_loaded == []
    base, patched = result["1"][0], result["2"][0]
    assert len(base.patches) == 0
    assert len(patched.patches) == modules  # every LoRA module patches one UNet weight
    assert patched.model.model_config.unet_config["in_channels"] == 9 and patched.model.model_config.inpaint_model()

    x, t, ctx = sample_inputs(9)
    want_lora = twin_forward(unet, x, t, ctx)
    want_base = twin_forward(twin, x, t, ctx)
    got_base = comfy_unet_forward(base, x, t, ctx)
    got_lora = comfy_unet_forward(patched, x, t, ctx)
    base_delta = (got_base - want_base).abs().max().item()
    lora_delta = (got_lora - want_lora).abs().max().item()
    lora_effect = (got_lora - got_base).abs().max().item()
    print(f"\nLoRA keys patched {len(patched.patches)}/{modules}; unpatched vs twin {base_delta:.2e}; "
          f"LoRA vs twin+LoRA {lora_delta:.2e}; LoRA effect {lora_effect:.2e}; dtype "
          f"{next(patched.model.diffusion_model.parameters()).dtype}")
    assert base_delta <= 1e-3
    assert lora_delta <= 1e-3
    assert lora_effect > 10 * max(lora_delta, 1e-5)


def test_full_finetune_loads_in_core_unetloader(comfyui, twin, run_prompt):
    import copy

    import torch

    from segdrop.training.export import save_unet_single_file

    tuned = copy.deepcopy(twin)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a "fine-tune": every weight moved a little
        for param in tuned.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 1e-3)
    folder = comfyui.cache / "diffusion_models"
    name = f"segdrop_test_unet_{uuid.uuid4().hex[:8]}.safetensors"
    save_unet_single_file(tuned, folder / name, {"base": "sd15_inpaint_tiny", "recipe": "objectdrop-test"})
    comfyui.folder_paths.add_model_folder_path("diffusion_models", str(folder))

    from segdrop.testing.comfy_checkpoint import TINY_INPAINT_CHECKPOINT

    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}},
             "0": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_INPAINT_CHECKPOINT}}}
    graph = with_sampler(graph, ["1", 0], ["0", 1], ["0", 2])
    result = run_prompt(graph, fresh_cache=True)
    model = result["1"][0]
    import comfy.supported_models

    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_config.unet_config["in_channels"] == 9 and hasattr(model.model, "blank_inpaint_image_like")

    x, t, ctx = sample_inputs(9)
    got = comfy_unet_forward(model, x, t, ctx)
    want = twin_forward(tuned, x, t, ctx)
    moved = (want - twin_forward(twin, x, t, ctx)).abs().max().item()
    delta = (got - want).abs().max().item()
    print(f"\nUNETLoader vs fine-tuned twin {delta:.2e} (fine-tune moved the output by {moved:.2e}); dtype "
          f"{next(model.model.diffusion_model.parameters()).dtype}")
    assert delta <= 1e-3 and moved > 10 * delta


def test_export_ldm_map_equals_comfyui_unet_to_diffusers(comfyui, twin):
    """training.export's diffusers -> LDM key map agrees with ComfyUI's own comfy.utils.unet_to_diffusers."""
    import comfy.utils

    from segdrop.testing.comfy_checkpoint import TINY_UNET_CONFIG
    from segdrop.testing.tiny_models import tiny_sd15_unet
    from segdrop.training.export import unet_state_dict_to_ldm

    cases = [(twin, {**TINY_UNET_CONFIG, "in_channels": 9})]
    sd15 = tiny_sd15_unet()  # SD1.5's full layout: 4 levels, 2 res blocks, no attention at the last level
    cases.append((sd15, {"num_res_blocks": [2] * 4, "channel_mult": [1, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
                         "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
                         "transformer_depth_middle": 1}))
    for unet, config in cases:
        comfy_map = comfy.utils.unet_to_diffusers(config)
        ours = unet_state_dict_to_ldm({k: k for k in unet.state_dict()}, dict(unet.config))
        ours = {diffusers: ldm for ldm, diffusers in ours.items()}
        assert {k: ours[k] for k in comfy_map if k in ours} == {k: v for k, v in comfy_map.items() if k in ours}
        assert set(ours) <= set(comfy_map)
