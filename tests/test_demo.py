"""The main job end to end on a random tiny model (fast), and the CLI that runs it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from segdrop import demo, toyworld
from segdrop.training.bundle import ModelBundle, save_bundle
from segdrop.training.codec import PixelUnshuffleCodec
from segdrop.testing.tiny_models import tiny_text_encoder
from segdrop.training.tokenizer import load_tokenizer, write_word_tokenizer


@pytest.fixture(scope="module")
def random_bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bundle")
    tokenizer = load_tokenizer(write_word_tokenizer(toyworld.vocabulary(), folder / "tok", max_length=16))
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=12, out_channels=12, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
        attention_head_dim=2, norm_num_groups=8, cross_attention_dim=16,
    )
    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    bundle = ModelBundle(unet=unet, text_encoder=tiny_text_encoder(len(tokenizer), 16, max_position_embeddings=16),
                         tokenizer=tokenizer, scheduler=scheduler, codec=PixelUnshuffleCodec(2), image_size=32, info={})
    return save_bundle(bundle, folder / "model")


def test_demo_writes_results_and_panels(random_bundle, tmp_path):
    config = demo.DemoConfig(out=tmp_path / "out", checkpoint=random_bundle, scenes=3, validation_scenes=2, t0=2,
                             panels=2, tau_candidates=(0.5, 1.1))
    results = demo.run_demo(config)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["scenes"] == 3 and saved["image_size"] == 32
    for table in ("foreground_iou", "segmentation_miou"):
        assert len(saved[table]) >= 3
        assert all(0.0 <= value <= 1.0 for value in saved[table].values())
    assert "| concept distillation, shape word (attention + GMM) |" in (tmp_path / "out" / "results.md").read_text()
    assert sorted(p.name for p in (tmp_path / "out").glob("scene_*.png")) == ["scene_00.png", "scene_01.png"]
    assert results["settings"]["tau_chosen"] in (0.5, 1.1)


def test_ground_truth_labels_follow_visible_object_masks():
    scene = toyworld.make_scene(7, size=32, n_objects=2)
    labels = demo.ground_truth_labels(scene)
    assert set(np.unique(labels)) <= {0, 1, 2}
    assert np.array_equal(labels > 0, scene.object_mask)


def test_cli_rejects_unknown_arguments(capsys):
    from segdrop.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--no-such-flag"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_demo_runs_on_a_diffusers_sd_folder(tmp_path):
    """``--checkpoint`` with a diffusers Stable Diffusion folder (tiny random SD1.5 layout, VAE, CLIP tokenizer)."""
    from transformers import CLIPTokenizer

    from segdrop.testing.tiny_models import tiny_sd15_unet, tiny_vae
    from segdrop.training.train_scratch import make_scheduler

    root = tmp_path / "sd"
    vocab = len(CLIPTokenizer.from_pretrained(write_word_tokenizer(toyworld.vocabulary(), root / "tokenizer")))
    tiny_sd15_unet(sample_size=16).save_pretrained(root / "unet", safe_serialization=True)
    tiny_text_encoder(vocab).save_pretrained(root / "text_encoder", safe_serialization=True)
    tiny_vae().save_pretrained(root / "vae", safe_serialization=True)
    make_scheduler().save_pretrained(root / "scheduler")
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    config = demo.DemoConfig(out=tmp_path / "out", checkpoint=root, scenes=2, validation_scenes=1, t0=2, panels=1,
                             tau_candidates=(1.1,))
    results = demo.run_demo(config)
    assert results["image_size"] == 128
    assert (tmp_path / "out" / "scene_00.png").exists()
