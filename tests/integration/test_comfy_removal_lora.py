"""ObjectDrop `removal` LoRA in real ComfyUI, end to end: a diffusers SD inpainting folder is built around the
diffusers twin of the tiny random 9-channel SD1.5-inpainting checkpoint, ``python -m segdrop.training removal
--lora_rank 4`` trains a LoRA on it for 2 steps on toy-world triplets, and the exported kohya file loads in the
core LoraLoader over that checkpoint with every key applied (no "lora key not loaded" log line, one patch per
LoRA module) and changes the UNet output exactly as the trained LoRA merged into the diffusers twin does."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from segdrop.testing.comfy_lora_checks import (
    captured_warnings,
    comfy_unet_forward,
    lora_loader_graph,
    sample_inputs,
    twin_forward,
)

pytestmark = pytest.mark.comfyui

IMAGE_SIZE = 64  # twin sample_size 32 x AutoencoderKL factor 2
RANK = 4
LR = "5e-3"  # peft starts lora_B at zero: large enough that 2 Adam steps move it visibly


def diffusers_inpainting_folder(folder: Path, twin) -> Path:
    """A diffusers SD1.x inpainting folder whose UNet is ``twin`` (``diffusers_text_to_image_folder`` with the
    inpainting pipeline name), its word tokenizer over the toy vocabulary: only the UNet LoRA matters here."""
    from segdrop.testing.comfy_checkpoint import diffusers_text_to_image_folder
    from segdrop.toyworld import vocabulary

    words = sorted({w.lower() for w in vocabulary()} | {"a", "photo", "of", "and"})
    return diffusers_text_to_image_folder(folder, twin, words, IMAGE_SIZE, pipeline="StableDiffusionInpaintPipeline")


@pytest.fixture(scope="module")
def twin(comfyui_session):
    from segdrop.testing.comfy_checkpoint import tiny_diffusers_twin

    with comfyui_session.activated():
        return tiny_diffusers_twin(comfyui_session, inpainting=True)


@pytest.fixture(scope="module")
def trained_lora(twin, tmp_path_factory) -> dict:
    """Run the `removal` recipe (LoRA rank 4, 2 steps) on a diffusers folder around the twin; returns the run."""
    from segdrop.toyworld import write_dataset
    from segdrop.training import train_removal

    root = tmp_path_factory.mktemp("removal_lora")
    base = diffusers_inpainting_folder(root / "sd_inpaint", twin)
    data = write_dataset(root / "data", 4, size=IMAGE_SIZE, seed=0)
    out = root / "run"
    started = time.time()
    argv = ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--lora_rank", str(RANK),
            "--steps", "2", "--batch_size", "2", "--lr", LR, "--warmup_steps", "0", "--checkpointing_steps", "100",
            "--num_threads", "1", "--save_dtype", "float16"]
    assert train_removal.main(argv) == 0
    seconds = time.time() - started
    lora = out / "lora"
    assert (lora / "lora_kohya.safetensors").is_file() and (lora / "pytorch_lora_weights.safetensors").is_file()
    return {"lora": lora, "seconds": seconds}


def merged_twin(twin, diffusers_file: Path):
    """A copy of ``twin`` with the trained LoRA (diffusers/peft-format file) merged: W += alpha/r * B @ A."""
    import copy

    import torch
    from safetensors.torch import load_file

    state = load_file(str(diffusers_file))
    unet = copy.deepcopy(twin)
    scale = 1.0  # lora_alpha defaults to the rank in the removal recipe
    merged = 0
    with torch.no_grad():
        for key, down in state.items():
            if not key.endswith(".lora_A.weight"):
                continue
            module = key[: -len(".lora_A.weight")]
            up = state[module + ".lora_B.weight"]
            name = module[len("unet."):] if module.startswith("unet.") else module
            weight = unet.get_submodule(name).weight
            weight.add_((scale * up.float() @ down.float()).reshape(weight.shape))
            merged += 1
    return unet.eval(), merged


def test_removal_lora_trained_by_the_recipe_loads_in_core_loraloader(comfyui, twin, trained_lora, run_prompt):
    from safetensors import safe_open

    from segdrop.testing.comfy_checkpoint import TINY_INPAINT_CHECKPOINT
    from segdrop.training.export import DIFFUSERS_FILE, KOHYA_FILE

    started = time.time()
    kohya = trained_lora["lora"] / KOHYA_FILE
    with safe_open(str(kohya), framework="pt") as handle:
        keys = list(handle.keys())
        metadata = handle.metadata() or {}
        ups = [handle.get_tensor(k) for k in keys if k.endswith(".lora_up.weight")]
    modules = sorted(k[: -len(".lora_down.weight")] for k in keys if k.endswith(".lora_down.weight"))
    assert len(modules) == 7 * 8  # 7 transformer blocks x (attn1, attn2) x (q, k, v, out)
    assert metadata.get("rank") == str(RANK) and "removal" in json.dumps(metadata)
    assert all(u.abs().max().item() > 0 for u in ups), "2 training steps left a LoRA up-weight at zero"

    folder = comfyui.cache / "loras"
    sub = f"segdrop_removal_{uuid.uuid4().hex[:8]}"
    (folder / sub).mkdir(parents=True)
    shutil.copy2(kohya, folder / sub / KOHYA_FILE)
    comfyui.folder_paths.add_model_folder_path("loras", str(folder))
    lora_name = f"{sub}/{KOHYA_FILE}"
    assert comfyui.folder_paths.get_full_path("loras", lora_name) is not None

    graph = lora_loader_graph(TINY_INPAINT_CHECKPOINT, lora_name)
    try:
        with captured_warnings() as warnings:
            result = run_prompt(graph, fresh_cache=True)
    finally:
        shutil.rmtree(folder / sub, ignore_errors=True)
    not_loaded = [w for w in warnings if "lora key not loaded" in w or "NOT LOADED" in w]
    assert not_loaded == []
    base, patched = result["1"][0], result["2"][0]
    assert len(base.patches) == 0
    assert len(patched.patches) == len(modules)  # every LoRA module of the file patches one UNet weight
    assert patched.model.model_config.unet_config["in_channels"] == 9 and patched.model.model_config.inpaint_model()

    want_lora_unet, merged = merged_twin(twin, trained_lora["lora"] / DIFFUSERS_FILE)
    assert merged == len(modules)
    x, t, ctx = sample_inputs(9)
    want_base = twin_forward(twin, x, t, ctx)
    want_lora = twin_forward(want_lora_unet, x, t, ctx)
    got_base = comfy_unet_forward(base, x, t, ctx)
    got_lora = comfy_unet_forward(patched, x, t, ctx)
    base_delta = (got_base - want_base).abs().max().item()
    lora_delta = (got_lora - want_lora).abs().max().item()
    lora_effect = (got_lora - got_base).abs().max().item()
    print(f"\nremoval LoRA (rank {RANK}, 2 steps, lr {LR}, trained in {trained_lora['seconds']:.1f} s): "
          f"keys applied {len(patched.patches)}/{len(modules)}; unpatched vs twin {base_delta:.2e}; "
          f"LoRA vs twin+merged LoRA {lora_delta:.2e}; LoRA effect {lora_effect:.2e}; ComfyUI part "
          f"{time.time() - started:.1f} s")
    assert base_delta <= 1e-3
    assert lora_delta <= 1e-3
    assert lora_effect > 10 * max(lora_delta, 1e-5)
