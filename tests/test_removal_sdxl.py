"""The removal recipe on an SDXL inpainting base (added text/time conditioning), on a tiny diffusers folder (16x16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from segdrop.training import train_removal
from segdrop.training.bundle import load_bundle
from segdrop.training.conditioned_unet import conditioned_sample
from segdrop.training.loop import ConfigError
from segdrop.training.train_conditioned import load_base

SIZE = 16
torch.set_num_threads(1)


def tiny_sdxl_inpainting_folder(folder: Path) -> Path:
    """A diffusers StableDiffusionXLInpaintPipeline folder in miniature: 9-channel ``text_time`` UNet, two CLIP text
    encoders (the second with projection) over a word-level tokenizer, a 4-channel AutoencoderKL (factor 2) with
    SDXL's scaling factor."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from segdrop.toyworld import vocabulary
    from segdrop.training.tokenizer import write_word_tokenizer
    from segdrop.training.train_scratch import make_scheduler

    words = sorted({w.lower() for w in vocabulary()} | {"a", "photo", "of", "and"})
    write_word_tokenizer(words, folder / "tok", max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)

    def clip(cls, hidden: int, seed: int, **extra):
        torch.manual_seed(seed)
        return cls(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                                  num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  pad_token_id=tokenizer.pad_token_id, **extra))

    te1 = clip(CLIPTextModel, 8, 1)
    te2 = clip(CLIPTextModelWithProjection, 16, 2, projection_dim=12)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=SIZE, scaling_factor=0.13025)
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=9, out_channels=4, block_out_channels=(16, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                                transformer_layers_per_block=(1, 2), use_linear_projection=True,
                                norm_num_groups=8, cross_attention_dim=8 + 16, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=12 + 6 * 8)
    dst = folder / "sdxl_inpaint"
    dst.mkdir(parents=True)
    (dst / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLInpaintPipeline"}))
    unet.save_pretrained(dst / "unet", safe_serialization=True)
    vae.save_pretrained(dst / "vae", safe_serialization=True)
    te1.save_pretrained(dst / "text_encoder", safe_serialization=True)
    te2.save_pretrained(dst / "text_encoder_2", safe_serialization=True)
    tokenizer.save_pretrained(dst / "tokenizer")
    tokenizer.save_pretrained(dst / "tokenizer_2")
    make_scheduler().save_pretrained(dst / "scheduler")
    return dst


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory) -> Path:
    return tiny_sdxl_inpainting_folder(tmp_path_factory.mktemp("sdxl"))


@pytest.fixture(scope="module")
def toydata(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 4, size=SIZE, seed=0)


def argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--steps", "2", "--batch_size", "2",
            "--checkpointing_steps", "1", "--warmup_steps", "0", "--lr", "1e-3", "--num_threads", "1", *extra]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def test_sdxl_conditioning_matches_diffusers_pipeline(sdxl):
    """The bundle's empty-prompt embeddings and time ids are what StableDiffusionXLInpaintPipeline computes."""
    from diffusers import StableDiffusionXLInpaintPipeline

    bundle = load_base(str(sdxl), allow_sdxl=True)
    assert bundle.is_sdxl and bundle.codec.scaling_factor == pytest.approx(0.13025) and bundle.image_size == SIZE
    pipe = StableDiffusionXLInpaintPipeline(vae=bundle.codec.vae, text_encoder=bundle.text_encoder,
                                            text_encoder_2=bundle.text_encoder_2, tokenizer=bundle.tokenizer,
                                            tokenizer_2=bundle.tokenizer_2, unet=bundle.unet, scheduler=bundle.scheduler)
    embeds, _, pooled, _ = pipe.encode_prompt("", device="cpu", num_images_per_prompt=1,
                                              do_classifier_free_guidance=False)
    added = bundle.added_cond_kwargs([""])
    assert torch.equal(bundle.encode_prompt([""]), embeds) and torch.equal(added["text_embeds"], pooled)
    ids, _ = pipe._get_add_time_ids((SIZE, SIZE), (0, 0), (SIZE, SIZE), 6.0, 2.5, (SIZE, SIZE), (0, 0), (SIZE, SIZE),
                                    dtype=torch.float32, text_encoder_projection_dim=12)
    assert torch.equal(added["time_ids"], ids)


def test_other_recipes_still_refuse_sdxl_bases(sdxl):
    with pytest.raises(ConfigError, match="added conditioning"):
        load_base(str(sdxl))


def test_removal_from_sdxl_inpainting_trains_resumes_exactly_and_samples(tmp_path, sdxl, toydata):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_removal.main(argv(sdxl, toydata, full)) == 0
    assert train_removal.main(argv(sdxl, toydata, split, "--steps", "1")) == 0
    assert train_removal.main(argv(sdxl, toydata, split, "--resume")) == 0
    assert len(losses(full)) == 2 and all(np.isfinite(losses(full)))
    np.testing.assert_allclose(losses(split), losses(full), rtol=0, atol=1e-6)

    base, tuned = load_bundle(sdxl), load_bundle(full / "model")
    sa, sb, sc = base.unet.state_dict(), tuned.unet.state_dict(), load_bundle(split / "model").unet.state_dict()
    assert sb.keys() == sc.keys() and all(torch.equal(sb[k], sc[k]) for k in sb)
    assert any(not torch.equal(sa[k], sb[k]) for k in sa)  # it trained
    assert any(not torch.equal(sa[k], sb[k]) for k in sa if k.startswith("add_embedding"))  # incl. the added path
    # the derived bundle keeps the SDXL parts and the VAE's scaling factor
    assert tuned.is_sdxl and tuned.codec.scaling_factor == pytest.approx(0.13025)
    assert tuned.unet.config.addition_embed_type == "text_time" and tuned.image_size == SIZE
    assert tuned.info["conditioning"] == "removal" and tuned.info["prompt"] == ""
    # full fine-tune: the SDXL single-file UNet (LDM keys, label_emb = the added embedding)
    with safe_open(tuned.info["export_files"]["single_file"], "pt") as f:
        keys = set(f.keys())
    assert "label_emb.0.0.weight" in keys and "input_blocks.0.0.weight" in keys

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[:, 4:10, 4:10] = True
    a = conditioned_sample(tuned, images, masks, steps=2, seed=1, gray_masked=False)
    b = conditioned_sample(tuned, images, masks, steps=2, seed=1, gray_masked=False)
    assert a.shape == (2, SIZE, SIZE, 3) and a.dtype == np.uint8 and np.array_equal(a, b)
    cfg = conditioned_sample(tuned, images, masks, prompt="a photo of a red circle", steps=2, guidance=3.0,
                             gray_masked=False)
    assert cfg.shape == a.shape


def test_removal_lora_on_sdxl_exports_kohya_and_merges(tmp_path, sdxl, toydata):
    out = tmp_path / "lora"
    assert train_removal.main(argv(sdxl, toydata, out, "--lora_rank", "2", "--checkpointing_steps", "2")) == 0
    assert all(np.isfinite(losses(out)))
    base, tuned = load_bundle(sdxl).unet.state_dict(), load_bundle(out / "model").unet.state_dict()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    files = load_bundle(out / "model").info["lora_files"]
    assert set(files) == {"kohya", "diffusers"}
    with safe_open(files["kohya"], "pt") as f:
        keys = list(f.keys())
    # the deeper block's second transformer layer has its own LDM/kohya name
    assert "lora_unet_input_blocks_3_1_transformer_blocks_1_attn1_to_q.lora_down.weight" in keys
    assert all(k.startswith("lora_unet_") for k in keys)
