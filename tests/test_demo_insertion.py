"""The insertion table: one-object toy pairs, the scores against the factual scene, and the demo section on tiny
insertion models trained here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segdrop import toyworld
from segdrop.demo import job
from segdrop.demo.insertion import (
    TOY_INSERTION_MODELS,
    cropped_inserter,
    effects_under_light,
    evaluate_insertion,
    insertion_pairs,
    insertion_scores,
    light_blind_renders,
    light_blind_scores,
    missing_models,
    naive_paste,
    toy_inserters,
)
from segdrop.demo.protocol import EvalSettings
from segdrop.demo.removal import psnr_from_mse
from segdrop.toyworld.dataset import to_uint8
from segdrop.training import train_insertion
from segdrop.training.bundle import load_bundle
from tests.test_train_objectdrop import tiny_t2i_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pairs():
    return insertion_pairs("insertion", 6, 2024, 48)


def test_object_pairs_on_disk_hold_the_scene_one_object_and_the_scene_without_it(tmp_path):
    from segdrop.training.bootstrap_data import BootstrapConfig, list_sources
    from segdrop.training.counterfactual_data import read_triplets

    root = toyworld.write_object_pairs(tmp_path / "pairs", 4, size=32, seed=3, split="pairs")
    toyworld.write_object_pairs(root, 2, size=32, seed=3, split="pairs")  # appending continues the numbering
    records = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(len(records))) and len({r["id"] for r in records}) == 6
    for record, triplet in zip(records, read_triplets(root)):
        scene = toyworld.make_scene(record["seed"], 32)
        k = record["object"]
        assert k == toyworld.chosen_object(scene)
        assert np.array_equal(triplet.factual, to_uint8(scene.image))
        assert np.array_equal(triplet.counterfactual, to_uint8(scene.counterfactual_without(k)))
        assert np.array_equal(triplet.mask, scene.objects[k].mask)
    # the bootstrap builder reads the same folder as unpaired images: the factual image and the object's mask only
    sources = list_sources(BootstrapConfig(source=str(root), out=str(tmp_path / "boot"), removal_model="x"))
    assert [Path(s["image"]).parent.name for s in sources] == ["images"] * 6
    assert [Path(s["mask"]).parent.name for s in sources] == ["objects"] * 6


def test_pairs_paste_the_object_exactly_and_keep_the_other_objects_effects(pairs):
    for pair in pairs:
        composite = pair.composite
        assert np.array_equal(composite[pair.mask], pair.factual[pair.mask])
        assert np.array_equal(composite[~pair.mask], pair.background[~pair.mask])
        changed = np.abs(pair.factual.astype(int) - pair.background.astype(int)).max(-1) > 0
        # the factual scene differs from the background exactly on the object and its own effects
        assert not (changed & ~(pair.mask | pair.shadow | pair.reflection)).any()
        assert changed[pair.shadow].all() and not (pair.shadow & pair.mask).any()
    assert sum(int(p.shadow.sum()) for p in pairs) > 0


def test_paste_leaves_the_shadow_error_and_the_truth_scores_perfectly(pairs):
    truth = insertion_scores([p.factual for p in pairs], pairs)
    assert truth == {"psnr": 100.0, "psnr_shadow": 100.0, "psnr_reflection": truth["psnr_reflection"]}
    assert truth["psnr_reflection"] in (None, 100.0)
    paste = insertion_scores(naive_paste(np.stack([p.composite for p in pairs]), None), pairs)
    se = sum(float((((p.composite / 255.0) - p.factual / 255.0) ** 2).mean(-1)[p.shadow].sum()) for p in pairs)
    assert paste["psnr_shadow"] == pytest.approx(psnr_from_mse(se / sum(int(p.shadow.sum()) for p in pairs)))
    assert paste["psnr_shadow"] < 20 < paste["psnr"] < 100


def test_an_inserter_returning_the_wrong_shape_is_a_clear_error(pairs):
    with pytest.raises(ValueError, match="expected uint8 images"):
        evaluate_insertion({"bad": lambda images, masks: images[:, :-1]}, pairs)


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory) -> Path:
    """Two tiny insertion models (2 steps each on generated one-object pairs) under the demo's folder names."""
    root = tmp_path_factory.mktemp("insertion_models")
    t2i = tiny_t2i_bundle(root / "t2i")
    run = root / "run"
    assert train_insertion.main(["--base", str(t2i), "--generate", "4", "--output_dir", str(run), "--steps", "2",
                                 "--batch_size", "2", "--warmup_steps", "0", "--num_threads", "1"]) == 0
    for name in TOY_INSERTION_MODELS.values():
        shutil.copytree(run / "model", root / "models" / name)
    return root / "models"


def test_the_demo_section_scores_three_rows_and_writes_panels(toy_models, tmp_path):
    config = job.DemoConfig(out=tmp_path / "out", panels=2, settings=EvalSettings(seed=1), insertion_scenes=3,
                            insertion_steps=2, insertion_models=toy_models)
    config.out.mkdir()
    section = job.run_insertion(config)
    assert section["scenes"] == 3 and section["steps"] == 2
    assert list(section["rows"]) == ["paste", "no_bootstrap", "bootstrap"]
    for scores in section["rows"].values():
        assert set(scores) == {"psnr", "psnr_shadow", "psnr_reflection"}
    # the same model and seed give the same row; only the object and its surroundings may change
    assert section["rows"]["no_bootstrap"] == section["rows"]["bootstrap"]
    assert sorted(p.name for p in config.out.glob("insertion_*.png")) == ["insertion_00.png", "insertion_01.png"]
    settings = job.section_results("insertion", section)["insertion_settings"]
    assert settings["scenes"] == 3 and settings["steps"] == 2
    assert set(settings["light_blind"]) == {"draws", "random_light", "random_light_mean"}


def test_a_model_trained_on_object_crops_is_sampled_on_them_and_nothing_outside_changes(toy_models, pairs, tmp_path):
    """A card with ``crop_context`` (``insertion --crop_context``) makes the table sample the square crop around the
    object (as SegDrop_ObjectDropInsert crops), so every pixel outside that crop is the composite's exactly."""
    from segdrop.removal.crop import square_box
    from segdrop.training.bundle import BUNDLE_FILE

    models = tmp_path / "models"
    shutil.copytree(toy_models, models)
    card = models / TOY_INSERTION_MODELS["bootstrap"] / BUNDLE_FILE
    card.write_text(json.dumps({**json.loads(card.read_text()), "crop_context": 0.5}))
    composites = np.stack([p.composite for p in pairs])
    masks = np.stack([p.mask for p in pairs])
    rows = toy_inserters(models, steps=2, seed=0)
    cropped = rows["bootstrap"](composites, masks)  # 48-px scenes: crops are resized to the 16-px model
    assert cropped.shape == composites.shape and cropped.dtype == np.uint8
    for k, mask in enumerate(masks):
        box = square_box(torch.from_numpy(mask), 0.5)
        outside = np.ones(mask.shape, bool)
        outside[box.slices] = False
        assert np.array_equal(cropped[k][outside], composites[k][outside])
        assert not np.array_equal(cropped[k][mask], composites[k][mask])  # the model's output on the object
    with pytest.raises(ValueError, match="works at"):  # the whole-image row needs the model's size
        rows["no_bootstrap"](composites, masks)
    direct = cropped_inserter(load_bundle(models / TOY_INSERTION_MODELS["bootstrap"]), 0.5, steps=2, seed=0)
    assert np.array_equal(direct(composites, masks), cropped)


def test_missing_models_are_named_and_the_section_is_skipped(tmp_path):
    assert set(missing_models(tmp_path)) == set(TOY_INSERTION_MODELS.values())
    section = job.run_insertion(job.DemoConfig(out=tmp_path / "out", insertion_models=tmp_path))
    assert "toy_insertion" in section["skipped"] and "rows" not in section



def test_effects_under_the_scenes_own_light_give_back_the_factual_scene():
    """The light-blind references apply the renderer's shadow/reflection under another light to the paste; under
    the layout's own light that is the factual scene again (up to one grey level of rounding)."""
    from segdrop.toyworld.scene import render_layout, sample_layout

    checked = 0
    for index in range(12):
        seed = toyworld.scene_seed(2024, "insertion", index)
        layout = sample_layout(np.random.default_rng(seed))
        if not layout.objects:
            continue
        scene = render_layout(layout, 48, seed)
        k = toyworld.chosen_object(scene)
        factual = to_uint8(scene.image)
        composite = np.where(scene.objects[k].mask[..., None], factual, to_uint8(scene.counterfactual_without(k)))
        theta = float(np.arctan2(layout.light[1], layout.light[0]))
        again = effects_under_light(composite, layout, k, theta, 48, seed)
        assert np.abs(again.astype(int) - factual.astype(int)).max() <= 1
        checked += 1
    assert checked >= 8


def test_light_blind_references_are_the_paste_plus_effects_and_miss_the_shadow_with_a_wrong_light(pairs):
    renders = light_blind_renders("insertion", len(pairs), 2024, 48, draws=3, rng_seed=0)
    assert renders.shape == (3, len(pairs), 48, 48, 3) and renders.dtype == np.uint8
    for draw in renders:
        for render, pair in zip(draw, pairs):
            assert np.array_equal(render[pair.mask], pair.factual[pair.mask])  # the object is the paste's
            assert (render.astype(int) <= pair.composite.astype(int) + 1).all()  # effects only darken here
    scores = light_blind_scores(pairs, renders)
    assert set(scores) == {"random_light", "random_light_mean"}
    paste = insertion_scores([p.composite for p in pairs], pairs)
    # a shadow somewhere near the object beats no shadow, and is far from perfect when the light is guessed
    assert paste["psnr_shadow"] < scores["random_light_mean"]["psnr_shadow"] < 40
    assert np.array_equal(light_blind_renders("insertion", len(pairs), 2024, 48, draws=3, rng_seed=0), renders)
