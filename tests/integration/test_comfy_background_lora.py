"""Concept distillation's m′ (the `background` recipe) in real ComfyUI, end to end: a diffusers SD1.x TEXT-TO-IMAGE
folder is built around the diffusers twin of the tiny random 4-channel SD1.5 checkpoint, a small mask folder
(images, "prelim" masks at the latent grid, captions) is written, and ``train_background.main`` trains on it:

* ``--lora_rank 4`` for 2 steps: the exported kohya file loads in the core LoraLoader over ``sd15_tiny`` with every
  key applied (no "lora key not loaded" log line, one patch per LoRA module) and changes the UNet output exactly
  as the trained LoRA merged into the diffusers twin does;
* a full fine-tune for 2 steps: ``unet_ldm.safetensors`` loads in the core UNETLoader ("Load Diffusion Model") as
  a 4-channel SD15 UNet whose output equals the recipe's fine-tuned diffusers UNet (``model/unet``).

The text encoder's word tokenizer is written here (the twin is a UNet only), and it holds "background" and
"bird", so the recipe's DEFAULT prompts (y_f "a photo of a {object}", y_b "a photo of a background") are used as
the recipe gives them, each word one token (checked)."""

from __future__ import annotations

import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from segdrop.testing.comfy_checkpoint import diffusers_text_to_image_folder
from segdrop.testing.comfy_lora_checks import (
    captured_warnings,
    check_lora_in_comfy,
    comfy_unet_forward,
    sample_inputs,
    twin_forward,
    with_sampler,
)

pytestmark = pytest.mark.comfyui

IMAGE_SIZE = 64  # twin sample_size 32 x AutoencoderKL factor 2
LATENT = 32
RANK = 4
LR = "5e-3"  # peft starts lora_B at zero: large enough that 2 Adam steps move it visibly
OBJECT = "bird"
WORDS = ("a", "photo", "of", OBJECT, "background")
COMMON = ["--steps", "2", "--batch_size", "2", "--warmup_steps", "0", "--checkpointing_steps", "100",
          "--num_threads", "1", "--object_name", OBJECT]


def text_to_image_folder(folder: Path, twin) -> Path:
    """The shared diffusers SD1.x folder around ``twin``, its word tokenizer over :data:`WORDS`; the recipe's default
    prompts must be one token per word (bos + 5 words + eos: no letter split)."""
    from transformers import CLIPTokenizer

    diffusers_text_to_image_folder(folder, twin, WORDS, IMAGE_SIZE)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    for prompt in (f"a photo of a {OBJECT}", "a photo of a background"):
        assert len(tokenizer(prompt).input_ids) == 7, tokenizer.tokenize(prompt)
    return folder


def write_mask_folder(root: Path, count: int = 4) -> Path:
    """A mask folder (``distill/dataset.py`` layout): ``images/<id>.png`` (IMAGE_SIZE, RGB: a coloured square
    "bird" on a noisy grey background), ``prelim/<id>.png`` (M_pre at the LATENT grid, the square),
    ``metadata.jsonl`` with id, image, caption, prelim."""
    import numpy as np

    from segdrop.toyworld.dataset import save_png

    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        item = f"img{i:02d}"
        prelim = np.zeros((LATENT, LATENT), dtype=bool)
        top, left = rng.integers(2, LATENT - 12, size=2)
        prelim[top:top + 10, left:left + 10] = True
        image = np.clip(0.5 + 0.1 * rng.standard_normal((IMAGE_SIZE, IMAGE_SIZE, 3)), 0, 1)
        big = prelim.repeat(IMAGE_SIZE // LATENT, 0).repeat(IMAGE_SIZE // LATENT, 1)
        image[big] = rng.uniform(0, 1, size=3)
        save_png((image * 255).astype(np.uint8), root / "images" / f"{item}.png")
        save_png(prelim, root / "prelim" / f"{item}.png")
        records.append({"id": item, "image": f"images/{item}.png", "caption": f"a photo of a {OBJECT}",
                        "prelim": f"prelim/{item}.png"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def twin(comfyui_session):
    from segdrop.testing.comfy_checkpoint import tiny_diffusers_twin

    with comfyui_session.activated():
        return tiny_diffusers_twin(comfyui_session, inpainting=False)


@pytest.fixture(scope="module")
def workspace(twin, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("background")
    return {"root": root, "base": text_to_image_folder(root / "sd15", twin),
            "data": write_mask_folder(root / "masks")}


def train(workspace: dict, name: str, extra: list[str]) -> tuple[Path, float]:
    from segdrop.training import train_background

    out = workspace["root"] / name
    started = time.time()
    argv = ["--base", str(workspace["base"]), "--data_dir", str(workspace["data"]), "--output_dir", str(out),
            *COMMON, *extra]
    assert train_background.main(argv) == 0
    return out, time.time() - started


@pytest.fixture(scope="module")
def trained_lora(workspace) -> dict:
    """The `background` recipe, LoRA rank 4, 2 steps, at the recipe's default prompts."""
    out, seconds = train(workspace, "lora_run", ["--lora_rank", str(RANK), "--lr", LR, "--save_dtype", "float16"])
    lora = out / "lora"
    assert (lora / "lora_kohya.safetensors").is_file() and (lora / "pytorch_lora_weights.safetensors").is_file()
    return {"lora": lora, "seconds": seconds}


@pytest.fixture(scope="module")
def trained_full(workspace) -> dict:
    """The `background` recipe as the paper runs it (full fine-tune), 2 steps, bundle saved in float32."""
    out, seconds = train(workspace, "full_run", ["--lr", "1e-4", "--save_dtype", "float32"])
    assert (out / "unet_ldm.safetensors").is_file() and not (out / "lora").exists()
    return {"out": out, "seconds": seconds}


def test_background_lora_trained_by_the_recipe_loads_in_core_loraloader(comfyui, twin, trained_lora, run_prompt):
    from segdrop.testing.comfy_checkpoint import TINY_CHECKPOINT

    started = time.time()
    got = check_lora_in_comfy(comfyui, run_prompt, twin, trained_lora["lora"], TINY_CHECKPOINT, 4, "background")
    modules, metadata, patched = got["modules"], got["metadata"], got["patched"]
    assert len(modules) == 7 * 8  # 7 transformer blocks x (attn1, attn2) x (q, k, v, out)
    assert len(got["keys"]) == 3 * len(modules)  # down, up, alpha: nothing else
    assert metadata.get("rank") == str(RANK) and metadata.get("recipe") == "background"
    assert metadata.get("background_prompt") == "a photo of a background"
    assert patched.model.model_config.unet_config["in_channels"] == 4
    assert not patched.model.model_config.inpaint_model()
    print(f"\nbackground LoRA (rank {RANK}, 2 steps, lr {LR}, trained in {trained_lora['seconds']:.1f} s): "
          f"keys applied {len(patched.patches)}/{len(modules)}; unpatched vs twin {got['base_delta']:.2e}; "
          f"LoRA vs twin+merged LoRA {got['lora_delta']:.2e}; LoRA effect {got['lora_effect']:.2e}; ComfyUI part "
          f"{time.time() - started:.1f} s")


def test_background_full_finetune_loads_in_core_unetloader(comfyui, twin, trained_full, run_prompt):
    import comfy.supported_models
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    from segdrop.testing.comfy_checkpoint import TINY_CHECKPOINT

    started = time.time()
    single = trained_full["out"] / "unet_ldm.safetensors"
    with safe_open(str(single), framework="pt") as handle:
        metadata = handle.metadata() or {}
        keys = list(handle.keys())
    assert metadata.get("recipe") == "background" and metadata.get("in_channels") == "4"
    assert all(k.startswith(("input_blocks.", "middle_block.", "output_blocks.", "time_embed.", "out.")) for k in keys)
    tuned = UNet2DConditionModel.from_pretrained(trained_full["out"] / "model" / "unet", local_files_only=True,
                                                 use_safetensors=True).float().eval()

    folder = comfyui.cache / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"segdrop_background_unet_{uuid.uuid4().hex[:8]}.safetensors"
    shutil.copy2(single, folder / name)
    comfyui.folder_paths.add_model_folder_path("diffusion_models", str(folder))
    graph = {"1": {"class_type": "UNETLoader", "inputs": {"unet_name": name, "weight_dtype": "default"}},
             "0": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": TINY_CHECKPOINT}}}
    graph = with_sampler(graph, ["1", 0], ["0", 1], ["0", 2])
    try:
        with captured_warnings() as warnings:
            result = run_prompt(graph, fresh_cache=True)
    finally:
        (folder / name).unlink(missing_ok=True)
    model = result["1"][0]
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_config.unet_config["in_channels"] == 4 and not model.model.model_config.inpaint_model()
    leftover = [w for w in warnings if w.startswith(("unet missing", "unet unexpected"))]  # model_base.load_model_weights
    assert leftover == []

    x, t, ctx = sample_inputs(4)
    got = comfy_unet_forward(model, x, t, ctx)
    want = twin_forward(tuned, x, t, ctx)
    moved = (want - twin_forward(twin, x, t, ctx)).abs().max().item()
    delta = (got - want).abs().max().item()
    print(f"\nbackground full fine-tune (2 steps, trained in {trained_full['seconds']:.1f} s): UNETLoader vs "
          f"model/unet {delta:.2e} (fine-tune moved the output by {moved:.2e}); {len(keys)} LDM keys; dtype "
          f"{next(model.model.diffusion_model.parameters()).dtype}; ComfyUI part {time.time() - started:.1f} s")
    assert delta <= 1e-3 and moved > 10 * max(delta, 1e-6)
