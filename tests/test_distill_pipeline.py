"""Concept distillation's samplers, mask stages and dataset builders on a tiny 16x16 text-to-image model."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from segdrop.distill.dataset import MaskFolderError, MaskFolderWriter, load_image, load_mask, read_mask_folder
from segdrop.distill.pipeline import object_words, preliminary_masks, refine
from segdrop.distill.sampling import background_inpaint, distillation_sample
from segdrop.segment.refine import refine_mask
from segdrop.training import distill_data
from segdrop.training.bundle import ModelBundle, load_bundle, save_bundle
from segdrop.training.codec import PixelUnshuffleCodec

SIZE = 16
STEPS = 4
torch.set_num_threads(1)


def tiny_bundle(folder: Path, prediction_type: str = "epsilon", in_channels: int = 12) -> ModelBundle:
    """16x16 images, 12x8x8 latents, cross-attention at the latent grid and at 4x4, the toy vocabulary."""
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from segdrop.toyworld import vocabulary
    from segdrop.training.tokenizer import write_word_tokenizer

    words = vocabulary()
    write_word_tokenizer(words, folder / "tok", max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=16, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)).eval()
    unet = UNet2DConditionModel(sample_size=SIZE // 2, in_channels=in_channels, out_channels=12, block_out_channels=(16, 16),
                                layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 2),
                                norm_num_groups=8, cross_attention_dim=16).eval()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type=prediction_type, clip_sample=False, steps_offset=1)
    return ModelBundle(unet, te, tokenizer, scheduler, PixelUnshuffleCodec(2), SIZE,
                       {"vocabulary": words, "recipe": "scratch", "max_length": 16})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    return save_bundle(tiny_bundle(folder), folder / "model")


@pytest.fixture(scope="module")
def bundle(model_dir) -> ModelBundle:
    return load_bundle(model_dir)


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 4, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def scenes(toy) -> tuple[np.ndarray, list[str]]:
    records = read_mask_folder(toy, require=("image", "caption"))
    return np.stack([load_image(r["image"]) for r in records]), [r["caption"] for r in records]


def decode_u8(bundle, latents: torch.Tensor) -> np.ndarray:
    return np.rint(bundle.codec.decode(latents).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def reference_sample(bundle, prompts, *, seed, guidance=1.0, negative=""):
    """A plain DDIM loop written out: conditional only at guidance 1, else eps(neg) + s (eps(pos) - eps(neg))."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(STEPS)
    x = torch.randn((len(prompts), 12, SIZE // 2, SIZE // 2), generator=torch.Generator().manual_seed(seed))
    pos, neg = bundle.encode_prompt(prompts), bundle.encode_prompt([negative] * len(prompts))
    with torch.no_grad():
        for t in scheduler.timesteps:
            out = bundle.unet(x, t, encoder_hidden_states=pos).sample
            if guidance != 1.0:
                base = bundle.unet(x, t, encoder_hidden_states=neg).sample
                out = base + guidance * (out - base)
            x = scheduler.step(out, t, x).prev_sample
    return decode_u8(bundle, x)


# ------------------------------------------------------------------------------------------------ samplers


def test_background_inpaint_shape_dtype_and_determinism(bundle, scenes):
    images, _ = scenes
    prelim = np.zeros((4, 8, 8), bool)
    prelim[:, 2:6, 2:6] = True
    a = background_inpaint(bundle, images, prelim, prompt="", steps=STEPS, seed=3)
    assert a.shape == images.shape and a.dtype == np.uint8
    np.testing.assert_array_equal(a, background_inpaint(bundle, images, prelim, prompt="", steps=STEPS, seed=3))
    assert not np.array_equal(a, background_inpaint(bundle, images, prelim, prompt="", steps=STEPS, seed=4))
    per_image = background_inpaint(bundle, images[:2], prelim[:2], prompt="", steps=STEPS, seed=[7, 8])
    alone = background_inpaint(bundle, images[1:2], prelim[1:2], prompt="", steps=STEPS, seed=[8])
    assert np.abs(per_image[1].astype(int) - alone[0]).max() <= 1  # a per-image seed does not depend on the batch
    eta = background_inpaint(bundle, images[:1], prelim[:1], prompt="", steps=STEPS, seed=3, eta=1.0)
    again = background_inpaint(bundle, images[:1], prelim[:1], prompt="", steps=STEPS, seed=[3], eta=1.0)
    np.testing.assert_array_equal(eta, again)  # eta > 0: the step noise comes from the seeded generator(s) too


def test_empty_prelim_gives_the_image_back_up_to_the_last_step(bundle, scenes):
    from diffusers import DDIMScheduler

    images, _ = scenes
    seed = 5
    got = background_inpaint(bundle, images, np.zeros((4, 8, 8), bool), prompt="", steps=STEPS, seed=seed)
    # Exactly: the background is q_sample(z0, t_last, last fresh noise), then one DDIM step to t = 0.
    generator = torch.Generator().manual_seed(seed)
    z0 = bundle.codec.encode(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    torch.randn(z0.shape, generator=generator)  # x_T, unused when nothing is generated
    noises = [torch.randn(z0.shape, generator=generator) for _ in range(STEPS)]
    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(STEPS)
    t = scheduler.timesteps[-1]
    x = scheduler.add_noise(z0, noises[-1], t)
    with torch.no_grad():
        eps = bundle.unet(x, t, encoder_hidden_states=bundle.encode_prompt([""] * 4)).sample
    expected = decode_u8(bundle, scheduler.step(eps, t, x).prev_sample)
    assert np.abs(got.astype(int) - expected).max() <= 1
    # The bound: the last timestep (t = 1) leaves sqrt(1 - abar_1) ~ 0.04 of noise in [-1, 1] latent units.
    error = np.abs(got.astype(float) - images) / 255
    assert error.mean() < 0.03 and error.max() < 0.15


def test_full_prelim_is_plain_text_to_image(bundle, scenes):
    images, _ = scenes
    full = background_inpaint(bundle, images[:2], np.ones((2, 8, 8), bool), prompt="a photo of a red circle",
                              steps=STEPS, seed=11)
    sample = distillation_sample(bundle, ["a photo of a red circle"] * 2, negative_prompt="", steps=STEPS, seed=11)
    np.testing.assert_array_equal(full, sample)


def test_image_size_prelim_is_max_pooled_to_the_latent_grid(bundle, scenes):
    images, _ = scenes
    pixel = np.zeros((1, SIZE, SIZE), bool)
    pixel[0, 5, 9] = True  # one pixel: its whole latent cell (2, 4) is generated
    cells = np.zeros((1, 8, 8), bool)
    cells[0, 2, 4] = True
    np.testing.assert_array_equal(background_inpaint(bundle, images[:1], pixel, prompt="", steps=STEPS),
                                  background_inpaint(bundle, images[:1], cells, prompt="", steps=STEPS))
    with pytest.raises(ValueError, match="latent grid 8x8"):
        background_inpaint(bundle, images[:1], np.zeros((1, 4, 4), bool), prompt="", steps=STEPS)
    with pytest.raises(ValueError, match="B = 1"):
        background_inpaint(bundle, images[:1], np.zeros((2, 8, 8), bool), prompt="", steps=STEPS)


def test_samplers_refuse_an_inpainting_layout(tmp_path, bundle, scenes):
    inpaint = tiny_bundle(tmp_path, in_channels=25)
    with pytest.raises(ValueError, match="inpainting-layout"):
        background_inpaint(inpaint, scenes[0][:1], np.ones((1, 8, 8), bool), prompt="", steps=STEPS)
    with pytest.raises(ValueError, match="inpainting-layout"):
        distillation_sample(inpaint, [""], negative_prompt="", steps=STEPS)
    with pytest.raises(ValueError, match="background"):
        background_inpaint(bundle, scenes[0][:1], np.ones((1, 8, 8), bool), prompt="a photo of a background", steps=STEPS)


def test_distillation_guidance(bundle):
    prompts = ["a photo of a red circle", "a photo of a blue square"]
    plain = distillation_sample(bundle, prompts, negative_prompt="a photo", guidance=1.0, steps=STEPS, seed=2)
    assert plain.shape == (2, SIZE, SIZE, 3) and plain.dtype == np.uint8
    np.testing.assert_array_equal(plain, reference_sample(bundle, prompts, seed=2))
    away = distillation_sample(bundle, prompts, negative_prompt="a photo", guidance=-1.0, steps=STEPS, seed=2)
    assert not np.array_equal(plain, away)
    ref = reference_sample(bundle, prompts, seed=2, guidance=-1.0, negative="a photo")
    assert np.abs(away.astype(int) - ref).max() <= 1  # one batched pass vs two: float rounding only
    np.testing.assert_array_equal(away, distillation_sample(bundle, prompts, negative_prompt="a photo", guidance=-1.0,
                                                            steps=STEPS, seed=2))


def test_distillation_sample_follows_v_prediction(tmp_path, bundle):
    v_bundle = tiny_bundle(tmp_path, prediction_type="v_prediction")
    v_bundle.unet.load_state_dict(bundle.unet.state_dict())
    v_bundle.text_encoder.load_state_dict(bundle.text_encoder.state_dict())
    prompts = ["a photo of a green triangle"]
    v = distillation_sample(v_bundle, prompts, negative_prompt="", steps=STEPS, seed=1)
    np.testing.assert_array_equal(v, reference_sample(v_bundle, prompts, seed=1))
    assert not np.array_equal(v, distillation_sample(bundle, prompts, negative_prompt="", steps=STEPS, seed=1))
    guided = distillation_sample(v_bundle, prompts, negative_prompt="", guidance=2.0, steps=STEPS, seed=1)
    assert np.abs(guided.astype(int) - reference_sample(v_bundle, prompts, seed=1, guidance=2.0)).max() <= 1


# ------------------------------------------------------------------------------------------------ mask stages


def test_object_words():
    assert object_words("a photo of a red circle and a blue circle") == "red, circle, blue"
    with pytest.raises(ValueError, match="names no object"):
        object_words("a photo")


def test_preliminary_masks_and_refine(bundle, scenes):
    from segdrop.demo.protocol import EvalSettings

    images, captions = scenes
    settings = EvalSettings(t0=8)
    prelim = preliminary_masks(bundle, images, captions, settings=settings, seeds=[1, 2, 3, 4])
    assert prelim.shape == (4, 8, 8) and prelim.dtype == bool
    again = preliminary_masks(bundle, images[2:], captions[2:], settings=settings, seeds=[3, 4])
    np.testing.assert_array_equal(prelim[2:], again)  # per-image seeds: independent of the batch
    batch, maps = preliminary_masks(bundle, images, captions, words="a", settings=settings, return_maps=True)
    assert batch.shape == (4, 8, 8) and maps.shape == (4, 8, 8)
    with pytest.raises(ValueError, match="not in the prompt"):
        preliminary_masks(bundle, images[:1], captions[:1], words="purple, octagon", settings=settings)
    refined, inpainted, difference = refine(bundle, images, prelim, prompt="", steps=STEPS, seed=[5, 6, 7, 8])
    assert refined.shape == (4, SIZE, SIZE) and refined.dtype == bool
    assert inpainted.shape == images.shape and difference.shape == (4, SIZE, SIZE) and difference.dtype == np.float32
    for k in range(4):
        np.testing.assert_array_equal(refined[k], refine_mask(images[k], inpainted[k], prelim[k]))


# ------------------------------------------------------------------------------------------------ mask folders


def test_mask_folder_reading_and_writing(tmp_path, toy):
    records = read_mask_folder(toy, require=("image", "caption", "mask"))
    assert len(records) == 4 and Path(records[0]["image"]).is_absolute() and load_mask(records[0]["mask"]).shape == (SIZE, SIZE)
    with pytest.raises(MaskFolderError, match="prelim-masks"):
        read_mask_folder(toy, require=("prelim",))
    with pytest.raises(MaskFolderError, match="no metadata.jsonl"):
        read_mask_folder(tmp_path)
    writer = MaskFolderWriter(tmp_path / "out", process_index=1)
    rec = writer.add(writer.adopt(records[0]), {"prelim": np.eye(8, dtype=bool), "difference": np.full((SIZE, SIZE), 0.5)})
    assert rec["image"] == f"images/{rec['id']}.png" and "effects_mask" not in rec and "object_masks" not in rec
    with open(writer.part, "a") as fh:
        fh.write('{"id": "torn", "ima')  # a killed append
    writer.add({"id": "x", "caption": "a photo"})
    assert writer.finished(("image", "prelim")) == {rec["id"]}
    writer.merge(["x", rec["id"]])
    assert not list((tmp_path / "out").glob("metadata.part-*"))
    merged = read_mask_folder(tmp_path / "out")
    assert [r["id"] for r in merged] == ["x", rec["id"]]
    assert np.array_equal(load_mask(merged[1]["prelim"]), np.eye(8, dtype=bool))
    assert np.array_equal(load_image(merged[1]["difference"])[..., 0], np.full((SIZE, SIZE), 128, np.uint8))


# ------------------------------------------------------------------------------------------------ builders


def copy_toy(toy: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(toy, target))


def test_builders_end_to_end_and_resume(tmp_path, toy, model_dir):
    data = copy_toy(toy, tmp_path / "data")
    common = ["--seed", "3"]
    assert distill_data.main(["prelim-masks", "--data_dir", str(data), "--capture_model", str(model_dir), "--t0", "6",
                              *common]) == 0
    records = read_mask_folder(data, require=("image", "caption", "mask", "prelim"))
    assert len(records) == 4 and all(load_mask(r["prelim"]).shape == (8, 8) for r in records)
    assert "effects_mask" in records[0]  # in place: the toy-world keys stay
    refine_argv = ["refine-masks", "--data_dir", str(data), "--model", str(model_dir), "--prompt", "", "--steps",
                   str(STEPS), "--batch_size", "3", *common]
    assert distill_data.main(refine_argv) == 0
    keys = ("image", "prelim", "inpainted", "difference", "refined")
    records = read_mask_folder(data, require=keys)
    assert (data / "refine-masks.toml").is_file()
    files = {r["id"]: {k: Path(r[k]) for k in keys[2:]} for r in records}
    before = {i: {k: (p.read_bytes(), p.stat().st_mtime_ns) for k, p in f.items()} for i, f in files.items()}
    victim = records[1]["id"]
    files[victim]["refined"].unlink()
    assert distill_data.main(refine_argv) == 0
    for item_id, paths in files.items():
        for key, path in paths.items():
            data_now, mtime = path.read_bytes(), path.stat().st_mtime_ns
            assert data_now == before[item_id][key][0]  # deterministic per item
            assert (mtime != before[item_id][key][1]) == (item_id == victim)  # only the deleted item was redone

    out = tmp_path / "syn"
    assert distill_data.main(["synthesize", "--out", str(out), "--model", str(model_dir), "--capture_model",
                              str(model_dir), "--generate", "3", "--background_prompt", "", "--negative_prompt", "",
                              "--guidance", "-1", "--steps", str(STEPS), "--t0", "6", "--batch_size", "2"]) == 0
    synthetic = read_mask_folder(out, require=("caption",) + keys)
    assert [r["id"] for r in synthetic] == ["syn_00000", "syn_00001", "syn_00002"]
    assert all(r["guidance"] == -1.0 and r["negative_prompt"] == "" for r in synthetic)
    assert load_image(synthetic[0]["image"]).shape == (SIZE, SIZE, 3)


def tiny_lora(base: Path, folder: Path, seed: int = 0) -> Path:
    """A rank-2 peft adapter over the bundle at ``base`` with random (non-zero) weights, saved as the toy LoRAs are."""
    from segdrop.training.lora_adapter import add_lora, save_lora_fallback

    unet = load_bundle(base).unet
    add_lora(unet, 2, 2.0, ["to_q", "to_k", "to_v", "to_out.0"])
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    save_lora_fallback(unet, folder, {"test": "random"})
    return folder


def test_lora_over_its_base_is_the_merged_model(tmp_path, toy, model_dir):
    """``--lora`` merges a peft adapter over ``--model``: the same files as the merged bundle, and not the base's."""
    from segdrop.training.lora_adapter import load_lora_fallback

    lora = tiny_lora(model_dir, tmp_path / "lora")
    merged = save_bundle(load_lora_fallback(load_bundle(model_dir), lora), tmp_path / "merged")
    data = copy_toy(toy, tmp_path / "data")
    assert distill_data.main(["prelim-masks", "--data_dir", str(data), "--capture_model", str(model_dir), "--t0",
                              "2"]) == 0
    runs = {"lora": ["--model", str(model_dir), "--lora", str(lora)], "merged": ["--model", str(merged)],
            "base": ["--model", str(model_dir)]}
    inpainted = {}
    for name, model in runs.items():
        out = tmp_path / f"masks_{name}"
        assert distill_data.main(["refine-masks", "--data_dir", str(data), "--out", str(out), *model, "--prompt", "",
                                  "--steps", "2"]) == 0
        inpainted[name] = [Path(r["inpainted"]).read_bytes() for r in read_mask_folder(out, require=("inpainted",))]
    assert inpainted["lora"] == inpainted["merged"]
    assert inpainted["lora"] != inpainted["base"]
    assert distill_data.main(["refine-masks", "--data_dir", str(data), "--out", str(tmp_path / "x"), "--model",
                              str(model_dir), "--lora", str(tmp_path / "nowhere"), "--prompt", ""]) == 2


def test_sharded_prelim_matches_a_single_process(tmp_path, toy, model_dir):
    def state(index: int) -> SimpleNamespace:
        return SimpleNamespace(process_index=index, num_processes=2, is_main_process=index == 0, device="cpu",
                               wait_for_everyone=lambda: None)

    config = dict(data_dir=str(toy), capture_model=str(model_dir), t0=4, seed=1)
    single = tmp_path / "single"
    distill_data.build_prelim(distill_data.PrelimConfig(out=str(single), **config), state=SimpleNamespace(
        process_index=0, num_processes=1, is_main_process=True, device="cpu", wait_for_everyone=lambda: None))
    sharded = tmp_path / "sharded"
    shard_config = distill_data.PrelimConfig(out=str(sharded), **config)
    distill_data.build_prelim(shard_config, state=state(1))  # the other process first: it only writes its part
    assert (sharded / "metadata.part-001.jsonl").is_file() and not (sharded / "metadata.jsonl").exists()
    distill_data.build_prelim(shard_config, state=state(0))  # main: its share, then the merge
    a, b = read_mask_folder(single, require=("prelim",)), read_mask_folder(sharded, require=("prelim",))
    assert [r["id"] for r in a] == [r["id"] for r in b]
    for ra, rb in zip(a, b):
        assert Path(ra["prelim"]).read_bytes() == Path(rb["prelim"]).read_bytes()
        assert Path(ra["image"]).read_bytes() == Path(rb["image"]).read_bytes()
    assert "effects_mask" not in a[0] and "mask" in a[0]


def test_prelim_from_an_image_folder_with_captions(tmp_path, toy, model_dir):
    folder = tmp_path / "photos"
    folder.mkdir()
    for record in read_mask_folder(toy)[:2]:
        (folder / f"{record['id']}.png").write_bytes(Path(record["image"]).read_bytes())
    (folder / f"{read_mask_folder(toy)[0]['id']}.txt").write_text("a photo of a red circle\n")
    argv = ["prelim-masks", "--data_dir", str(folder), "--out", str(tmp_path / "m"), "--capture_model", str(model_dir),
            "--t0", "2"]
    assert distill_data.main(argv) == 2  # the second image has no caption
    assert distill_data.main([*argv, "--caption", "a photo of a blue square", "--words", "square"]) == 0
    records = read_mask_folder(tmp_path / "m", require=("image", "caption", "prelim"))
    assert [r["caption"] for r in records] == ["a photo of a blue square"] * 2


def test_builders_give_clear_errors(tmp_path, toy, model_dir, capsys):
    def error(argv: list[str]) -> str:
        assert distill_data.main(argv) == 2
        return capsys.readouterr().err

    assert "does not exist" in error(["prelim-masks", "--data_dir", str(toy), "--out", str(tmp_path / "o"),
                                      "--capture_model", str(tmp_path / "nowhere")])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in error(["prelim-masks", "--data_dir", str(empty), "--out", str(tmp_path / "o")])
    assert "prelim-masks" in error(["refine-masks", "--data_dir", str(toy), "--out", str(tmp_path / "o"),
                                    "--model", str(model_dir)])
    assert "'background'" in error(["synthesize", "--out", str(tmp_path / "s"), "--model", str(model_dir),
                                    "--capture_model", str(model_dir), "--objects", "circle"])
    assert "'bird'" in error(["synthesize", "--out", str(tmp_path / "s"), "--model", str(model_dir), "--capture_model",
                              str(model_dir), "--objects", "bird", "--background_prompt", ""])
    assert "exactly one prompt source" in error(["synthesize", "--out", str(tmp_path / "s"), "--model", str(model_dir)])
    assert "not in the prompt" in error(["prelim-masks", "--data_dir", str(toy), "--out", str(tmp_path / "o"),
                                         "--capture_model", str(model_dir), "--words", "octagon"])
    config = tmp_path / "c.toml"
    config.write_text('steps = 3\nbogus = 1\n[refine-masks]\nprompt = ""\n')
    assert "bogus" in error(["refine-masks", "--config", str(config), "--data_dir", str(toy)])


def test_toml_tables_per_command(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('steps = 3\nt0 = 7\n[refine-masks]\nprompt = ""\n[synthesize]\ngenerate = 5\n')
    parser = distill_data.argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="recipe")
    distill_data.register(sub)
    refine_cfg = distill_data.resolve("refine-masks", parser.parse_args(["refine-masks", "--config", str(config),
                                                                         "--steps", "9"]))
    assert (refine_cfg.steps, refine_cfg.prompt) == (9, "")
    prelim_cfg = distill_data.resolve("prelim-masks", parser.parse_args(["prelim-masks", "--config", str(config)]))
    assert prelim_cfg.t0 == 7
    synth = distill_data.resolve("synthesize", parser.parse_args(["synthesize", "--config", str(config), "--prompts",
                                                                  "a photo of a red circle", "a photo"]))
    assert synth.generate == 5 and synth.prompts == ["a photo of a red circle", "a photo"]
    shipped = Path(distill_data.__file__).parent / "configs" / "toy_distill_data.toml"
    for command in distill_data.COMMANDS:
        distill_data.resolve(command, parser.parse_args([command, "--config", str(shipped)]))
    assert json.loads(json.dumps(distill_data.item_seed(0, "a", "x"))) == distill_data.item_seed(0, "a", "x")
