"""The evaluation protocol on plain arrays, the demo (main job) on random tiny models, and the CLIs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from segdrop import demo, toyworld
from segdrop.demo import LabelledImage, read_folder
from segdrop.demo.protocol import EvalSettings, evaluate
from segdrop.testing.tiny_models import tiny_text_encoder
from segdrop.training.bundle import ModelBundle, save_bundle
from segdrop.training.codec import PixelUnshuffleCodec
from segdrop.training.tokenizer import load_tokenizer, write_word_tokenizer

FAST = EvalSettings(t0=2, tau_candidates=(0.5, 1.1), kmeans_candidates=(2, 3), colour_distances=(0.2,))


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
                         tokenizer=tokenizer, scheduler=scheduler, codec=PixelUnshuffleCodec(2), image_size=32,
                         info={"vocabulary": toyworld.vocabulary()})
    return save_bundle(bundle, folder / "model")


def square_image(size: int = 32) -> LabelledImage:
    """A red square on a grey background with a little noise, built from plain arrays (no toy world)."""
    image = np.full((size, size, 3), 128, np.int64)
    square = np.zeros((size, size), bool)
    square[8:20, 10:24] = True
    image[square] = (220, 30, 30)
    image = (image + np.random.default_rng(0).integers(-10, 11, image.shape)).astype(np.uint8)
    return LabelledImage(image=image, caption="a photo of a red square", object_masks=[square],
                         object_names=["red square"], object_colours=[(220 / 255, 30 / 255, 30 / 255)])


def test_demo_writes_results_and_panels(random_bundle, tmp_path):
    config = demo.DemoConfig(out=tmp_path / "out", checkpoint=random_bundle, scenes=3, validation_scenes=2, panels=2,
                             localization=True, settings=FAST, removal=False, refinement=False,
                             insertion=False)
    results = demo.run_demo(config)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["images"] == 3 and saved["image_size"] == [32, 32]
    for table in ("foreground_iou", "segmentation_miou"):
        assert len(saved[table]) >= 3
        assert all(0.0 <= value <= 1.0 for value in saved[table].values())
    assert "| concept distillation, object word (attention + GMM) |" in (tmp_path / "out" / "results.md").read_text()
    assert sorted(p.name for p in (tmp_path / "out").glob("scene_*.png")) == ["scene_00.png", "scene_01.png"]
    assert results["settings"]["tau_chosen"] in (0.5, 1.1)
    assert {"object word", "first word", "name"} <= set(results["word_localization"])


def test_evaluate_takes_plain_arrays_and_scores_baselines_exactly(random_bundle):
    """On a two-level image Otsu and the colour oracle are exact and k-means with k = 2 finds both regions."""
    from segdrop.training.bundle import load_bundle

    item = square_image()
    settings = EvalSettings(t0=2, kmeans_k=2, colour_distance=0.1)
    evaluation = evaluate(load_bundle(random_bundle), [item], settings=settings)
    fg, seg = evaluation.results["foreground_iou"], evaluation.results["segmentation_miou"]
    assert fg["Otsu on grey levels (minority side)"] == 1.0
    assert fg["known object colour (oracle, distance 0.1 fixed: no validation images)"] == 1.0
    assert seg["k-means on RGB (k=2 fixed: no validation images)"] == 1.0
    masks, attention = evaluation.foreground["object word"]
    assert masks[0].shape == (32, 32) and masks[0].dtype == bool and attention[0].shape == (16, 16)
    assert evaluation.segments[0].shape == (32, 32)


def test_uint8_and_float_images_score_alike(random_bundle):
    from segdrop.training.bundle import load_bundle

    bundle = load_bundle(random_bundle)
    item = square_image()
    as_float = LabelledImage(image=item.rgb, caption=item.caption, object_masks=item.object_masks,
                             object_names=item.object_names)
    a = evaluate(bundle, [item], settings=FAST).results
    b = evaluate(bundle, [as_float], settings=FAST).results
    assert a["segmentation_miou"] == b["segmentation_miou"]


def test_labelled_image_checks_its_arrays():
    item = square_image()
    with pytest.raises(ValueError, match="to match the image"):
        LabelledImage(image=item.image, caption=item.caption, object_masks=[np.zeros((8, 8), bool)],
                      object_names=["red square"])
    with pytest.raises(ValueError, match="one name each"):
        LabelledImage(image=item.image, caption=item.caption, object_masks=item.object_masks, object_names=[])
    with pytest.raises(ValueError, match="RGB"):
        LabelledImage(image=item.image[..., 0], caption="", object_masks=[], object_names=[])


def test_ground_truth_labels_follow_visible_object_masks():
    scene = toyworld.make_scene(7, size=32, n_objects=2)
    item = demo.from_scene(scene)
    assert set(np.unique(item.labels)) <= {0, 1, 2}
    assert np.array_equal(item.labels > 0, scene.object_mask)
    assert np.array_equal(item.image, scene.image) and item.object_names == [o.name for o in scene.objects]


def test_read_folder_round_trips_the_toy_world_writer(tmp_path):
    toyworld.write_dataset(tmp_path / "data", 3, size=32, seed=5, split="test")
    items = read_folder(tmp_path / "data", "test")
    scenes = [toyworld.make_scene(toyworld.scene_seed(5, "test", i), size=32) for i in range(3)]
    for item, scene in zip(items, scenes):
        assert item.image.dtype == np.uint8
        assert np.abs(item.rgb - scene.image).max() <= 0.5 / 255 + 1e-6
        assert np.array_equal(item.object_masks, np.stack([o.mask for o in scene.objects]))
        assert item.object_names == [o.name for o in scene.objects] and item.caption == scene.caption
        assert np.array_equal(item.effects_mask, scene.effects_mask)
    with pytest.raises(ValueError, match="no records of split 'val'"):
        read_folder(tmp_path / "data", "val")
    with pytest.raises(FileNotFoundError, match="metadata.jsonl"):
        read_folder(tmp_path)


def test_evaluate_cli_scores_a_folder(random_bundle, tmp_path):
    from segdrop.cli import main

    toyworld.write_dataset(tmp_path / "data", 2, size=32, seed=1, split="test")
    toyworld.write_dataset(tmp_path / "data", 2, size=32, seed=1, split="val")
    out = tmp_path / "eval"
    assert main(["evaluate", str(tmp_path / "data"), "--checkpoint", str(random_bundle), "--split", "test",
                 "--validation-split", "val", "--out", str(out), "--t0", "2", "--panels", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["images"] == 2 and results["settings"]["validation_images"] == 2
    assert any("chosen on validation" in name for name in results["segmentation_miou"])
    assert (out / "scene_00.png").is_file() and not (out / "scene_01.png").exists()


def test_cli_rejects_unknown_arguments(capsys):
    from segdrop.cli import main

    with pytest.raises(SystemExit):
        main(["demo", "--no-such-flag"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_words_outside_the_vocabulary_are_a_clear_error(random_bundle):
    from segdrop.training.bundle import load_bundle

    bundle = load_bundle(random_bundle)
    with pytest.raises(ValueError, match=r"'cyan'.*Use only these words.*circle"):
        bundle.encode_prompt("a photo of a cyan circle")
    with pytest.raises(ValueError, match="'cyan'"):
        evaluate(bundle, [LabelledImage(image=square_image().image, caption="a cyan square",
                                        object_masks=square_image().object_masks, object_names=["cyan square"])],
                 settings=FAST)
    assert bundle.tokens("a red circle")[0][1:4] == ["a</w>", "red</w>", "circle</w>"]


def test_cross_attention_maps_for_caption_words(random_bundle):
    from segdrop.training.bundle import load_bundle

    bundle = load_bundle(random_bundle)
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    before = dict(bundle.unet.attn_processors)
    maps, tokens = demo.word_maps(bundle, image, "a photo of a red square", timesteps=(300,))
    assert maps.shape == (16, 32, 32) and tokens[1:7] == ["a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "square</w>"]
    torch.testing.assert_close(maps.sum(0), torch.ones(32, 32))  # softmax over tokens, averaged
    assert bundle.unet.attn_processors.keys() == before.keys()


@pytest.mark.slow
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
    config = demo.DemoConfig(out=tmp_path / "out", checkpoint=root, scenes=2, validation_scenes=1, panels=1,
                             settings=EvalSettings(t0=2, tau_candidates=(1.1,)), removal=False,
                             refinement=False, insertion=False)
    results = demo.run_demo(config)
    assert results["image_size"] == [128, 128]
    assert (tmp_path / "out" / "scene_00.png").exists()


def test_a_vocabulary_built_from_captions_accepts_them():
    """The vocabulary builder and the vocabulary check split words the same way (punctuation included)."""
    from segdrop.training.train_scratch import build_vocabulary

    captions = ["a red circle, and a blue square"]
    bundle = ModelBundle(None, None, None, None, None, 64, {"vocabulary": build_vocabulary(captions, "a photo of a {}")})
    bundle.check_vocabulary(captions)
    with pytest.raises(ValueError, match="'cyan'"):
        bundle.check_vocabulary(["a cyan circle"])


def test_float_images_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="divide 0-255 values by 255"):
        demo.as_float_image(np.full((4, 4, 3), 200.0))


def test_evaluate_without_split_never_scores_the_validation_images(random_bundle, tmp_path):
    toyworld.write_dataset(tmp_path / "data", 2, size=32, seed=1, split="test")
    toyworld.write_dataset(tmp_path / "data", 1, size=32, seed=1, split="val")
    results = demo.evaluate_folder(tmp_path / "data", random_bundle, tmp_path / "out", validation_split="val",
                                   settings=FAST, panels=0)
    assert results["images"] == 2 and results["settings"]["validation_images"] == 1
