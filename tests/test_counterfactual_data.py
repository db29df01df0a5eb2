"""Counterfactual triplet dataset: readers (photo folder, toy world, normalised), the F/G difference box, SAM masks
from a tiny safetensors SAM, and the resumable, sharded dataset builder CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from segdrop.testing.tiny_sam import tiny_sam
from segdrop.training import counterfactual_data as cd
from segdrop.training.__main__ import main as training_main
from segdrop.training.loop import ConfigError

BG = np.array([150, 140, 120], np.uint8)
OBJ = (slice(20, 40), slice(20, 40))  # rows 20..39, cols 20..39 -> box (20, 20, 40, 40)
SHADOW = (slice(40, 52), slice(24, 50))  # touches the object's bottom edge: one difference component


def synthetic_pair(seed: int = 0, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """G: textured background; F: G with a red square, its darkened (hue-kept) shadow, and a small far blob."""
    rng = np.random.default_rng(seed)
    g = np.clip(BG.astype(np.int16) + rng.integers(-6, 7, (size, size, 3)), 0, 255).astype(np.uint8)
    f = g.copy()
    f[SHADOW] = np.rint(g[SHADOW].astype(np.float32) * 0.5).astype(np.uint8)
    f[OBJ] = (210, 30, 40)
    f[2:6, 56:61] = (20, 200, 20)  # smaller significant component elsewhere (20 px)
    f[60, 2] = (0, 0, 255)  # isolated speck, removed by the opening
    return f, g


def save(array: np.ndarray, path: Path) -> Path:
    data = array.astype(np.uint8) * 255 if array.dtype == bool else array
    Image.fromarray(data).save(path)
    return path


def tiny_checkpoint(tmp_path: Path, saturate: bool = True) -> Path:
    path = tmp_path / "tiny_sam.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_sam(saturate=saturate).state_dict().items()}, str(path))
    return path


@pytest.fixture
def tiny_type(monkeypatch):
    monkeypatch.setitem(cd.EXTRA_SAM_BUILDERS, "tiny", lambda checkpoint=None: tiny_sam(seed=1))
    return "tiny"


class FakeState:
    """The four things build_dataset uses from accelerate.PartialState."""

    def __init__(self, index: int = 0, count: int = 1) -> None:
        self.process_index, self.num_processes, self.device = index, count, "cpu"
        self.is_main_process = index == 0

    def wait_for_everyone(self) -> None:
        pass


# ----------------------------------------------------------------------------------------------- difference box


def test_object_box_is_the_object_not_its_shadow():
    f, g = synthetic_pair()
    region = cd.object_box(f, g)
    assert region.box == (20, 20, 40, 40)
    assert not region.box_from_component
    # the component is the largest one: object and shadow, not the far blob or the speck
    assert region.component[OBJ].all() and region.component[SHADOW].all()
    assert not region.component[2:6, 56:61].any() and not region.component[60, 2]
    assert region.component.sum() == 20 * 20 + 12 * 26
    assert cd.shadow_like(f, g)[SHADOW].mean() > 0.99 and not cd.shadow_like(f, g)[OBJ].any()


def test_object_box_falls_back_to_component_when_all_shadow_like():
    f, g = synthetic_pair()
    f[OBJ] = np.rint(g[OBJ].astype(np.float32) * 0.5).astype(np.uint8)  # a "black" object reads as shadow
    region = cd.object_box(f, g)
    assert region.box_from_component and region.box == (20, 20, 50, 52)


def test_significance_threshold_and_no_difference():
    g = np.full((32, 32, 3), 100, np.uint8)
    f = g + 20  # mean |F-G| = 20/255 = 0.078 everywhere
    with pytest.raises(ConfigError, match="do not differ significantly"):
        cd.object_box(f, g)
    region = cd.object_box(f, g, diff_threshold=0.05)
    assert region.component.all() and region.box == (0, 0, 32, 32)


# ----------------------------------------------------------------------------------------------- photo folder


def test_photo_folder_reads_plain_arrays(tmp_path):
    f, g = synthetic_pair()
    mask = np.zeros(f.shape[:2], bool)
    mask[OBJ] = True
    save(f, tmp_path / "a_F.png"), save(g, tmp_path / "a_G.png")
    Image.fromarray(np.stack([mask * 255] * 3, -1).astype(np.uint8)).save(tmp_path / "a_M.png")  # RGB mask
    Image.fromarray(f).save(tmp_path / "b_F.webp", lossless=True), Image.fromarray(g).save(tmp_path / "b_G.webp", lossless=True)
    save(mask, tmp_path / "b_M.jpeg")
    (tmp_path / "notes.txt").write_text("ignored")
    triplets = cd.read_triplets(tmp_path)
    assert [t.id for t in triplets] == ["a", "b"]
    for t in triplets:
        assert t.factual.dtype == np.uint8 and t.factual.shape == (64, 64, 3)
        assert t.counterfactual.dtype == np.uint8 and t.counterfactual.shape == (64, 64, 3)
        assert t.mask.dtype == bool and t.mask.shape == (64, 64)
        assert t.mask_source == "file"
        np.testing.assert_array_equal(t.mask, mask)  # jpeg noise stays on the right side of 127
        np.testing.assert_array_equal(t.factual, f)
        np.testing.assert_array_equal(t.counterfactual, g)


def test_photo_folder_errors(tmp_path):
    f, g = synthetic_pair()
    save(f, tmp_path / "a_F.png")
    with pytest.raises(ConfigError, match=r"without a counterfactual <name>_G: \['a_F'\]"):
        cd.list_triplets(tmp_path)
    save(g[:32], tmp_path / "a_G.jpg")
    with pytest.raises(ConfigError, match="64x64 but counterfactual a_G.jpg is 64x32"):
        cd.read_triplets(tmp_path, masker=object())
    save(g, tmp_path / "a_G.jpg")
    save(np.zeros((64, 64), bool), tmp_path / "a_M.png")
    with pytest.raises(ConfigError, match="object mask .* is empty"):
        cd.read_triplets(tmp_path)
    save(np.ones((32, 32), bool), tmp_path / "a_M.png")
    with pytest.raises(ConfigError, match="mask a_M.png is 32x32 but the factual image is 64x64"):
        cd.read_triplets(tmp_path)
    save(f, tmp_path / "stray.png")
    with pytest.raises(ConfigError, match=r"not named <name>_F/_G/_M: \['stray.png'\]"):
        cd.list_triplets(tmp_path)
    (tmp_path / "stray.png").unlink()
    save(g, tmp_path / "a_G.png")
    with pytest.raises(ConfigError, match="two files for the same role"):
        cd.list_triplets(tmp_path)


def test_missing_masks_without_checkpoint_name_the_files(tmp_path):
    f, g = synthetic_pair()
    for name in ("x", "y"):
        save(f, tmp_path / f"{name}_F.png"), save(g, tmp_path / f"{name}_G.png")
    save(np.ones((64, 64), bool), tmp_path / "x_M.png")
    with pytest.raises(ConfigError, match=r"1 triplet\(s\) have no mask file: \['y_F.png'\].*--sam_checkpoint"):
        cd.read_triplets(tmp_path)
    rc = training_main(["counterfactual-data", "--source", str(tmp_path), "--out", str(tmp_path / "out")])
    assert rc == 2 and not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------- toy world


def test_toyworld_triplets_use_union_of_object_masks(tmp_path):
    from segdrop.toyworld.dataset import load_png, read_dataset, write_dataset

    write_dataset(tmp_path, 4, size=32, seed=3)
    triplets = cd.read_triplets(tmp_path)
    records = read_dataset(tmp_path)
    assert len(triplets) == 4 and [t.id for t in triplets] == [r["id"] for r in records]
    assert any(len(r["object_masks"]) > 1 for r in records)  # a multi-object scene is covered
    for t, r in zip(triplets, records):
        union = np.zeros((32, 32), bool)
        for p in r["object_masks"]:
            union |= load_png(p)
        np.testing.assert_array_equal(t.mask, union)
        np.testing.assert_array_equal(t.mask, load_png(r["mask"]))
        assert t.mask_source == "toyworld" and t.factual.dtype == np.uint8 and t.mask.dtype == bool
        np.testing.assert_array_equal(t.factual, np.rint(load_png(r["image"]) * 255).astype(np.uint8))
        np.testing.assert_array_equal(t.counterfactual, np.rint(load_png(r["counterfactual"]) * 255).astype(np.uint8))
        assert (t.factual != t.counterfactual).any(-1)[t.mask].all()  # the object always changes pixels


# ----------------------------------------------------------------------------------------------- SAM


def test_load_sam_safetensors_only(tmp_path, tiny_type, monkeypatch):
    pth = tmp_path / "sam_vit_b_01ec64.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(ConfigError, match=r"(?s)safetensors only.*save_file\(torch.load"):
        cd.load_sam(pth, "vit_b")
    with pytest.raises(ConfigError, match="does not exist"):
        cd.load_sam(tmp_path / "nope.safetensors", "vit_b")
    ckpt = tiny_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="unknown SAM model type 'vit_x'"):
        cd.load_sam(ckpt, "vit_x")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    sam = cd.load_sam(ckpt, tiny_type)
    reference = tiny_sam(saturate=True).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in sam.state_dict().items())
    assert not sam.training


def test_load_sam_wrong_type_is_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not match model type 'vit_b'.*check --sam_type"):
        cd.load_sam(tiny_checkpoint(tmp_path), "vit_b")


def test_sam_masker_prompts_with_difference_box(monkeypatch):
    f, g = synthetic_pair()
    masker = cd.SamMasker(tiny_sam(saturate=True))
    seen = []
    predict = masker.predictor.predict
    monkeypatch.setattr(masker.predictor, "predict", lambda **kw: seen.append(kw["box"]) or predict(**kw))
    mask = masker(f, g, "pair")
    np.testing.assert_array_equal(seen[0], [20, 20, 40, 40])
    assert mask.dtype == bool and mask.shape == (64, 64)
    assert mask[OBJ].all()  # the saturated SAM marks everything: the restriction keeps the object ...
    rows, cols = np.nonzero(mask)
    assert rows.max() < 40 + 3 and cols.min() >= 20 - 3 and cols.max() < 40 + 3  # ... and the box margin
    assert mask[SHADOW].mean() < 0.2  # most of the shadow is cut off
    assert not mask[2:6, 56:61].any()
    # an untrained tiny SAM gives some mask in the same restricted region (or a clear error when empty)
    try:
        random_mask = cd.SamMasker(tiny_sam(seed=0))(f, g, "pair")
    except ConfigError as error:
        assert "SAM found no object" in str(error)
    else:
        assert random_mask.dtype == bool and not (random_mask & ~mask).any()


# ----------------------------------------------------------------------------------------------- builder


def test_cli_builds_normalised_dataset_with_sam_and_resumes(tmp_path, tiny_type, monkeypatch, capsys):
    monkeypatch.setitem(cd.EXTRA_SAM_BUILDERS, "tiny", lambda checkpoint=None: tiny_sam(seed=5))
    src, out = tmp_path / "photos", tmp_path / "out"
    src.mkdir()
    f, g = synthetic_pair()
    given = np.zeros((64, 64), bool)
    given[OBJ] = True
    save(f, src / "k1_F.jpg"), save(g, src / "k1_G.jpg"), save(given, src / "k1_M.png")
    save(f, src / "k2_F.png"), save(g, src / "k2_G.png")  # mask made by SAM
    ckpt = tiny_checkpoint(tmp_path, saturate=True)
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load must not be called"))
    args = ["counterfactual-data", "--source", str(src), "--out", str(out), "--sam_checkpoint", str(ckpt),
            "--sam_type", tiny_type]
    assert training_main(args) == 0
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [(r["id"], r["mask_source"], r["width"], r["height"]) for r in rows] == [
        ("k1", "file", 64, 64), ("k2", "sam", 64, 64)]
    with Image.open(out / "masks/k2.png") as im:
        assert im.mode == "L" and im.size == (64, 64)
        assert set(np.unique(np.asarray(im))) <= {0, 255}
    with Image.open(out / "factual/k2.png") as im:
        assert im.mode == "RGB"
    back = {t.id: t for t in cd.read_triplets(out)}
    assert back["k2"].mask[OBJ].all() and back["k2"].mask.dtype == bool
    np.testing.assert_array_equal(back["k1"].mask, given)
    np.testing.assert_array_equal(back["k2"].factual, f)
    # resume: complete items are skipped; an item killed before its record was written is redone
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    (out / "records/k2.json").unlink()
    sources = cd.list_triplets(src)
    with pytest.raises(ConfigError, match=r"not written yet \['k2'\]"):
        cd.write_metadata(sources, out)
    assert training_main(args) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items() if "k1" in p.name)
    assert len((out / "metadata.jsonl").read_text().splitlines()) == 2
    # a different source into the same folder is refused
    save(g, src / "k1_G.png"), (src / "k1_G.jpg").unlink()
    capsys.readouterr()
    assert training_main(args) == 2
    assert "already holds item 'k1' built from" in capsys.readouterr().err


def test_two_shards_equal_one_process(tmp_path):
    from segdrop.toyworld.dataset import write_dataset

    write_dataset(tmp_path / "toy", 5, size=32, seed=1)
    sources = cd.list_triplets(tmp_path / "toy")
    ids = [s.id for s in sources]
    first = cd.build_shard(sources, tmp_path / "two", 0, 2)
    second = cd.build_shard(sources, tmp_path / "two", 1, 2)
    assert first == ids[0::2] and second == ids[1::2]
    cd.write_metadata(sources, tmp_path / "two")
    config = cd.CounterfactualDataConfig(source=str(tmp_path / "toy"), out=str(tmp_path / "one"))
    cd.build_dataset(config, FakeState())
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "two") for p in (tmp_path / "two").rglob("*") if p.is_file())
    assert len(files) == 1 + 4 * 5
    for rel in files:
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes(), rel
    assert cd.build_shard(sources, tmp_path / "two", 0, 1) == []  # everything complete: nothing redone


def test_config_toml_and_flag_precedence(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('source = "a"\nout = "b"\ndiff_threshold = 0.2\nsam_type = "vit_l"\n')
    args = cd.build_parser().parse_args(["--config", str(toml), "--sam_type", "vit_h"])
    config = cd.resolve_config(args)
    assert (config.source, config.out, config.diff_threshold, config.sam_type) == ("a", "b", 0.2, "vit_h")
    toml.write_text("diff_treshold = 0.2\n")
    with pytest.raises(ConfigError, match=r"unknown keys \['diff_treshold'\]"):
        cd.resolve_config(cd.build_parser().parse_args(["--config", str(toml)]))
    with pytest.raises(ConfigError, match="diff_threshold 2.0 must be in"):
        cd.build_dataset(cd.CounterfactualDataConfig(source="a", out="b", diff_threshold=2.0), FakeState())


def test_metadata_ids_must_be_file_names(tmp_path):
    (tmp_path / "metadata.jsonl").write_text(json.dumps(
        {"id": "../evil", "factual": "f.png", "counterfactual": "g.png", "mask": "m.png"}) + "\n")
    with pytest.raises(ConfigError, match=r"ids \['../evil'\] cannot name files"):
        cd.list_triplets(tmp_path)
