"""Concat-conditioned UNet, the `inpaint` and `removal` recipes and `conditioned_sample`, on tiny models (16x16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from segdrop.training import train_inpaint, train_removal
from segdrop.training.bundle import ModelBundle, load_bundle, save_bundle
from segdrop.training.codec import PixelUnshuffleCodec
from segdrop.training.conditioned_unet import (
    conditioned_sample,
    gray_out,
    latent_mask,
    make_inpaint_unet,
    unet_input,
    widen_conv_in,
)
from segdrop.training.lora_adapter import load_lora_fallback
from segdrop.training.train_inpaint import random_masks
from segdrop.training.train_removal import augment_masks

SIZE = 16
torch.set_num_threads(1)


def tiny_t2i_bundle(folder: Path) -> Path:
    """A tiny random text-to-image SegDrop bundle (16x16 images, 12x8x8 latents) with the toy vocabulary."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from segdrop.toyworld import vocabulary
    from segdrop.training.tokenizer import write_word_tokenizer
    from segdrop.training.train_scratch import make_scheduler

    words = sorted({w.lower() for w in vocabulary()} | {"a", "photo", "of", "and"})
    write_word_tokenizer(words, folder / "tok", max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=12, out_channels=12, block_out_channels=(16, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                                norm_num_groups=8, cross_attention_dim=16)
    bundle = ModelBundle(unet, te, tokenizer, make_scheduler(), PixelUnshuffleCodec(2), SIZE,
                         {"vocabulary": words, "recipe": "scratch", "max_length": 16})
    return save_bundle(bundle, folder / "t2i")


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return tiny_t2i_bundle(tmp_path_factory.mktemp("t2i"))


@pytest.fixture(scope="module")
def toydata(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 6, size=SIZE, seed=0)


def inpaint_argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--steps", "4", "--batch_size", "3",
            "--checkpointing_steps", "2", "--warmup_steps", "1", "--lr", "1e-3", "--num_threads", "1", *extra]


@pytest.fixture(scope="module")
def inpaint_model(tmp_path_factory, t2i, toydata) -> Path:
    out = tmp_path_factory.mktemp("inp") / "run"
    assert train_inpaint.main(inpaint_argv(t2i, toydata, out)) == 0
    return out / "model"


def removal_argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--steps", "4", "--batch_size", "2",
            "--checkpointing_steps", "2", "--warmup_steps", "0", "--lr", "1e-3", "--num_threads", "1", *extra]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def assert_same_unet(a: Path, b: Path) -> None:
    sa, sb = load_bundle(a).unet.state_dict(), load_bundle(b).unet.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ------------------------------------------------------------------------------------------ conditioning pieces


def test_widening_keeps_the_text_to_image_output_for_any_conditioning(t2i):
    bundle = load_bundle(t2i)
    unet = bundle.unet
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 12, 8, 8, generator=g)
    hidden = torch.randn(2, 16, 16, generator=g)
    with torch.no_grad():
        before = unet(x, torch.tensor([10, 700]), hidden).sample
        make_inpaint_unet(unet, 12)
        assert unet.config.in_channels == 25 and unet.config.out_channels == 12 and unet.conv_in.in_channels == 25
        for _ in range(2):
            mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
            cond = torch.randn(2, 12, 8, 8, generator=g) * 3
            after = unet(unet_input(x, mask, cond), torch.tensor([10, 700]), hidden).sample
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="already takes 25"):
        make_inpaint_unet(unet, 12)
    with pytest.raises(ValueError, match=">= 1"):
        widen_conv_in(unet, 0)


def test_latent_mask_keeps_thin_objects_and_gray_out_only_touches_the_mask():
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[0, 0, :, 3] = True  # a 1-px vertical line
    lat = latent_mask(mask, 2)
    assert lat.shape == (1, 1, 4, 4)
    assert lat[0, 0, :, 1].tolist() == [1.0] * 4 and lat.sum() == 4
    images = torch.rand(1, 3, 8, 8)
    grey = gray_out(images, mask)
    assert torch.all(grey[:, :, mask[0, 0]] == 0.5) and torch.equal(grey[:, :, ~mask[0, 0]], images[:, :, ~mask[0, 0]])


def test_random_masks_are_seeded_and_varied():
    a = random_masks(torch.Generator().manual_seed(3), 32, 16, 3, 0.25)
    b = random_masks(torch.Generator().manual_seed(3), 32, 16, 3, 0.25)
    assert a.dtype == torch.bool and a.shape == (32, 1, 16, 16) and torch.equal(a, b)
    fractions = a.float().mean(dim=(1, 2, 3))
    assert (fractions == 1).any() and ((fractions > 0) & (fractions < 1)).sum() >= 16
    none_full = random_masks(torch.Generator().manual_seed(3), 32, 16, 3, 0.0)
    assert (none_full.float().mean(dim=(1, 2, 3)) < 1).all()


def test_mask_augmentation_dilates_and_erodes_but_never_empties():
    mask = torch.zeros(64, 1, 16, 16, dtype=torch.bool)
    mask[:, :, 5:11, 5:11] = True
    out = augment_masks(torch.Generator().manual_seed(0), mask, 2)
    areas = set(out.float().sum(dim=(1, 2, 3)).int().tolist())
    assert areas == {4, 16, 36, 64, 100}  # 6x6 eroded by 2/1, kept, dilated by 1/2 (square element)
    tiny = torch.zeros(8, 1, 16, 16, dtype=torch.bool)
    tiny[:, :, 7, 7] = True
    assert (augment_masks(torch.Generator().manual_seed(1), tiny, 2).sum(dim=(1, 2, 3)) >= 1).all()


# ------------------------------------------------------------------------------------------ inpaint recipe


def test_inpaint_recipe_writes_a_widened_bundle(inpaint_model, t2i):
    bundle = load_bundle(inpaint_model)
    assert bundle.unet.config.in_channels == 25 and bundle.unet.config.out_channels == 12
    info = bundle.info
    assert info["conditioning"] == "inpaint" and info["in_layout"] == "noise+mask+masked_image"
    assert info["gray_masked"] is True and info["steps"] == 4 and info["base"] == str(t2i)
    assert info["vocabulary"] == load_bundle(t2i).info["vocabulary"]
    # the text encoder is frozen: identical to the base's
    te_a, te_b = bundle.text_encoder.state_dict(), load_bundle(t2i).text_encoder.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)
    run = inpaint_model.parent
    assert len(losses(run)) == 4 and all(np.isfinite(losses(run)))


def test_inpaint_resume_is_exact(tmp_path, t2i, toydata, inpaint_model):
    out = tmp_path / "split"
    assert train_inpaint.main(inpaint_argv(t2i, toydata, out, "--steps", "2")) == 0
    assert train_inpaint.main(inpaint_argv(t2i, toydata, out, "--resume")) == 0
    np.testing.assert_allclose(losses(out), losses(inpaint_model.parent), rtol=0, atol=1e-6)
    assert_same_unet(out / "model", inpaint_model)


def test_inpaint_refuses_an_inpainting_base_and_missing_data(tmp_path, inpaint_model, toydata, capsys):
    assert train_inpaint.main(inpaint_argv(inpaint_model, toydata, tmp_path / "x")) == 2
    assert "already takes 25" in capsys.readouterr().err
    assert train_inpaint.main(["--base", str(inpaint_model), "--output_dir", str(tmp_path / "y")]) == 2
    assert "--data_dir" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ removal recipe


def test_removal_resume_is_exact_and_records_the_conditioning(tmp_path, inpaint_model, toydata):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_removal.main(removal_argv(inpaint_model, toydata, full)) == 0
    assert train_removal.main(removal_argv(inpaint_model, toydata, split, "--steps", "2")) == 0
    assert train_removal.main(removal_argv(inpaint_model, toydata, split, "--resume")) == 0
    np.testing.assert_allclose(losses(split), losses(full), rtol=0, atol=1e-6)
    assert_same_unet(split / "model", full / "model")
    info = load_bundle(full / "model").info
    assert info["conditioning"] == "removal" and info["in_layout"] == "noise+mask+image"
    assert info["gray_masked"] is False and info["lora"] is None and info["mask_augment_px"] == 2


def test_removal_gray_object_changes_training(tmp_path, inpaint_model, toydata):
    plain, grey = tmp_path / "plain", tmp_path / "grey"
    extra = ("--steps", "1", "--no-mask_augment")
    assert train_removal.main(removal_argv(inpaint_model, toydata, plain, *extra)) == 0
    assert train_removal.main(removal_argv(inpaint_model, toydata, grey, *extra, "--gray_object")) == 0
    assert losses(plain) != losses(grey)
    info = load_bundle(grey / "model").info
    assert info["gray_masked"] is True and info["mask_augment_px"] == 0


def test_removal_lora_trains_only_the_adapter_and_merges(tmp_path, inpaint_model, toydata):
    out = tmp_path / "lora"
    assert train_removal.main(removal_argv(inpaint_model, toydata, out, "--lora_rank", "2", "--steps", "2")) == 0
    base, tuned = load_bundle(inpaint_model).unet.state_dict(), load_bundle(out / "model").unet.state_dict()
    assert base.keys() == tuned.keys()  # merged: a plain UNet again
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".attn" in k and any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    assert not any(k.startswith("conv_in") for k in changed)
    info = load_bundle(out / "model").info
    assert info["lora"] == {"rank": 2, "alpha": 2, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert all(Path(p).is_file() for p in info["lora_files"].values())
    # the small adapter over the base gives the merged model back
    reloaded = load_lora_fallback(load_bundle(inpaint_model), out / "lora").unet.state_dict()
    assert reloaded.keys() == tuned.keys()
    assert max((reloaded[k] - tuned[k]).abs().max().item() for k in tuned) < 1e-6
    with pytest.raises(train_removal.ConfigError, match="no peft adapter"):
        load_lora_fallback(load_bundle(inpaint_model), tmp_path)


def test_removal_refuses_a_text_to_image_base_and_empty_triplet_folders(tmp_path, t2i, inpaint_model, toydata, capsys):
    assert train_removal.main(removal_argv(t2i, toydata, tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert "not an inpainting model" in err and "python -m segdrop.training inpaint" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_removal.main(removal_argv(inpaint_model, empty, tmp_path / "b")) == 2
    assert "no triplets" in capsys.readouterr().err
    assert train_removal.main(["--data_dir", str(toydata), "--output_dir", str(tmp_path / "c")]) == 2
    assert "--base" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ sampling


def test_conditioned_sample_shape_dtype_determinism(inpaint_model):
    bundle = load_bundle(inpaint_model)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
    masks = np.zeros((2, SIZE, SIZE), bool)
    masks[:, 4:10, 4:10] = True
    a = conditioned_sample(bundle, images, masks, steps=3, seed=5, gray_masked=False)
    b = conditioned_sample(bundle, images, masks, steps=3, seed=5, gray_masked=False)
    c = conditioned_sample(bundle, images, masks, steps=3, seed=6, gray_masked=False)
    g = conditioned_sample(bundle, images, masks, steps=3, seed=5, gray_masked=True)
    assert a.shape == (2, SIZE, SIZE, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, g)
    cfg = conditioned_sample(bundle, images, masks, prompt="a photo of a red circle", steps=2, guidance=3.0, gray_masked=False)
    assert cfg.shape == a.shape
    with pytest.raises(ValueError, match="resize"):
        conditioned_sample(bundle, np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 8, 8), bool), gray_masked=False)
    with pytest.raises(ValueError, match="not a concat-conditioned"):
        conditioned_sample(_t2i_like(bundle), images, masks, gray_masked=False)


def _t2i_like(bundle):
    """``bundle`` with a 12-channel (text-to-image) UNet, to check the sampler's refusal."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config({**bundle.unet.config, "in_channels": 12})
    return ModelBundle(unet, bundle.text_encoder, bundle.tokenizer, bundle.scheduler, bundle.codec, bundle.image_size, {})


def tiny_sd_inpainting_folder(folder: Path, t2i: Path) -> Path:
    """A diffusers-style SD inpainting folder in miniature: 9-channel UNet, 4-channel AutoencoderKL (factor 2)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    src = load_bundle(t2i)
    torch.manual_seed(0)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                        norm_num_groups=4, sample_size=SIZE)
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=9, out_channels=4, block_out_channels=(16, 16),
                                layers_per_block=1, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(1, 2),
                                norm_num_groups=8, cross_attention_dim=16)
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    src.text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    src.tokenizer.save_pretrained(folder / "tokenizer")
    src.scheduler.save_pretrained(folder / "scheduler")
    return folder


def test_removal_from_a_diffusers_inpainting_folder_with_a_vae(tmp_path, t2i, toydata):
    base = tiny_sd_inpainting_folder(tmp_path / "sd_inpaint", t2i)
    out = tmp_path / "run"
    assert train_removal.main(removal_argv(base, toydata, out, "--steps", "2", "--lora_rank", "2")) == 0
    bundle = load_bundle(out / "model")
    assert bundle.codec.latent_channels == 4 and bundle.unet.config.in_channels == 9 and bundle.image_size == SIZE
    assert bundle.info["conditioning"] == "removal" and len(losses(out)) == 2
    masks = np.zeros((1, SIZE, SIZE), bool)
    masks[0, 2:6, 2:6] = True
    image = conditioned_sample(bundle, np.full((1, SIZE, SIZE, 3), 128, np.uint8), masks, steps=2, gray_masked=False)
    assert image.shape == (1, SIZE, SIZE, 3) and image.dtype == np.uint8


@pytest.mark.parametrize("name, module", [("toy_inpaint", train_inpaint), ("toy_removal", train_removal),
                                          ("toy_removal_lora", train_removal)])
def test_toy_configs_parse_and_flags_override(name, module):
    config_path = Path(module.__file__).parent / "configs" / f"{name}.toml"
    args = module.build_parser().parse_args(["--config", str(config_path), "--steps", "7", "--base", "somewhere"])
    config = module.resolve(args)
    assert config.steps == 7 and config.base.endswith("somewhere") and config.batch_size == 16
    if name == "toy_removal_lora":
        assert config.lora_rank == 8 and config.lora_targets == ["to_q", "to_k", "to_v", "to_out.0"]


def test_the_removal_table_rows_run_on_recipe_models(tmp_path, inpaint_model, toydata):
    """The demo's six removal rows on tiny models made by the recipes, laid out as models/toy_* are."""
    import shutil

    from segdrop.demo import from_scene
    from segdrop.demo.removal import TOY_MODELS, evaluate_removal, toy_removers
    from segdrop.toyworld import make_scene

    models = tmp_path / "models"
    shutil.copytree(inpaint_model, models / "toy_inpaint")
    for name, extra in (("toy_removal", ()), ("toy_removal_grayed", ("--gray_object",)),
                        ("toy_removal_lora", ("--lora_rank", "2"))):
        assert train_removal.main(removal_argv(inpaint_model, toydata, tmp_path / name, "--steps", "2", *extra)) == 0
        shutil.copytree(tmp_path / name / ("lora" if "lora" in name else "model"), models / name)
    assert sorted(p.name for p in models.iterdir()) == sorted(TOY_MODELS)
    items = [from_scene(make_scene(seed, size=SIZE, background="floor")) for seed in range(3)]
    table, outputs = evaluate_removal(toy_removers(models, steps=2), items, batch=2)
    assert list(table) == ["input", "inpaint", "inpaint_dilated", "objectdrop", "objectdrop_lora", "objectdrop_grayed"]
    assert table["input"]["effect_error_removed"] == 0.0
    images = [np.rint(item.rgb * 255).astype(np.uint8) for item in items]
    for k, item in enumerate(items):  # stock inpainting changes nothing outside the object mask
        outside = ~item.foreground
        assert np.array_equal(outputs["inpaint"][k][outside], images[k][outside])
    with pytest.raises(FileNotFoundError, match="toy removal models"):
        toy_removers(tmp_path / "nowhere")

    from segdrop.demo.job import DemoConfig, run_removal, section_results
    from segdrop.demo.report import removal_markdown

    config = DemoConfig(out=tmp_path / "demo", removal_models=models, removal_scenes=2, removal_steps=2, panels=1)
    config.out.mkdir()
    removal = run_removal(config)
    assert removal["scenes"] == 2 and set(removal["rows"]) == set(table)
    assert (config.out / "removal_00.png").is_file() and not (config.out / "removal_01.png").exists()
    flat = section_results("removal", removal)  # results.json: removal = {row: scores}, removal_settings beside it
    assert set(flat["removal"]) == set(table) and set(flat["removal"]["objectdrop"]) == set(table["objectdrop"])
    assert flat["removal_settings"] == {"scenes": 2, "steps": 2}
    assert "| objectdrop_grayed |" in "\n".join(removal_markdown(flat["removal"], flat["removal_settings"]))
    skipped = section_results("removal", run_removal(DemoConfig(out=config.out, removal_models=tmp_path / "nowhere")))
    assert "removal" not in skipped and "toy_inpaint" in skipped["removal_settings"]["skipped"]
    assert "Skipped" in "\n".join(removal_markdown(None, skipped["removal_settings"]))


def test_conv_in_can_learn_faster_than_the_body(t2i):
    from segdrop.training.conditioned_unet import make_inpaint_unet
    from segdrop.training.train_conditioned import parameter_groups

    unet = make_inpaint_unet(load_bundle(t2i).unet, 12)
    params = list(unet.parameters())
    assert parameter_groups(unet, params, 1e-4, 1.0) == [{"params": params}]
    body, fast = parameter_groups(unet, params, 1e-4, 10.0)
    assert {id(p) for p in fast["params"]} == {id(p) for p in unet.conv_in.parameters()} and fast["lr"] == 1e-3
    assert len(body["params"]) + len(fast["params"]) == len(params) and "lr" not in body


def test_v_prediction_training_learns_the_velocity_and_is_saved(tmp_path, t2i, toydata):
    """--prediction_type v_prediction: the loss targets the velocity, the bundle's scheduler and card say so, and a
    recipe on that base keeps it (the removal models inherit the inpainting model's parametrisation)."""
    from diffusers import DDPMScheduler

    from segdrop.training.train_conditioned import training_objective

    out = tmp_path / "v"
    assert train_inpaint.main(inpaint_argv(t2i, toydata, out, "--prediction_type", "v_prediction")) == 0
    bundle = load_bundle(out / "model")
    assert bundle.scheduler.config.prediction_type == "v_prediction"
    assert bundle.info["prediction_type"] == "v_prediction"
    removal = tmp_path / "removal"
    assert train_removal.main(removal_argv(out / "model", toydata, removal)) == 0
    assert load_bundle(removal / "model").scheduler.config.prediction_type == "v_prediction"

    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", prediction_type="v_prediction")
    latents, noise, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.tensor([10, 900])
    a = scheduler.alphas_cumprod[t].sqrt()[:, None, None, None]
    s = (1 - scheduler.alphas_cumprod[t]).sqrt()[:, None, None, None]
    torch.testing.assert_close(training_objective(scheduler, latents, noise, t), a * noise - s * latents)
    scheduler.register_to_config(prediction_type="epsilon")
    assert training_objective(scheduler, latents, noise, t) is noise


def test_min_snr_weights_follow_the_prediction_type():
    from diffusers import DDPMScheduler

    from segdrop.training.loop import min_snr_weights

    t = torch.tensor([1, 500, 999])
    eps = DDPMScheduler(beta_schedule="scaled_linear", prediction_type="epsilon")
    v = DDPMScheduler(beta_schedule="scaled_linear", prediction_type="v_prediction")
    snr = eps.alphas_cumprod[t] / (1 - eps.alphas_cumprod[t])
    torch.testing.assert_close(min_snr_weights(eps, t, 5.0), snr.clamp(max=5.0) / snr)
    torch.testing.assert_close(min_snr_weights(v, t, 5.0), snr.clamp(max=5.0) / (snr + 1))


def test_unknown_prediction_type_is_refused(tmp_path, t2i, toydata, capsys):
    assert train_inpaint.main(inpaint_argv(t2i, toydata, tmp_path / "x", "--prediction_type", "sample")) == 2
    assert "prediction_type must be one of" in capsys.readouterr().err
