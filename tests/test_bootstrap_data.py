"""ObjectDrop insertion bootstrap data (``training/bootstrap_data.py``): filters, composite, report, resume, and that
toy-world counterfactuals / backgrounds are never read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segdrop.training import bootstrap_data as bd
from segdrop.training import conditioned_unet
from segdrop.training.loop import ConfigError

SIZE = 16
torch.set_num_threads(1)


def tiny_removal_bundle(folder: Path) -> Path:
    """A tiny random removal bundle: the tiny text-to-image model of test_train_objectdrop, widened to 25 channels."""
    from segdrop.training.bundle import load_bundle, save_bundle
    from segdrop.training.conditioned_unet import make_inpaint_unet

    from .test_train_objectdrop import tiny_t2i_bundle

    bundle = load_bundle(tiny_t2i_bundle(folder))
    bundle.unet = make_inpaint_unet(bundle.unet, bundle.codec.latent_channels)
    bundle.info = {**bundle.info, "recipe": "removal", "gray_masked": False, "conditioning": "removal"}
    return save_bundle(bundle, folder / "removal")


@pytest.fixture(scope="module")
def removal(tmp_path_factory) -> Path:
    return tiny_removal_bundle(tmp_path_factory.mktemp("rm"))


@pytest.fixture()
def toy(tmp_path) -> Path:
    """A toy world with only the factual images and masks left: the ground-truth folders are deleted."""
    from segdrop.toyworld import write_dataset

    root = write_dataset(tmp_path / "toy", 8, size=SIZE, seed=0)
    for sub in ("counterfactuals", "backgrounds", "effects", "objects"):
        shutil.rmtree(root / sub)
    return root


def argv(source: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--source", str(source), "--removal_model", str(model), "--out", str(out), "--steps", "2",
            "--min_area", "0.02", "--max_area", "0.6", *extra]


def masks_of(toy: Path) -> dict[str, np.ndarray]:
    recs = [json.loads(line) for line in (toy / "metadata.jsonl").read_text().splitlines()]
    return {r["id"]: np.asarray(Image.open(toy / r["mask"]).convert("L")) > 127 for r in recs}


# ----------------------------------------------------------------------------------------------- filter functions


def test_area_and_bottom_touch_fractions():
    m = np.zeros((10, 10), bool)
    m[2:7, 3:7] = True  # 20 px of 100, not touching the bottom
    assert bd.area_fraction(m) == pytest.approx(0.20)
    assert bd.bottom_touch_fraction(m) == 0.0
    m[7:, 0:3] = True  # 9 more px, 3 of the 10 bottom pixels
    assert bd.area_fraction(m) == pytest.approx(0.29)
    assert bd.bottom_touch_fraction(m) == pytest.approx(0.3)
    config = bd.BootstrapConfig()
    assert bd.prefilter(m, config)[0] == "bottom"  # 30 % > 20 % of the bottom border
    m[7:, 0:3] = False
    m[9, 0:2] = True  # 2 of 10 bottom pixels: exactly the 20 % limit is kept
    assert bd.prefilter(m, config)[0] is None
    tiny = np.zeros((10, 10), bool)
    tiny[0, :4] = True  # 4 % < 5 %
    assert bd.prefilter(tiny, config)[0] == "area"
    big = np.zeros((10, 10), bool)
    big[:6] = True  # 60 % > 50 % (checked before the bottom border)
    assert bd.prefilter(big, config)[0] == "area"


def test_dilate_and_effect_area():
    m = np.zeros((12, 12), bool)
    m[4:6, 4:6] = True
    assert bd.dilate_mask(m, 1).sum() == 16 and bd.dilate_mask(m, 2).sum() == 36 and bd.dilate_mask(m, 0).sum() == 4
    x = np.full((12, 12, 3), 200, np.uint8)
    z = x.copy()
    z[4:6, 4:6] = 0  # inside the object: not an effect
    z[6, 4:6] = 0  # touching the object: inside the 2-px dilation, not an effect
    assert bd.effect_area_fraction(x, z, m, 0.08, 2) == 0.0
    z[10:12, 0:3] = 100  # a "shadow" of 6 px, |diff| = 100/255 = 0.39 > 0.08
    z[0, 11] = 190  # |diff| = 10/255 = 0.04 < 0.08: not changed
    assert bd.effect_area_fraction(x, z, m, 0.08, 2) == pytest.approx(6 / 144)
    assert bd.effect_area_fraction(x, z, m, 0.5, 2) == 0.0  # above the threshold nothing counts
    assert bd.changed_pixels(x, z, 0.08).sum() == 4 + 2 + 6


def test_composite_formula():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    z = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    m = rng.random((9, 9)) > 0.5
    y = bd.composite(x, z, m)
    mf = m[..., None].astype(np.float64)
    assert y.dtype == np.uint8 and np.array_equal(y, (mf * x + (1 - mf) * z).astype(np.uint8))


def test_effect_composite_keeps_x_away_from_the_object_and_what_the_removal_changed():
    """z is the removal output pasted through the effect-aware mask: exactly x beyond grow + feather px of the object
    and of the changed pixels, exactly the output on them; regeneration noise below the threshold is dropped."""
    rng = np.random.default_rng(1)
    x = rng.integers(60, 200, (24, 24, 3), dtype=np.uint8)
    m = np.zeros((24, 24), bool)
    m[8:12, 8:12] = True
    raw = np.clip(x.astype(int) + rng.integers(-5, 6, x.shape), 0, 255).astype(np.uint8)  # < 0.08: noise
    raw[m] = 0  # the object removed
    raw[13:17, 13:17] = 255  # its shadow removed: changed well above the threshold
    cfg = bd.BootstrapConfig(composite_min_area=4, composite_grow=1, composite_feather=1)
    z = bd.effect_composite(x, raw, m, cfg)
    shadow = np.zeros_like(m)
    shadow[13:17, 13:17] = True
    assert np.array_equal(z[m], raw[m]) and np.array_equal(z[shadow], raw[shadow])
    near = bd.dilate_mask(m | shadow, 2)
    assert np.array_equal(z[~near], x[~near])  # the noise elsewhere is gone
    with pytest.raises(ConfigError, match="removal_composite"):
        bd.check_config(bd.BootstrapConfig(source="a", out="b", removal_model="c", removal_composite="raw"))


# ----------------------------------------------------------------------------------------------- builder


def test_build_resume_and_read(toy, removal, tmp_path, monkeypatch):
    calls = []
    real = conditioned_unet.conditioned_sample

    def spy(bundle, images, masks, **kw):
        calls.append(kw["seed"])
        assert kw["gray_masked"] is False and kw["steps"] == 2
        return real(bundle, images, masks, **kw)

    monkeypatch.setattr(conditioned_unet, "conditioned_sample", spy)
    opened = []
    real_open = Image.open

    def open_spy(fp, *a, **k):
        opened.append(str(fp))
        return real_open(fp, *a, **k)

    monkeypatch.setattr(Image, "open", open_spy)
    out = tmp_path / "boot"
    assert bd.main(argv(toy, removal, out, "--min_effect_area", "0")) == 0
    assert not any(("counterfactuals" in p or "backgrounds" in p) and str(toy) in p for p in opened)
    report = json.loads((out / "report.json").read_text())
    masks = masks_of(toy)
    area_ok = [i for i, m in masks.items() if 0.02 <= m.mean() <= 0.6]
    bottom_ok = [i for i in area_ok if masks[i][-1].mean() <= 0.2]
    assert report["input"] == 8 and report["after_area"] == len(area_ok) and report["after_bottom"] == len(bottom_ok)
    assert report["after_effect"] == len(bottom_ok) > 0  # min_effect_area 0 keeps all
    assert len(calls) == len(bottom_ok)  # the removal model runs only on what passed the mask filters

    data = bd.read_bootstrap(out)
    assert list(data["ids"]) == bottom_ok
    assert data["factual"].shape == (len(bottom_ok), SIZE, SIZE, 3) and data["mask"].dtype == bool
    for key in ("factual", "composite", "background"):
        assert data[key].dtype == np.uint8
    m = data["mask"][..., None].astype(np.int64)
    assert np.array_equal(data["composite"], m * data["factual"] + (1 - m) * data["background"])
    for k, sid in enumerate(bottom_ok):  # x and M are the source image and mask
        assert np.array_equal(data["mask"][k], masks[sid])
        assert np.array_equal(data["factual"][k], np.asarray(Image.open(toy / "images" / f"{sid}.png").convert("RGB")))
    from segdrop.training.counterfactual_data import read_triplets

    triplets = read_triplets(out)  # the counterfactual-data reader reads the kept pairs as F/G/M
    assert [t.id for t in triplets] == bottom_ok
    assert np.array_equal(triplets[0].counterfactual, data["background"][0])

    # resume: nothing to do, then one deleted record -> only that item is recomputed, identically
    before = {p.name: p.read_bytes() for p in (out / "counterfactual").iterdir()}
    calls.clear()
    assert bd.main(argv(toy, removal, out, "--min_effect_area", "0")) == 0
    assert calls == []
    victim = bottom_ok[0]
    (out / "records" / f"{victim}.json").unlink()
    assert bd.main(argv(toy, removal, out, "--min_effect_area", "0")) == 0
    assert len(calls) == 1
    assert {p.name: p.read_bytes() for p in (out / "counterfactual").iterdir()} == before
    assert json.loads((out / "report.json").read_text())["after_effect"] == len(bottom_ok)
    # other settings re-judge every item (a stricter effect filter drops them all: random model, threshold ~ 1)
    calls.clear()
    assert bd.main(argv(toy, removal, out, "--min_effect_area", "0.999")) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["after_bottom"] == len(bottom_ok) and rep["after_effect"] == 0 and len(calls) == len(bottom_ok)
    assert (out / "metadata.jsonl").read_text() == ""
    with pytest.raises(ConfigError, match="filtered out"):
        bd.read_bootstrap(out)


def test_effect_filter_counts(toy, removal, tmp_path, monkeypatch):
    """A fake removal model: some items get a 'shadow' outside the mask, the others come back unchanged."""
    masks = masks_of(toy)
    shadowed = set(list(masks)[::2])

    def fake(bundle, images, masks_, **kw):
        z = images.copy()
        mask = masks_[0]
        if fake.ids[len(fake.seen)] in shadowed:
            far = ~bd.dilate_mask(mask, 3)
            z[0][far] = 255 - z[0][far]
        fake.seen.append(1)
        return z

    items = bd.list_sources(bd.BootstrapConfig(source=str(toy)))
    cfg = bd.BootstrapConfig(min_area=0.02, max_area=0.6)
    fake.ids = [i["id"] for i in items if bd.prefilter(masks[i["id"]], cfg)[0] is None]
    fake.seen = []
    monkeypatch.setattr(conditioned_unet, "conditioned_sample", fake)
    out = tmp_path / "boot"
    assert bd.main(argv(toy, removal, out, "--min_effect_area", "0.01")) == 0
    report = json.loads((out / "report.json").read_text())
    expected = [i for i in fake.ids if i in shadowed and (~bd.dilate_mask(masks[i], 3)).mean() >= 0.01]
    assert report["after_bottom"] == len(fake.ids)
    assert report["after_effect"] == len(expected) and 0 < len(expected) < len(fake.ids)
    assert sorted(report["dropped"]["effect"]) == sorted(set(fake.ids) - set(expected))
    assert list(bd.read_bootstrap(out)["ids"]) == expected
    # composite: object from x, everything else (the fake 'shadow' too) from z
    data = bd.read_bootstrap(out)
    assert np.array_equal(data["composite"], np.where(data["mask"][..., None], data["factual"], data["background"]))


def test_cli_and_errors(toy, removal, tmp_path, capsys):
    from segdrop.training.__main__ import main as training_main

    out = tmp_path / "cli"
    assert training_main(["bootstrap", *argv(toy, removal, out, "--limit", "3", "--split", "train")]) == 0
    assert "after effect filter" in capsys.readouterr().out
    assert json.loads((out / "report.json").read_text())["input"] == 3
    assert "min_effect_area = 0.005" in (out / "bootstrap.toml").read_text()
    assert bd.main(argv(toy, removal, tmp_path / "x", "--mask_key", "counterfactual")) == 2
    assert "not an object mask" in capsys.readouterr().err
    assert bd.main(argv(toy, removal, tmp_path / "y", "--min_area", "0.7")) == 2
    assert bd.main(argv(toy, toy, tmp_path / "z")) == 2  # not a model folder
    toml = tmp_path / "b.toml"
    toml.write_text(f'source = "{toy}"\nremoval_model = "{removal}"\nout = "{tmp_path / "t"}"\nsteps = 1\nlimit = 2\n')
    assert bd.main(["--config", str(toml)]) == 0
    assert json.loads((tmp_path / "t" / "report.json").read_text())["settings"]["steps"] == 1
