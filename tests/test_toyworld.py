"""Ground-truth guarantees of the toy world (fast: numpy only, small sizes)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from segdrop.toyworld import (
    BACKGROUNDS,
    COLORS,
    SHAPES,
    load_png,
    make_scene,
    make_scenes,
    read_dataset,
    save_panel,
    scene_seed,
    vocabulary,
    write_dataset,
)
from segdrop.toyworld.dataset import to_uint8

SEEDS = range(24)


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.float64) - b.astype(np.float64)).max(axis=-1)


def test_determinism():
    a, b, c = make_scene(7), make_scene(7), make_scene(8)
    assert a.caption == b.caption
    for name in ("image", "counterfactual", "object_mask", "effects_mask"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.image, c.image)
    assert a.image.dtype == np.float32 and a.image.shape == (64, 64, 3)
    assert 0.0 <= a.image.min() and a.image.max() <= 1.0


@pytest.mark.parametrize("seed", [1, 2, 3, 11])
def test_sizes_share_layout(seed):
    small, big = make_scene(seed, 64), make_scene(seed, 256)
    assert big.image.shape == (256, 256, 3) and small.caption == big.caption
    pooled = big.object_mask.reshape(64, 4, 64, 4).mean(axis=(1, 3)) > 0.5
    union = small.object_mask | pooled
    assert (small.object_mask == pooled).sum() / small.object_mask.size > 0.97
    assert (small.object_mask & pooled).sum() / max(union.sum(), 1) > 0.85


@pytest.mark.parametrize("background", BACKGROUNDS)
def test_counterfactual_invariant_exact(background):
    for seed in SEEDS[:4]:
        _check_invariants(make_scene(seed, 64, background=background))


def test_counterfactual_invariant_many_seeds():
    for seed in SEEDS:
        _check_invariants(make_scene(seed, 64))
    _check_invariants(make_scene(5, 128, n_objects=3))


def _check_invariants(scene):
    diff = _changed(scene.image, scene.counterfactual)
    region = scene.object_mask | scene.shadow_mask | scene.reflection_mask
    np.testing.assert_array_equal(region, scene.removal_mask)
    assert (diff[~region] == 0).all(), "pixels outside objects/effects must be bit-identical"
    assert (diff[region] > 1e-3).all(), "every object/effect pixel must really change"
    np.testing.assert_array_equal(scene.counterfactual, scene.background)
    assert not (scene.effects_mask & scene.object_mask).any()
    for i, obj in enumerate(scene.objects):
        d = _changed(scene.image, scene.counterfactual_without(i))
        m = obj.mask | obj.shadow_mask | obj.reflection_mask
        assert (d[~m] == 0).all(), f"object {i}: change outside its masks"
        assert (d[m] > 1e-3).all(), f"object {i}: unchanged pixel inside its masks"
        assert obj.mask.any()


def test_occlusion_reveals_hidden_object():
    for seed in range(200):
        s = make_scene(seed)
        for i, o in enumerate(s.objects):
            hidden = o.full_mask & ~o.mask
            if hidden.any():
                top = next(j for j in range(i + 1, len(s.objects)) if (s.objects[j].mask & hidden).any())
                # Removing the occluder repaints the hidden part with the earlier object's own colours.
                cf = s.counterfactual_without(top)
                revealed = hidden & s.objects[top].mask
                assert (_changed(cf, s.image)[revealed] > 1e-3).all()
                return
    pytest.fail("no occlusion in 200 seeds")


def test_effects_leave_residue_when_only_object_pixels_removed():
    residues = []
    for seed in SEEDS:
        s = make_scene(seed)
        naive = np.where(s.object_mask[..., None], s.counterfactual, s.image)
        if s.shadow_mask.any():
            residues.append(np.abs(naive - s.counterfactual)[s.shadow_mask].mean())
        if s.reflection_mask.any():
            assert np.abs(naive - s.counterfactual)[s.reflection_mask].mean() > 0.02
    assert len(residues) > len(SEEDS) // 2
    assert min(residues) > 0.05


def test_floor_scenes_have_reflections():
    scenes = [make_scene(seed, background="floor") for seed in range(6)]
    assert all(s.reflection_mask.any() for s in scenes)
    assert all(not make_scene(seed, background="stripes").reflection_mask.any() for seed in range(3))


def test_captions_and_vocabulary():
    vocab = set(vocabulary())
    assert {"a", "photo", "of", "and"} <= vocab and set(SHAPES) <= vocab and set(COLORS) <= vocab
    assert make_scene(0, n_objects=1).caption.count(" and ") == 0
    for seed in range(60):
        s = make_scene(seed)
        assert s.caption == "a photo of " + " and ".join(f"a {o.color} {o.shape}" for o in s.objects)
        assert set(s.caption.split()) <= vocab
        for o in s.objects:
            assert o.name == f"{o.color} {o.shape}" and o.word == o.shape == o["shape"]
            assert o.shape in SHAPES and o.color in COLORS


@pytest.mark.parametrize("n", [1, 2, 3])
def test_requested_object_count(n):
    assert all(len(make_scene(seed, n_objects=n).objects) == n for seed in range(8))


def test_hardness_statistics():
    same_colour = textured = occluded = vocab_patches = 0
    kinds = set()
    for seed in range(200):
        layout_scene = make_scene(seed, 32)
        colours = [o.color for o in layout_scene.objects]
        same_colour += len(set(colours)) < len(colours)
        textured += any(o.texture != "plain" for o in layout_scene.objects)
        occluded += any((o.full_mask & ~o.mask).any() for o in layout_scene.objects)
        vocab_patches += bool(layout_scene.layout.background.patches)
        kinds.add(layout_scene.background_kind)
    assert same_colour >= 10 and textured >= 60 and occluded >= 15 and vocab_patches >= 30
    assert kinds == set(BACKGROUNDS)


def test_make_scenes_and_split_seeds():
    scenes = make_scenes(3, 3, 32)
    assert len(scenes) == 3 and len({s.seed for s in scenes}) == 3
    train = {scene_seed(0, "train", i) for i in range(500)}
    val = {scene_seed(0, "val", i) for i in range(500)}
    assert not train & val and len(train) == 500


def test_dataset_round_trip_and_append(tmp_path: Path):
    root = tmp_path / "ds"
    assert write_dataset(root, 3, size=32, seed=1, split="train") == root
    meta = root / "metadata.jsonl"
    write_dataset(root, 2, size=32, seed=1, split="val")
    write_dataset(root, 1, size=32, seed=1, split="train")  # appending continues numbering
    lines = [json.loads(x) for x in meta.read_text().splitlines()]
    assert [r["id"] for r in lines] == [
        "train_00000",
        "train_00001",
        "train_00002",
        "val_00000",
        "val_00001",
        "train_00003",
    ]
    keys = {
        "id",
        "split",
        "seed",
        "image",
        "caption",
        "mask",
        "effects_mask",
        "object_masks",
        "objects",
        "counterfactual",
        "background",
    }
    assert all(set(r) == keys for r in lines)
    assert not list(root.rglob("*.tmp")) and not list(root.rglob(".*"))
    records = read_dataset(root)
    assert len(records) == 6 and len(read_dataset(root, "val")) == 2
    for rec in records[:4]:
        s = make_scene(rec["seed"], 32)
        assert rec["caption"] == s.caption and rec["objects"] == [o.to_record() for o in s.objects]
        assert Path(rec["image"]).is_absolute()
        np.testing.assert_array_equal(to_uint8(load_png(rec["image"])), to_uint8(s.image))
        np.testing.assert_array_equal(to_uint8(load_png(rec["counterfactual"])), to_uint8(s.counterfactual))
        np.testing.assert_array_equal(load_png(rec["mask"]), s.object_mask)
        np.testing.assert_array_equal(load_png(rec["effects_mask"]), s.effects_mask)
        for path, o in zip(rec["object_masks"], s.objects, strict=True):
            np.testing.assert_array_equal(load_png(path), o.mask)
        from PIL import Image

        with Image.open(rec["image"]) as im, Image.open(rec["mask"]) as mk:
            assert im.mode == "RGB" and mk.mode == "L" and set(np.unique(np.asarray(mk))) <= {0, 255}


def test_cli_and_panel(tmp_path: Path):
    from segdrop.toyworld.__main__ import main

    assert main(["--out", str(tmp_path / "cli"), "--count", "2", "--size", "32", "--panels", "1"]) == 0
    assert len(read_dataset(tmp_path / "cli")) == 2
    assert len(list((tmp_path / "cli" / "panels").glob("*.png"))) == 1
    out = tmp_path / "panel.png"
    save_panel(make_scene(0, 48), out)
    from PIL import Image

    with Image.open(out) as im:
        assert im.size[1] == 48 and im.size[0] > 4 * 48


def test_relit_moves_only_the_shadows_and_its_own_light_changes_nothing():
    """``relit`` (the insertion table's light-blind references) keeps the layout and moves the light: under the
    layout's own angle the scene is identical; under the opposite angle the shadows move and nothing else does."""
    from segdrop.toyworld.scene import relit, render_layout, sample_layout

    moved = 0
    for seed in SEEDS:
        layout = sample_layout(np.random.default_rng(seed))
        if not layout.objects or layout.background.kind == "floor":
            continue
        scene = render_layout(layout, 48, seed)
        own = np.arctan2(layout.light[1], layout.light[0])
        same = render_layout(relit(layout, own), 48, seed)
        np.testing.assert_array_equal(same.image, scene.image)
        other = render_layout(relit(layout, own + np.pi), 48, seed)
        np.testing.assert_array_equal(other.object_mask, scene.object_mask)
        differs = _changed(other.image, scene.image) > 0
        # the light also shades the objects a little (10 %); outside them only shadows move
        assert not (differs & ~scene.object_mask & ~(scene.shadow_mask | other.shadow_mask)).any()
        moved += int((other.shadow_mask != scene.shadow_mask).any())
    assert moved >= 5
