"""Training module: codec, tokenizer, bundle I/O, and the ``scratch`` recipe on tiny settings (CPU, seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdrop.training import train_scratch
from segdrop.training.__main__ import main as cli_main
from segdrop.training.bundle import BundleError, ModelBundle, load_bundle, save_bundle
from segdrop.training.codec import AutoencoderKLCodec, PixelUnshuffleCodec
from segdrop.training.tokenizer import write_word_tokenizer

COLOURS = {"red": (220, 30, 30), "blue": (30, 40, 220), "green": (30, 200, 40), "yellow": (230, 220, 30)}
SHAPES = ["square", "circle"]

# tiny model: 16x16 images -> 12x8x8 latents, two UNet levels, 16-dim text encoder
TINY = [
    "--image_size", "16", "--unet_widths", "16", "32", "--unet_heads", "1", "2", "--unet_attention", "0", "1",
    "--norm_num_groups", "8",
    "--text_hidden_size", "16", "--batch_size", "4", "--warmup_steps", "2", "--log_every", "1",
    "--num_threads", "1",
]


def write_fake_dataset(root: Path, count: int = 12, size: int = 16) -> Path:
    """Same layout as segdrop.toyworld datasets (only ``image`` and ``caption`` are read): solid squares."""
    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        colour = list(COLOURS)[i % len(COLOURS)]
        shape = SHAPES[(i // len(COLOURS)) % len(SHAPES)]
        image = np.full((size, size, 3), 128, np.uint8)
        x, y = rng.integers(0, size // 2, 2)
        image[y : y + size // 2, x : x + size // 2] = COLOURS[colour]
        Image.fromarray(image).save(root / "images" / f"train_{i:05d}.png")
        lines.append({"id": f"train_{i:05d}", "split": "train", "image": f"images/train_{i:05d}.png",
                      "caption": f"a photo of a {colour} {shape}"})
    lines.append({"id": "val_00000", "split": "val", "image": "images/missing.png", "caption": "unused"})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_fake_dataset(tmp_path_factory.mktemp("toydata"))


def read_losses(out: Path) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "loss.jsonl").read_text().splitlines() if x.strip()]


def unet_probe(unet, text_encoder, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    c = unet.config
    sample = torch.randn(2, c.in_channels, c.sample_size, c.sample_size, generator=g)
    ids = torch.randint(0, text_encoder.config.vocab_size, (2, text_encoder.config.max_position_embeddings), generator=g)
    with torch.no_grad():
        hidden = text_encoder(ids)[0]
        return unet(sample, torch.tensor([300, 781]), hidden).sample


# ------------------------------------------------------------------------------------------ units


def test_pixel_unshuffle_codec_is_exact():
    codec = PixelUnshuffleCodec(2)
    images = torch.rand(2, 3, 64, 64)
    latents = codec.encode(images)
    assert latents.shape == (2, 12, 32, 32)
    assert latents.min() >= -1 and latents.max() <= 1
    assert torch.equal(codec.decode(latents), (images * 2 - 1 + 1) / 2)
    torch.testing.assert_close(codec.decode(latents), images, rtol=0, atol=1e-7)
    with pytest.raises(ValueError):
        codec.encode(torch.rand(1, 3, 63, 64))


def test_autoencoder_kl_codec_interface():
    from segdrop.testing.tiny_models import tiny_vae

    codec = AutoencoderKLCodec(tiny_vae(), scaling_factor=0.5)
    latents = codec.encode(torch.rand(1, 3, 32, 32))
    assert latents.shape == (1, 4, 4, 4) and codec.factor == 8
    images = codec.decode(latents)
    assert images.shape == (1, 3, 32, 32) and images.min() >= 0 and images.max() <= 1


def test_word_tokenizer_gives_one_token_per_toy_word(tmp_path):
    from transformers import CLIPTokenizer

    words = ["a", "photo", "of", "and", "orange", "triangle", "square", "diamond", "cross", "red"]
    try:
        from segdrop.toyworld import vocabulary

        words = sorted(set(words) | set(vocabulary()))
    except ImportError:
        pass
    tok = CLIPTokenizer.from_pretrained(write_word_tokenizer(words, tmp_path / "tok", max_length=16))
    for word in words:  # "and" and "orange" share "an": BPE used to stall at "or an g e</w>"
        assert tok.convert_ids_to_tokens(tok(word).input_ids) == [tok.bos_token, word + "</w>", tok.eos_token]


def test_load_bundle_errors(tmp_path):
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")
    with pytest.raises(BundleError, match="no segdrop_model.json or model_index.json"):
        load_bundle(tmp_path)


def test_load_bundle_reads_a_diffusers_sd_folder(tmp_path):
    from segdrop.testing.tiny_models import tiny_sd15_unet, tiny_text_encoder, tiny_vae

    root = tmp_path / "sd"
    tok = write_word_tokenizer(["a", "photo", "of", "cat"], root / "tokenizer")
    from transformers import CLIPTokenizer

    vocab = len(CLIPTokenizer.from_pretrained(tok))
    tiny_sd15_unet().save_pretrained(root / "unet", safe_serialization=True)
    tiny_text_encoder(vocab).save_pretrained(root / "text_encoder", safe_serialization=True)
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    train_scratch.make_scheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    bundle = load_bundle(root)
    assert isinstance(bundle.codec, AutoencoderKLCodec)
    assert bundle.image_size == 64 * 8
    assert bundle.encode_prompt("a photo of a cat").shape == (1, 77, 32)


# ------------------------------------------------------------------------------------------ config


def test_toml_config_and_cli_precedence(tmp_path, dataset):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'data_dir = "{dataset}"\nsteps = 5\nbatch_size = 3\nunet_widths = [16, 32]\nunet_heads = [1, 2]\nunet_attention = [1, 1]\nlr = 1e-3\n')
    parser = train_scratch.build_parser()
    config = train_scratch.resolve_config(parser.parse_args(["--config", str(cfg), "--steps", "2", "--unet_widths", "32", "64"]))
    assert config.steps == 2  # CLI wins
    assert config.batch_size == 3 and config.lr == 1e-3  # file beats the defaults
    assert config.unet_widths == [32, 64]
    assert config.seed == train_scratch.ScratchConfig().seed  # defaults fill the rest
    # the dumped effective config parses back to the same values
    dumped = tmp_path / "eff.toml"
    dumped.write_text(train_scratch.dump_toml(config))
    again = train_scratch.resolve_config(parser.parse_args(["--config", str(dumped)]))
    assert again == config


def test_bad_config_key_is_a_clear_error(tmp_path, dataset, capsys):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'data_dir = "{dataset}"\nlearning_rate = 1e-4\n')
    assert cli_main(["scratch", "--config", str(cfg), "--output_dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown config key" in err and "'learning_rate'" in err and "lr" in err
    cfg.write_text('steps = "many"\n')
    assert train_scratch.main(["--config", str(cfg), "--data_dir", str(dataset)]) == 2
    assert "bad value 'many' for 'steps'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_data_dir_is_a_clear_error(tmp_path, capsys):
    assert train_scratch.main(["--data_dir", str(tmp_path / "nothing"), "--output_dir", str(tmp_path / "o")]) == 2
    assert f"data_dir {tmp_path / 'nothing'} does not exist" in capsys.readouterr().err
    assert train_scratch.main(["--output_dir", str(tmp_path / "o")]) == 2
    assert "--data_dir" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert train_scratch.main(["--data_dir", str(tmp_path / "empty")]) == 2
    assert "no metadata.jsonl" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def trained(tmp_path_factory, dataset) -> Path:
    out = tmp_path_factory.mktemp("run") / "out"
    argv = ["scratch", "--data_dir", str(dataset), "--output_dir", str(out), "--steps", "4",
            "--checkpointing_steps", "1", *TINY]
    assert cli_main(argv) == 0
    return out


def test_training_writes_a_bundle_that_round_trips(trained, tmp_path):
    model = trained / "model"
    info = json.loads((model / "segdrop_model.json").read_text())
    assert info["codec"] == {"type": "pixel_unshuffle", "factor": 2}
    assert info["image_size"] == 16 and info["steps"] == 4 and info["object_prompt"] == "a photo of a {}"
    assert info["train_command"].startswith("python -m segdrop.training scratch --data_dir")
    assert len(read_losses(trained)) == 4 and info["final_loss"] == read_losses(trained)[-1]
    for sub, weights in [("unet", "diffusion_pytorch_model.safetensors"), ("text_encoder", "model.safetensors")]:
        assert (model / sub / weights).is_file()
    assert not list(model.rglob("*.bin"))

    bundle = load_bundle(model)
    assert isinstance(bundle.codec, PixelUnshuffleCodec) and bundle.image_size == 16
    assert bundle.unet.config.in_channels == 12 and bundle.unet.config.sample_size == 8
    assert bundle.unet.config.down_block_types == ["DownBlock2D", "CrossAttnDownBlock2D"]
    assert bundle.scheduler.config.beta_schedule == "scaled_linear" and bundle.scheduler.config.beta_end == 0.012
    assert bundle.tokenizer.model_max_length == 16
    assert bundle.encode_prompt(["a photo of a red square", ""]).shape == (2, 16, 16)
    reference = unet_probe(bundle.unet, bundle.text_encoder)

    # the exported weights are the final checkpoint's weights
    from safetensors.torch import load_file

    fresh = train_scratch.make_unet(train_scratch.ScratchConfig(
        image_size=16, unet_widths=[16, 32], unet_heads=[1, 2], unet_attention=[0, 1], norm_num_groups=8, text_hidden_size=16), 16)
    fresh.load_state_dict(load_file(trained / "checkpoints" / "step_4" / "model.safetensors"))
    assert (unet_probe(fresh.eval(), bundle.text_encoder) - reference).abs().max().item() == 0

    # save -> load again: identical output, also when overwriting an existing folder
    again_dir = tmp_path / "copy"
    save_bundle(bundle, again_dir)
    save_bundle(bundle, again_dir)
    again = load_bundle(again_dir)
    assert (unet_probe(again.unet, again.text_encoder) - reference).abs().max().item() == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no .tmp-/.old- leftovers


def test_checkpoints_are_atomic_and_pruned(trained):
    ckpts = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert ckpts == ["step_3", "step_4"]  # checkpoints_total_limit = 2
    for name in ckpts:
        state = json.loads((trained / "checkpoints" / name / "training_state.json").read_text())
        assert state["step"] == int(name.split("_")[1])
        assert (trained / "checkpoints" / name / "model.safetensors").is_file()
    assert not [p for p in trained.rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert (trained / "config.toml").is_file() and (trained / "tokenizer").is_dir()


def test_existing_run_needs_resume(trained, dataset, capsys):
    assert train_scratch.main(["--data_dir", str(dataset), "--output_dir", str(trained), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err


def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, dataset):
    common = ["--data_dir", str(dataset), "--checkpointing_steps", "3", "--caption_dropout", "0.5", *TINY]
    a, b = tmp_path / "a", tmp_path / "b"
    assert train_scratch.main(["--output_dir", str(a), "--steps", "6", *common]) == 0
    assert train_scratch.main(["--output_dir", str(b), "--steps", "3", *common]) == 0  # "killed" after step 3
    # a half-written checkpoint from the kill, and a folder emptied by an interrupted prune, are cleaned on resume
    (b / "checkpoints" / "step_5.tmp").mkdir()
    (b / "checkpoints" / "step_2").mkdir()
    # losses logged after the checkpoint (the kill came later) are dropped on resume
    with open(b / "loss.jsonl", "a") as fh:
        fh.write(json.dumps({"step": 4, "loss": 123.0}) + "\n")
    assert train_scratch.main(["--output_dir", str(b), "--steps", "6", "--resume", *common]) == 0

    losses_a, losses_b = read_losses(a), read_losses(b)
    assert len(losses_a) == len(losses_b) == 6
    np.testing.assert_allclose(losses_b, losses_a, rtol=0, atol=1e-6)
    assert losses_a[3] != losses_a[2]
    ua, ub = load_bundle(a / "model"), load_bundle(b / "model")
    for mine, theirs in [(ua.unet, ub.unet), (ua.text_encoder, ub.text_encoder)]:
        sa, sb = mine.state_dict(), theirs.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step_3", "step_6"]
    rows_a, rows_b = ([json.loads(x) for x in (o / "loss.jsonl").read_text().splitlines()] for o in (a, b))
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]  # the stale step-4 row is gone, none duplicated
    assert [r["lr"] for r in rows_b] == [r["lr"] for r in rows_a]  # the LR schedule resumed at step 3
    state = json.loads((b / "checkpoints" / "step_6" / "training_state.json").read_text())
    assert state["step"] == 6 and state["num_processes"] == 1 and state["loss"] == losses_a[-1]


def test_bundle_save_is_atomic_on_failure(tmp_path, trained):
    bundle = load_bundle(trained / "model")
    broken = ModelBundle(bundle.unet, None, bundle.tokenizer, bundle.scheduler, bundle.codec, 16, {})
    with pytest.raises(AttributeError):
        save_bundle(broken, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_generate_renders_toy_world_data(tmp_path):
    pytest.importorskip("segdrop.toyworld")
    out = tmp_path / "gen"
    assert train_scratch.main(["--generate", "6", "--output_dir", str(out), "--steps", "1", *TINY]) == 0
    assert len(train_scratch.read_records(out / "data", "train")) == 6
    info = json.loads((out / "model" / "segdrop_model.json").read_text())
    assert info["train_scenes"] == 6 and "triangle" in info["vocabulary"]
    # resuming reuses the rendered scenes instead of appending new ones
    assert train_scratch.main(["--generate", "6", "--output_dir", str(out), "--steps", "2", "--resume", *TINY]) == 0
    assert len(train_scratch.read_records(out / "data", "train")) == 6


def test_cross_attention_maps_for_caption_words(trained):
    from segdrop.demo.localization import word_maps  # moved from training/evaluate.py

    bundle = load_bundle(trained / "model")
    image = np.random.default_rng(0).random((16, 16, 3), dtype=np.float32)
    before = dict(bundle.unet.attn_processors)
    maps, tokens = word_maps(bundle, image, "a photo of a red square", timesteps=(300,))
    assert maps.shape == (16, 16, 16) and tokens[1:7] == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "square</w>"]
    torch.testing.assert_close(maps.sum(0), torch.ones(16, 16))  # softmax over tokens, averaged
    assert bundle.unet.attn_processors.keys() == before.keys()


def test_shipped_default_model_loads():
    root = Path(__file__).resolve().parents[1] / "models" / "default"
    if not (root / "segdrop_model.json").is_file():
        pytest.skip("no default model shipped")
    bundle = load_bundle(root)
    info = bundle.info
    assert info["train_command"].startswith("python -m segdrop.training scratch --config training/configs/default_model.toml")
    assert bundle.image_size == 64 and bundle.unet.config.in_channels == 12
    assert sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) <= 20e6
    ids = bundle.tokenizer("a photo of a orange triangle").input_ids
    assert bundle.tokenizer.convert_ids_to_tokens(ids)[5:7] == ["orange</w>", "triangle</w>"]
