"""ObjectDrop `removal` LoRA in real ComfyUI, end to end: a diffusers SD inpainting folder is built around the
diffusers twin of the tiny random 9-channel SD1.5-inpainting checkpoint, ``python -m segdrop.training removal
--lora_rank 4`` trains a LoRA on it for 2 steps on toy-world triplets, and the exported kohya file loads in the
core LoraLoader over that checkpoint with every key applied (no "lora key not loaded" log line, one patch per
LoRA module) and changes the UNet output exactly as the trained LoRA merged into the diffusers twin does."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from segdrop.testing.comfy_lora_checks import check_lora_in_comfy

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


def test_removal_lora_trained_by_the_recipe_loads_in_core_loraloader(comfyui, twin, trained_lora, run_prompt):
    from segdrop.testing.comfy_checkpoint import TINY_INPAINT_CHECKPOINT

    started = time.time()
    got = check_lora_in_comfy(comfyui, run_prompt, twin, trained_lora["lora"], TINY_INPAINT_CHECKPOINT, 9, "removal")
    modules, patched = got["modules"], got["patched"]
    assert len(modules) == 7 * 8  # 7 transformer blocks x (attn1, attn2) x (q, k, v, out)
    assert got["metadata"].get("rank") == str(RANK) and "removal" in json.dumps(got["metadata"])
    assert patched.model.model_config.unet_config["in_channels"] == 9 and patched.model.model_config.inpaint_model()
    print(f"\nremoval LoRA (rank {RANK}, 2 steps, lr {LR}, trained in {trained_lora['seconds']:.1f} s): "
          f"keys applied {len(patched.patches)}/{len(modules)}; unpatched vs twin {got['base_delta']:.2e}; "
          f"LoRA vs twin+merged LoRA {got['lora_delta']:.2e}; LoRA effect {got['lora_effect']:.2e}; ComfyUI part "
          f"{time.time() - started:.1f} s")
