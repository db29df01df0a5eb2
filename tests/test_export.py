"""training.export without ComfyUI: kohya (LDM names) and diffusers LoRA files, LDM single-file UNets."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from segdrop.testing.tiny_models import tiny_sd15_unet, tiny_sdxl_unet
from segdrop.training.export import (
    DIFFUSERS_FILE,
    KOHYA_FILE,
    diffusers_to_ldm_map,
    kohya_delta,
    save_lora,
    save_unet_single_file,
    unet_state_dict_to_ldm,
)

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1"]


def lora_unet(in_channels=9, alpha=8, rank=4, seed=0):
    from peft import LoraConfig

    unet = tiny_sd15_unet(in_channels=in_channels, layers_per_block=1)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="gaussian"))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if "lora_B" in name:  # non-zero up weights, so the LoRA changes the output
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return unet.eval()


def inputs(unet, batch=1):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(batch, unet.config.in_channels, 16, 16, generator=generator)
    ctx = torch.randn(batch, 5, unet.config.cross_attention_dim, generator=generator)
    return x, torch.tensor([500] * batch), ctx


def test_ldm_map_covers_every_key_uniquely():
    for unet in (tiny_sd15_unet(layers_per_block=1), tiny_sd15_unet(), tiny_sdxl_unet()):
        ldm = unet_state_dict_to_ldm(unet.state_dict(), dict(unet.config))
        assert len(ldm) == len(unet.state_dict())
    mapping = diffusers_to_ldm_map(dict(tiny_sd15_unet().config))  # SD1.5 layout: 2 resnets per level
    assert mapping["down_blocks.0.attentions.0"] == "input_blocks.1.1"
    assert mapping["down_blocks.1.attentions.1"] == "input_blocks.5.1"
    assert mapping["down_blocks.0.downsamplers.0.conv"] == "input_blocks.3.0.op"
    assert mapping["up_blocks.0.upsamplers.0.conv"] == "output_blocks.2.1.conv"  # UpBlock2D: no attention
    assert mapping["up_blocks.1.upsamplers.0.conv"] == "output_blocks.5.2.conv"
    assert mapping["up_blocks.3.attentions.2"] == "output_blocks.11.1"
    assert mapping["down_blocks.0.resnets.0.conv1"] == "input_blocks.1.0.in_layers.2"


def test_kohya_round_trip_equals_peft_merge(tmp_path):
    unet = lora_unet(alpha=8, rank=4)  # scale 2: alpha must be carried
    paths = save_lora(unet, tmp_path, {"base": "tiny", "steps": 2, "dataset": "synthetic", "recipe": "objectdrop"})
    assert paths == {"kohya": tmp_path / KOHYA_FILE, "diffusers": tmp_path / DIFFUSERS_FILE}
    tensors = load_file(str(paths["kohya"]))
    with safe_open(str(paths["kohya"]), "pt") as handle:
        meta = handle.metadata()
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "8" and meta["base"] == "tiny"
    assert meta["steps"] == "2" and meta["recipe"] == "objectdrop"
    keys = {k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in tensors}
    assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_", "lora_unet_output_blocks_")) for k in keys)
    assert "lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q" in keys
    assert "lora_unet_output_blocks_3_1_transformer_blocks_0_attn2_to_out_0" in keys
    n_modules = sum(1 for n, _ in unet.named_modules() if n.endswith(".base_layer"))
    assert len(keys) == n_modules and len(tensors) == 3 * n_modules

    base = {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}
    ldm_base = unet_state_dict_to_ldm(base, dict(unet.config))
    unet.fuse_lora() if hasattr(unet, "fuse_lora") else None
    merged = {k.replace(".base_layer", ""): v for k, v in unet.state_dict().items() if "lora_" not in k}
    ldm_merged = unet_state_dict_to_ldm(merged, dict(unet.config))
    worst = 0.0
    for key in keys:
        weight = key[len("lora_unet_"):]
        ldm_key = next(k for k in ldm_base if k.replace(".", "_") == weight + "_weight")
        patched = ldm_base[ldm_key] + kohya_delta(tensors, key)
        worst = max(worst, (patched - ldm_merged[ldm_key]).abs().max().item())
    assert worst <= 1e-6, worst
    assert max((ldm_merged[k] - ldm_base[k]).abs().max().item() for k in ldm_base) > 1e-3


def test_diffusers_file_loads_into_fresh_unet(tmp_path):
    unet = lora_unet(alpha=8, rank=4)
    x, t, ctx = inputs(unet)
    with torch.no_grad():
        expected = unet(x, t, ctx).sample
        unet.disable_adapters()
        plain = unet(x, t, ctx).sample
        unet.enable_adapters()
    paths = save_lora(unet, tmp_path)
    fresh = tiny_sd15_unet(in_channels=9, layers_per_block=1)
    fresh.load_lora_adapter(str(tmp_path), weight_name=DIFFUSERS_FILE, prefix="unet", adapter_name="x")
    with torch.no_grad():
        got = fresh(x, t, ctx).sample
    assert (got - expected).abs().max().item() <= 1e-5
    assert (plain - expected).abs().max().item() > 1e-3
    assert paths["diffusers"].is_file()


def test_pipeline_load_lora_weights(tmp_path):
    from diffusers import StableDiffusionPipeline

    unet = lora_unet(in_channels=4)
    save_lora(unet, tmp_path)
    out = StableDiffusionPipeline.lora_state_dict(str(tmp_path), return_lora_metadata=True)
    state, metadata = out[0], out[-1]
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in state)
    assert metadata and metadata.get("unet.r") == 4 and metadata.get("unet.lora_alpha") == 8, metadata


def test_single_file_is_ldm_and_round_trips(tmp_path):
    unet = tiny_sd15_unet(in_channels=9, layers_per_block=1)
    path = save_unet_single_file(unet, tmp_path / "unet.safetensors", {"base": "tiny"})
    sd = load_file(str(path))
    assert sd["input_blocks.0.0.weight"].shape[1] == 9
    assert "middle_block.1.transformer_blocks.0.attn1.to_q.weight" in sd
    assert len(sd) == len(unet.state_dict())
    assert not any(k.startswith(("down_blocks", "up_blocks", "mid_block")) for k in sd)


def test_toy_layout_is_refused(tmp_path):
    unet = tiny_sd15_unet(in_channels=12)
    with pytest.raises(ValueError, match="diffusers folders only"):
        save_unet_single_file(unet, tmp_path / "toy.safetensors")
    assert not (tmp_path / "toy.safetensors").exists()


def test_lora_without_adapter_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no peft LoRA"):
        save_lora(tiny_sd15_unet(), tmp_path)
