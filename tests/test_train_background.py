"""Concept distillation's background fine-tuning: the rectangle sampler, the masked loss, the sampler's batches and
the `background` recipe (resume, LoRA, EMA, SD-layout export, refusals), on tiny models (16x16, 8x8 latents)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdrop.distill.rectangles import RectangleBounds, sample_background_rectangle
from segdrop.training import train_background
from segdrop.training.bundle import load_bundle, save_bundle
from segdrop.training.train_background import DistillationSampler, ParameterEma, masked_loss

from .test_train_objectdrop import SIZE, assert_same_unet, losses, tiny_t2i_bundle

torch.set_num_threads(1)
LATENT = SIZE // 2
COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


# ------------------------------------------------------------------------------------------ fixtures


def write_mask_folder(root: Path, n: int = 6, latent: int = LATENT, image: int = SIZE, seed: int = 0,
                      full_object: bool = False) -> Path:
    """Images with a coloured square object on grey noise, M_pre = the object's latent cells (L 0/255)."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "prelim").mkdir()
    lines = []
    for i in range(n):
        colour = list(COLOURS)[i % len(COLOURS)]
        rgb = rng.integers(100, 140, (image, image, 3)).astype(np.uint8)
        prelim = np.zeros((latent, latent), np.uint8)
        if full_object:
            prelim[:] = 255
        else:
            side = latent // 4 + i % 2
            top, left = rng.integers(0, latent - side, 2)
            prelim[top:top + side, left:left + side] = 255
        f = image // latent
        rgb[np.kron(prelim > 0, np.ones((f, f), bool))] = COLOURS[colour]
        Image.fromarray(rgb).save(root / "images" / f"{i:03d}.png")
        Image.fromarray(prelim, mode="L").save(root / "prelim" / f"{i:03d}.png")
        lines.append(json.dumps({"id": f"{i:03d}", "image": f"images/{i:03d}.png", "prelim": f"prelim/{i:03d}.png",
                                 "caption": f"a photo of a {colour} square"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return tiny_t2i_bundle(tmp_path_factory.mktemp("t2i"))


@pytest.fixture(scope="module")
def masks(tmp_path_factory) -> Path:
    return write_mask_folder(tmp_path_factory.mktemp("masks") / "data")


def argv(base: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--steps", "4", "--batch_size", "3",
            "--checkpointing_steps", "2", "--lr", "1e-3", "--num_threads", "1", "--foreground_prompt", "{caption}",
            "--background_prompt", "", *extra]


EMA = ("--ema_decay", "0.9", "--checkpointing_steps", "1", "--checkpoints_total_limit", "4")


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, t2i, masks) -> Path:
    out = tmp_path_factory.mktemp("bg") / "full"
    assert train_background.main(argv(t2i, masks, out, *EMA)) == 0
    return out


# ------------------------------------------------------------------------------------------ rectangles


def test_bounds_scale_per_axis_from_the_papers_64x64():
    paper = RectangleBounds()
    assert (paper.min_rows, paper.min_area, paper.max_rows, paper.max_area, paper.max_tries) == (10, 256, 32, 1024, 100)
    toy = paper.for_latent(32, 32)
    assert (toy.min_rows, toy.min_cols, toy.min_area, toy.max_rows, toy.max_cols, toy.max_area) == (5, 5, 64, 16, 16, 256)
    assert toy.grid == (32, 32) and toy.min_background == pytest.approx(2 / 3)
    wide = paper.for_latent(32, 128)
    assert (wide.min_rows, wide.min_cols, wide.max_rows, wide.max_cols) == (5, 20, 16, 64)
    assert wide.min_area == 256 * 0.5 * 2 and wide.max_area == 1024
    assert paper.for_latent(64, 64) == paper and toy.for_latent(64, 64) == paper  # rescaling composes
    g = torch.Generator().manual_seed(0)
    for _ in range(50):  # a non-square grid: boxes follow the per-axis rules
        mask = sample_background_rectangle(torch.ones(32, 128, dtype=torch.bool), g, wide)
        top, bottom, left, right = _box_of(mask)
        rows, cols = bottom - top, right - left
        assert rows > 5 and cols > 20 and 256 <= rows * cols <= 1024 and not (rows > 16 and cols > 64)
    with pytest.raises(ValueError, match="for_latent"):
        sample_background_rectangle(torch.ones(8, 8, dtype=torch.bool), torch.Generator(), paper)


def _box_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
    return rows.min().item(), rows.max().item(), cols.min().item(), cols.max().item()


def test_every_accepted_box_follows_the_rules():
    bounds = RectangleBounds().for_latent(32, 32)
    background = torch.ones(32, 32, dtype=torch.bool)
    background[6:20, 9:25] = False  # the object
    g = torch.Generator().manual_seed(0)
    accepted = 0
    for _ in range(300):
        mask = sample_background_rectangle(background, g, bounds)
        assert mask.dtype == torch.bool and mask.shape == (32, 32)
        assert not (mask & ~background).any()  # mask is a subset of the background
        if torch.equal(mask, background):
            continue  # the 100-failure fallback
        accepted += 1
        top, bottom, left, right = _box_of(mask)
        rows, cols = bottom - top, right - left
        # the box's corners are background cells, so its extent is that of the mask (no +1 in rows / cols)
        assert rows > 5 and cols > 5 and rows * cols >= 64 and not (rows > 16 and cols > 16) and rows * cols <= 256
        box = torch.zeros_like(background)
        box[top:bottom + 1, left:right + 1] = True
        assert torch.equal(mask, box & background)  # box AND background: no object cell
        assert (box & background).sum().item() / (rows * cols) >= 2 / 3
    assert accepted > 200


def test_fallback_to_the_whole_background_and_the_all_foreground_case():
    bounds = RectangleBounds().for_latent(32, 32)
    line = torch.zeros(32, 32, dtype=torch.bool)
    line[:, 7] = True  # a 1-px background column: every box has cols = 0, all 100 tries fail
    assert torch.equal(sample_background_rectangle(line, torch.Generator().manual_seed(1), bounds), line)
    assert not sample_background_rectangle(np.zeros((32, 32), bool), torch.Generator(), bounds).any()
    one = np.zeros((32, 32), bool)
    one[3, 3] = True  # one background cell: no two distinct corners, the reference returns zeros too
    assert not sample_background_rectangle(one, torch.Generator(), bounds).any()


def test_rectangles_are_deterministic_per_seed_and_vary_across_seeds():
    background = np.ones((32, 32), bool)
    background[10:16, 10:16] = False
    draw = lambda seed: sample_background_rectangle(background, torch.Generator().manual_seed(seed))  # noqa: E731
    assert torch.equal(draw(3), draw(3))
    assert len({tuple(draw(s).flatten().tolist()) for s in range(8)}) > 4


# ------------------------------------------------------------------------------------------ loss and batches


def test_masked_loss_is_the_mean_over_all_elements_and_only_masked_ones_give_gradients():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 6, 6, generator=g, requires_grad=True)
    target = torch.randn(3, 4, 6, 6, generator=g)
    mask = (torch.rand(3, 1, 6, 6, generator=g) > 0.6).float()
    loss = masked_loss(pred, target, mask)
    reference = ((pred.detach() - target) ** 2 * mask).sum() / pred.numel()  # NOT divided by the mask area
    torch.testing.assert_close(loss.detach(), reference)
    loss.backward()
    assert torch.equal(pred.grad != 0, mask.expand_as(pred).bool())
    zero = masked_loss(pred, target, torch.zeros_like(mask))
    assert zero.item() == 0.0
    pred.grad = None
    zero.backward()
    assert not pred.grad.any()
    weights = torch.tensor([1.0, 0.0, 2.0])
    per_sample = ((pred.detach() - target) ** 2 * mask).mean(dim=(1, 2, 3))
    torch.testing.assert_close(masked_loss(pred, target, mask, weights).detach(), (per_sample * weights).mean())


def _sampler(masks: Path, whole_image_prob: float) -> DistillationSampler:
    data = train_background.load_mask_folder(masks, SIZE, LATENT)
    return DistillationSampler(data.images, data.background, torch.arange(len(data.ids)), 99,
                               RectangleBounds().for_latent(LATENT, LATENT), whole_image_prob, hflip=True)


def test_background_samples_use_y_b_and_a_rectangle_of_the_flipped_background(masks):
    sampler = _sampler(masks, 0.0)
    batch = sampler(torch.Generator().manual_seed(0), 64)
    assert not batch.whole.any() and (batch.hidden_index == 99).all()
    assert batch.images.shape == (64, 3, SIZE, SIZE) and batch.loss_mask.shape == (64, 1, LATENT, LATENT)
    # M_pre marks the coloured cells: the loss never touches them, whichever way the sample was flipped
    grey = (batch.images.amax(1) - batch.images.amin(1) < 0.2)[:, None]
    cell_grey = torch.nn.functional.max_pool2d((~grey).float(), 2) == 0
    assert (batch.loss_mask.bool() <= cell_grey).all() and batch.loss_mask.sum() > 0
    images = sampler.images.float() / 255
    flipped = sum(any(torch.equal(batch.images[k], images[i].flip(-1)) for i in range(len(images)))
                  and not any(torch.equal(batch.images[k], images[i]) for i in range(len(images))) for k in range(64))
    assert 10 < flipped < 54
    same = sampler(torch.Generator().manual_seed(0), 64)
    assert torch.equal(same.loss_mask, batch.loss_mask) and torch.equal(same.images, batch.images)


def test_whole_image_samples_use_y_f_and_a_full_mask(masks):
    batch = _sampler(masks, 1.0)(torch.Generator().manual_seed(1), 16)
    assert batch.whole.all() and (batch.loss_mask == 1).all() and (batch.hidden_index < 6).all()
    mixed = _sampler(masks, 0.5)(torch.Generator().manual_seed(2), 200)
    assert 60 < int(mixed.whole.sum()) < 140


def test_ema_follows_litemas_warmup():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = ParameterEma([p], 0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update([p])  # decay min(0.5, 2/11)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 9 / 11))
    ema.update([p])  # decay min(0.5, 3/12)
    torch.testing.assert_close(ema.shadow[0], torch.full((3,), 0.25 * 9 / 11 + 0.75))
    restored = ParameterEma([p], 0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.num_updates == 2 and torch.equal(restored.shadow[0], ema.shadow[0])


# ------------------------------------------------------------------------------------------ the recipe


def test_the_recipe_trains_records_its_settings_and_exports_the_ema_weights(full_run, t2i):
    from safetensors.torch import load_file

    bundle = load_bundle(full_run / "model")
    info = bundle.info
    assert info["recipe"] == "background" and info["steps"] == 4 and info["base"] == str(t2i)
    assert info["foreground_prompt"] == "{caption}" and info["background_prompt"] == ""
    assert info["whole_image_prob"] == 0.5 and info["hflip"] is True
    assert info["rectangle_bounds"]["grid"] == [LATENT, LATENT] and info["rectangle_bounds"]["max_area"] == 1024 / 64
    assert info["ema"] == {"decay": 0.9, "updates": 4, "weights": "ema"} and info["lora"] is None
    assert bundle.unet.config.in_channels == 12 and len(losses(full_run)) == 4 and all(np.isfinite(losses(full_run)))
    te_a, te_b = bundle.text_encoder.state_dict(), load_bundle(t2i).text_encoder.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)  # frozen
    # the exported UNet is the EMA of the trained weights (LitEma decays 2/11, 3/12, 4/13, 5/14), not the last ones
    shadow = load_bundle(t2i).unet.state_dict()
    for step in range(1, 5):
        live = load_file(full_run / "checkpoints" / f"step_{step}" / "model.safetensors")
        decay = min(0.9, (1 + step) / (10 + step))
        shadow = {k: decay * shadow[k] + (1 - decay) * live[k] for k in shadow}
    exported = bundle.unet.state_dict()
    assert any(not torch.equal(exported[k], live[k]) for k in exported)
    for k in exported:
        torch.testing.assert_close(exported[k], shadow[k], rtol=0, atol=1e-6)


def test_resume_is_exact_with_ema(tmp_path, t2i, masks, full_run):
    split = tmp_path / "split"
    assert train_background.main(argv(t2i, masks, split, *EMA, "--steps", "2")) == 0
    # the EMA travels as safetensors, never as a pickle accelerate would load with weights_only=False
    checkpoint = split / "checkpoints" / "step_2"
    assert (checkpoint / "extra_state.safetensors").is_file() and not list(checkpoint.glob("custom_checkpoint_*"))
    assert train_background.main(argv(t2i, masks, split, *EMA, "--resume")) == 0
    np.testing.assert_allclose(losses(split), losses(full_run), rtol=0, atol=1e-6)
    assert_same_unet(split / "model", full_run / "model")


def test_resume_with_ema_from_a_checkpoint_without_its_state_is_a_clear_error(tmp_path, t2i, masks, capsys):
    run = tmp_path / "run"
    assert train_background.main(argv(t2i, masks, run, *EMA, "--steps", "1")) == 0
    (run / "checkpoints" / "step_1" / "extra_state.safetensors").unlink()
    assert train_background.main(argv(t2i, masks, run, *EMA, "--steps", "2", "--resume")) == 2
    assert "has no extra_state.safetensors" in capsys.readouterr().err


def test_resume_refuses_other_ema_or_lora_settings(tmp_path, t2i, masks, full_run, capsys):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(full_run, run)
    assert train_background.main(argv(t2i, masks, run, "--resume")) == 2
    assert "ema_decay=0.9" in capsys.readouterr().err
    assert train_background.main(argv(t2i, masks, run, "--resume", "--ema_decay", "0.9", "--lora_rank", "2")) == 2
    assert "lora_rank=0" in capsys.readouterr().err


def test_all_foreground_rectangles_give_zero_loss_and_leave_the_weights(tmp_path, t2i):
    data = write_mask_folder(tmp_path / "solid", n=3, full_object=True)
    out = tmp_path / "run"
    assert train_background.main(argv(t2i, data, out, "--whole_image_prob", "0", "--weight_decay", "0",
                                      "--steps", "2")) == 0
    assert losses(out) == [0.0, 0.0]
    assert_same_unet(out / "model", t2i)


def test_lora_trains_only_the_adapter(tmp_path, t2i, masks):
    from segdrop.training.lora_adapter import load_lora_fallback

    out = tmp_path / "lora"
    assert train_background.main(argv(t2i, masks, out, "--lora_rank", "2", "--steps", "2")) == 0
    base, tuned = load_bundle(t2i).unet.state_dict(), load_bundle(out / "model").unet.state_dict()
    assert base.keys() == tuned.keys()  # merged: a plain UNet again
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    info = load_bundle(out / "model").info
    assert info["lora"]["rank"] == 2 and "deviation" in info["lora"]["note"]
    assert (out / "lora" / "adapter_model.safetensors").is_file()
    reloaded = load_lora_fallback(load_bundle(t2i), out / "lora").unet.state_dict()
    assert max((reloaded[k] - tuned[k]).abs().max().item() for k in tuned) < 1e-6


def tiny_sd_folder(root: Path, t2i: Path) -> Path:
    """A diffusers SD1.x text-to-image folder in miniature: SD-layout UNet (4 channels), 8x VAE, 64x64 images."""
    from segdrop.testing.tiny_models import tiny_sd15_unet, tiny_vae

    src = load_bundle(t2i)
    tiny_sd15_unet(sample_size=8, cross_attention_dim=16, widths=(16, 16, 16, 16), layers_per_block=1,
                   head_dim=8).save_pretrained(root / "unet", safe_serialization=True)
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    src.text_encoder.save_pretrained(root / "text_encoder", safe_serialization=True)
    src.tokenizer.save_pretrained(root / "tokenizer")
    src.scheduler.save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return root


def test_sd_layout_lora_exports_kohya_and_diffusers_files(tmp_path, t2i):
    from safetensors.torch import load_file

    base = tiny_sd_folder(tmp_path / "sd", t2i)
    data = write_mask_folder(tmp_path / "sd_masks", n=2, latent=8, image=64)
    out = tmp_path / "run"
    assert train_background.main(argv(base, data, out, "--lora_rank", "2", "--steps", "1", "--batch_size", "2")) == 0
    kohya = load_file(out / "lora" / "lora_kohya.safetensors")
    assert kohya and all(k.startswith("lora_unet_") for k in kohya)
    assert (out / "lora" / "pytorch_lora_weights.safetensors").is_file()
    info = load_bundle(out / "model").info
    assert set(info["lora_files"]) >= {"kohya", "diffusers"} and info["rectangle_bounds"]["grid"] == [8, 8]


def test_sd_layout_full_fine_tune_writes_a_single_file_unet(tmp_path, t2i):
    from segdrop.training.__main__ import main

    base = tiny_sd_folder(tmp_path / "sd", t2i)
    data = write_mask_folder(tmp_path / "sd_masks", n=2, latent=8, image=64)
    out = tmp_path / "run"
    extra = ("--steps", "1", "--batch_size", "2", "--prediction_type", "v_prediction")
    assert main(["background", *argv(base, data, out, *extra)]) == 0  # through the CLI dispatcher
    bundle = load_bundle(out / "model")
    assert (out / "unet_ldm.safetensors").is_file()
    assert bundle.info["export_files"]["single_file"].endswith("unet_ldm.safetensors")
    assert bundle.scheduler.config.prediction_type == "v_prediction" and bundle.codec.latent_channels == 4


def test_bad_inputs_give_clear_errors(tmp_path, t2i, masks, capsys):
    from segdrop.training.bundle import ModelBundle
    from segdrop.training.conditioned_unet import make_inpaint_unet

    src = load_bundle(t2i)
    inpaint = save_bundle(ModelBundle(make_inpaint_unet(src.unet, 12), src.text_encoder, src.tokenizer, src.scheduler,
                                      src.codec, src.image_size, src.info), tmp_path / "inpaint")
    assert train_background.main(argv(inpaint, masks, tmp_path / "a")) == 2
    assert "not a plain text-to-image model" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()  # refused before the run folder is made

    no_prelim = tmp_path / "no_prelim"
    no_prelim.mkdir()
    (no_prelim / "metadata.jsonl").write_text(json.dumps({"id": "x", "image": "images/000.png", "caption": "a"}) + "\n")
    assert train_background.main(argv(t2i, no_prelim, tmp_path / "b")) == 2
    assert "no 'prelim'" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert train_background.main(argv(t2i, empty, tmp_path / "c")) == 2
    assert "no metadata.jsonl" in capsys.readouterr().err
    (empty / "metadata.jsonl").write_text("\n")
    assert train_background.main(argv(t2i, empty, tmp_path / "c")) == 2
    assert "holds no records" in capsys.readouterr().err

    # the paper's y_b on a toy vocabulary, and {object} without a name
    assert train_background.main(argv(t2i, masks, tmp_path / "d", "--background_prompt", "a photo of a background")) == 2
    assert "--background_prompt ''" in capsys.readouterr().err
    assert train_background.main(argv(t2i, masks, tmp_path / "e", "--foreground_prompt", "a photo of a {object}")) == 2
    assert "--object_name" in capsys.readouterr().err
    assert train_background.main(["--base", str(t2i), "--output_dir", str(tmp_path / "f")]) == 2
    assert "--data_dir" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["toy_background", "toy_background_lora"])
def test_toy_configs_parse_and_the_command_is_registered(name, masks):
    from segdrop.training.__main__ import main

    config_path = Path(train_background.__file__).parent / "configs" / f"{name}.toml"
    args = train_background.build_parser().parse_args(["--config", str(config_path), "--data_dir", str(masks),
                                                       "--steps", "7"])
    config = train_background.resolve(args)
    assert config.steps == 7 and config.batch_size == 16 and config.base.endswith("models/default")
    assert config.foreground_prompt == "{caption}" and config.background_prompt == "" and config.ema_decay == 0
    assert config.lora_rank == (8 if name.endswith("lora") else 0)
    assert main(["background", "--help"]) == 0
