"""The `removal` recipe from a single-file SD1.x inpainting checkpoint (LDM/CompVis layout, as ComfyUI's
checkpoints folder holds) + ``--base_config`` (a diffusers folder with the configs and tokenizer), offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from segdrop.training import train_removal
from segdrop.training.bundle import BundleError, load_bundle
from segdrop.training.export import unet_state_dict_to_ldm

from .test_train_objectdrop import SIZE, losses, removal_argv, tiny_sd_inpainting_folder, tiny_t2i_bundle

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub
torch.set_num_threads(1)


def vae_state_dict_to_ldm(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL state dict in the LDM ``first_stage_model`` names (the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``; attention projections become 1x1 convolutions)."""
    n_up = len(config["up_block_types"])
    renames = [("conv_norm_out.", "norm_out."), ("conv_shortcut.", "nin_shortcut."),
               ("mid_block.attentions.0.group_norm.", "mid.attn_1.norm."),
               ("mid_block.attentions.0.to_q.", "mid.attn_1.q."), ("mid_block.attentions.0.to_k.", "mid.attn_1.k."),
               ("mid_block.attentions.0.to_v.", "mid.attn_1.v."),
               ("mid_block.attentions.0.to_out.0.", "mid.attn_1.proj_out."),
               ("mid_block.resnets.0.", "mid.block_1."), ("mid_block.resnets.1.", "mid.block_2.")]
    for i in range(len(config["down_block_types"])):
        renames += [(f"encoder.down_blocks.{i}.resnets.", f"encoder.down.{i}.block."),
                    (f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample.")]
    for i in range(n_up):
        renames += [(f"decoder.up_blocks.{i}.resnets.", f"decoder.up.{n_up - 1 - i}.block."),
                    (f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n_up - 1 - i}.upsample.")]
    out = {}
    for key, value in state.items():
        new = key
        for old, ldm in renames:
            new = new.replace(old, ldm)
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[new] = value
    return out


def write_single_file(folder: Path, path: Path, unet=None) -> Path:
    """``folder``'s UNet (or ``unet``), VAE and text encoder as ONE LDM-layout ``.safetensors`` checkpoint."""
    from safetensors.torch import save_file

    bundle = load_bundle(folder)
    unet = unet if unet is not None else bundle.unet
    state = {f"model.diffusion_model.{k}": v
             for k, v in unet_state_dict_to_ldm(unet.state_dict(), dict(unet.config)).items()}
    vae = bundle.codec.vae
    state.update({f"first_stage_model.{k}": v for k, v in vae_state_dict_to_ldm(vae.state_dict(), vae.config).items()})
    te = bundle.text_encoder.state_dict()
    state.update({"cond_stage_model.transformer." + (k if k.startswith("text_model.") else f"text_model.{k}"): v
                  for k, v in te.items()})  # the original SD1.x names (transformers >= 5.6 drops text_model.)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def same_state(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sf")
    return tiny_sd_inpainting_folder(root / "sd_inpaint", tiny_t2i_bundle(root))


@pytest.fixture(scope="module")
def single_file(sd_folder) -> Path:
    return write_single_file(sd_folder, sd_folder.parent / "sd15_inpaint_tiny.safetensors")


@pytest.fixture(scope="module")
def toydata(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 6, size=SIZE, seed=0)


def test_single_file_loads_as_the_diffusers_folder(sd_folder, single_file):
    folder, loaded = load_bundle(sd_folder), load_bundle(single_file, config=sd_folder)
    assert same_state(loaded.unet, folder.unet) and same_state(loaded.codec.vae, folder.codec.vae)
    assert same_state(loaded.text_encoder, folder.text_encoder)
    assert loaded.unet.config.in_channels == 9 and loaded.image_size == folder.image_size == SIZE
    assert loaded.codec.config() == folder.codec.config()
    assert loaded.token_ids("a photo").tolist() == folder.token_ids("a photo").tolist()
    assert loaded.info["source"] == "single_file" and loaded.info["single_file"] == str(single_file)
    with pytest.raises(BundleError, match="only used with a single-file"):
        load_bundle(sd_folder, config=sd_folder)


def test_removal_trains_from_a_single_file_base(tmp_path, monkeypatch, sd_folder, single_file, toydata):
    loaded = {}
    original = train_removal.load_base

    def spy(*args, **kwargs):
        bundle = original(*args, **kwargs)
        loaded["unet"] = {k: v.clone() for k, v in bundle.unet.state_dict().items()}
        return bundle

    monkeypatch.setattr(train_removal, "load_base", spy)
    out = tmp_path / "run"
    argv = removal_argv(single_file, toydata, out, "--steps", "2", "--base_config", str(sd_folder))
    assert train_removal.main(argv) == 0
    reference = load_bundle(sd_folder).unet.state_dict()  # before training: the folder's weights exactly
    assert loaded["unet"].keys() == reference.keys()
    assert all(torch.equal(loaded["unet"][k], reference[k]) for k in reference)
    assert len(losses(out)) == 2
    model = load_bundle(out / "model")
    assert model.unet.config.in_channels == 9 and model.codec.latent_channels == 4 and model.image_size == SIZE
    assert model.info["conditioning"] == "removal"
    trained = model.unet.state_dict()
    assert any(not torch.equal(trained[k].float(), reference[k]) for k in reference)  # it trained
    assert (out / "unet_ldm.safetensors").is_file()  # SD layout: the single-file UNet export too


def test_single_file_errors_are_clear(tmp_path, capsys, sd_folder, single_file, toydata):
    def error(*extra: str, base: Path = single_file) -> str:
        assert train_removal.main(removal_argv(base, toydata, tmp_path / "run", "--steps", "1", *extra)) == 2
        return capsys.readouterr().err

    assert "--base_config DIR" in error()  # a single file without its config folder
    with pytest.raises(BundleError, match="holds weights only.*--base_config"):
        load_bundle(single_file)
    assert "does not exist" in error("--base_config", str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    assert "has no model_index.json" in error("--base_config", str(tmp_path / "empty"))
    assert "only for a single-file" in error("--base_config", str(sd_folder), base=sd_folder)

    ckpt = tmp_path / "sd15_inpaint.ckpt"
    ckpt.write_bytes(b"not unpickled")
    assert "pickle" in error("--base_config", str(sd_folder), base=ckpt)
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(ckpt, config=sd_folder)

    from diffusers import UNet2DConditionModel

    t2i_unet = UNet2DConditionModel.from_config({**load_bundle(sd_folder).unet.config, "in_channels": 4})
    t2i_file = write_single_file(sd_folder, tmp_path / "sd15_t2i.safetensors", unet=t2i_unet)
    message = error("--base_config", str(sd_folder), base=t2i_file)
    assert "4 input channels (text-to-image)" in message and "9 (inpainting)" in message
    assert not (tmp_path / "run").exists()  # refused before the run folder is touched

    from safetensors.torch import load_file, save_file

    unet_only = {k: v for k, v in load_file(str(single_file)).items() if k.startswith("model.diffusion_model.")}
    save_file(unet_only, str(tmp_path / "unet_only.safetensors"))
    assert "no VAE first_stage_model" in error("--base_config", str(sd_folder), base=tmp_path / "unet_only.safetensors")
