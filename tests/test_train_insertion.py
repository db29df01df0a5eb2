"""The `insertion` recipe (ObjectDrop insertion: widened text-to-image model, composite + mask in) on tiny models."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from segdrop.training import train_insertion
from segdrop.training.bundle import ModelBundle, load_bundle, save_bundle
from segdrop.training.conditioned_unet import make_inpaint_unet, unet_input
from tests.test_train_objectdrop import SIZE, assert_same_unet, losses, tiny_t2i_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def t2i(tmp_path_factory) -> Path:
    return tiny_t2i_bundle(tmp_path_factory.mktemp("t2i"))


@pytest.fixture(scope="module")
def toydata(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 6, size=SIZE, seed=0)


def argv(base: Path, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    data_args = ["--data_dir", str(data)] if data is not None else []
    return ["--base", str(base), *data_args, "--output_dir", str(out), "--steps", "4", "--batch_size", "2",
            "--checkpointing_steps", "2", "--warmup_steps", "0", "--lr", "1e-3", "--num_threads", "1", *extra]


@pytest.fixture(scope="module")
def stage1(tmp_path_factory, t2i, toydata) -> Path:
    out = tmp_path_factory.mktemp("ins") / "run"
    assert train_insertion.main(argv(t2i, out, data=toydata)) == 0
    return out / "model"


def lrs(out: Path) -> list[float]:
    return [json.loads(line)["lr"] for line in (out / "loss.jsonl").read_text().splitlines()]


def fake_inpainting_base(t2i: Path, folder: Path, info: dict) -> Path:
    """The tiny T2I model widened to 25 channels and saved with ``info`` as its card (a removal / SD inpainting model)."""
    b = load_bundle(t2i)
    make_inpaint_unet(b.unet, 12)
    return save_bundle(ModelBundle(b.unet, b.text_encoder, b.tokenizer, b.scheduler, b.codec, b.image_size,
                                   {**b.info, **info}), folder)


def test_widening_starts_as_the_text_to_image_model_and_an_insertion_model_is_not_widened_again(t2i, stage1):
    bundle = load_bundle(t2i)
    g = torch.Generator().manual_seed(1)
    x, hidden = torch.randn(2, 12, 8, 8, generator=g), torch.randn(2, 16, 16, generator=g)
    t = torch.tensor([10, 700])
    with torch.no_grad():
        before = bundle.unet(x, t, hidden).sample
        unet, widened = train_insertion.insertion_unet(bundle)
        assert widened and unet.config.in_channels == 25 and unet.config.out_channels == 12
        for _ in range(2):  # any composite and mask: the zero channels change nothing at step 0
            mask = (torch.rand(2, 1, 8, 8, generator=g) > 0.5).float()
            after = unet(unet_input(x, mask, torch.randn(2, 12, 8, 8, generator=g) * 3), t, hidden).sample
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    trained = load_bundle(stage1)
    weight = trained.unet.conv_in.weight.clone()
    unet, widened = train_insertion.insertion_unet(trained)
    assert not widened and unet.config.in_channels == 25 and torch.equal(unet.conv_in.weight, weight)


def test_stage1_writes_an_insertion_bundle(stage1, t2i):
    bundle = load_bundle(stage1)
    assert bundle.unet.config.in_channels == 2 * 12 + 1 and bundle.unet.config.out_channels == 12
    info = bundle.info
    assert info["recipe"] == "insertion" and info["conditioning"] == "insertion" and info["stage"] == 1
    assert info["in_layout"] == "noise+mask+composite" and info["gray_masked"] is False and info["prompt"] == ""
    assert info["widened"] is True and info["base_recipe"] == "scratch" and info["data_kind"] == "pairs"
    assert info["train_pairs"] == 6 and info["lora"] is None and info["lr_schedule"] == "constant"
    assert info["crop_context"] == 0.0  # whole images unless --crop_context
    assert info["vocabulary"] == load_bundle(t2i).info["vocabulary"]
    run = stage1.parent
    assert len(losses(run)) == 4 and all(np.isfinite(losses(run))) and set(lrs(run)) == {1e-3}
    te_a, te_b = bundle.text_encoder.state_dict(), load_bundle(t2i).text_encoder.state_dict()
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)  # frozen


def test_generated_pairs_and_the_composite(tmp_path, t2i, toydata):
    out = tmp_path / "gen"
    assert train_insertion.main(argv(t2i, out, "--generate", "3", "--steps", "1")) == 0
    info = load_bundle(out / "model").info
    assert info["train_pairs"] == 3 and info["steps"] == 1 and info["recipe"] == "insertion"
    f, y, m = train_insertion.load_pair_tensors(toydata, SIZE)
    _, _, g, _ = train_insertion.load_triplet_tensors(toydata, SIZE)
    assert f.dtype == y.dtype == torch.uint8 and m.dtype == torch.bool and m.shape == (6, 1, SIZE, SIZE)
    mm = m.expand_as(f)
    assert torch.equal(y[mm], f[mm]) and torch.equal(y[~mm], g[~mm]) and not torch.equal(y, f)


def test_object_crops_zoom_in_on_the_object_and_keep_its_colours():
    size, obj = 64, (slice(24, 40), slice(20, 36))  # a 16 px square object: its 1.0-context square is 32 px
    factual = torch.full((1, 3, size, size), 40, dtype=torch.uint8)
    factual[0, :, 24:44, 20:36] = 90  # the object's "shadow" below it, outside the mask
    factual[(0, slice(None), *obj)] = torch.tensor([200, 10, 120], dtype=torch.uint8)[:, None, None]
    mask = torch.zeros(1, 1, size, size, dtype=torch.bool)
    mask[(0, 0, *obj)] = True
    composite = torch.where(mask, factual, torch.full_like(factual, 40))
    f, y, m = train_insertion.object_crops(factual, composite, mask, 1.0)
    assert f.shape == y.shape == (1, 3, size, size) and m.shape == (1, 1, size, size)
    assert f.dtype == y.dtype == torch.uint8 and m.dtype == torch.bool
    assert m.float().mean().item() == pytest.approx(0.25, abs=0.02)  # 16^2 of a 32^2 crop
    inside = m.expand_as(f) & (torch.nn.functional.max_pool2d((~m).float(), 5, 1, 2) == 0).expand_as(f)
    assert torch.equal(f[inside], y[inside]) and set(f[0, :, 32, 32].tolist()) == {200, 10, 120}
    shadow = (f != y).any(1).float().sum().item()  # the 4 x 16 px effect only the target holds, 2x per side
    assert 4 * 4 * 16 <= shadow <= 1.5 * 4 * 4 * 16  # (plus the bilinear edge)


def test_stage2_continues_without_widening_and_resume_is_exact(tmp_path, stage1, toydata):
    full, split = tmp_path / "full", tmp_path / "split"
    assert train_insertion.main(argv(stage1, full, "--stage", "2", data=toydata)) == 0
    assert train_insertion.main(argv(stage1, split, "--stage", "2", "--steps", "2", data=toydata)) == 0
    assert train_insertion.main(argv(stage1, split, "--stage", "2", "--resume", data=toydata)) == 0
    np.testing.assert_allclose(losses(split), losses(full), rtol=0, atol=1e-6)
    assert_same_unet(split / "model", full / "model")
    bundle = load_bundle(full / "model")
    info = bundle.info
    assert info["stage"] == 2 and info["base_stage"] == 1 and info["widened"] is False
    assert info["base_recipe"] == "insertion" and info["recipe"] == "insertion" and info["lr_schedule"] == "constant"
    assert bundle.unet.config.in_channels == 25
    assert losses(full) != losses(stage1.parent)  # continued from the stage-1 weights, not from scratch


def test_cosine_decay_reaches_zero_and_resumes_exactly(tmp_path, stage1, toydata):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ("--stage", "2", "--lr_schedule", "cosine")
    assert train_insertion.main(argv(stage1, full, *args, data=toydata)) == 0
    rates = lrs(full)
    assert rates[0] == pytest.approx(1e-3) and all(a > b for a, b in zip(rates, rates[1:])) and rates[-1] > 0
    assert rates[2] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 2 / 4)))  # 0.5e-3 at half way
    # a run killed after its step-2 checkpoint (same steps, same schedule) resumes onto the same trajectory
    shutil.copytree(full, killed)
    shutil.rmtree(killed / "checkpoints" / "step_4")
    shutil.rmtree(killed / "model")
    assert train_insertion.main(argv(stage1, killed, *args, "--resume", data=toydata)) == 0
    np.testing.assert_allclose(losses(killed), losses(full), rtol=0, atol=1e-6)
    assert lrs(killed) == rates
    assert_same_unet(killed / "model", full / "model")
    assert load_bundle(full / "model").info["lr_schedule"] == "cosine"


def test_lora_trains_only_the_adapter_and_needs_an_insertion_base(tmp_path, stage1, t2i, toydata, capsys):
    out = tmp_path / "lora"
    assert train_insertion.main(argv(stage1, out, "--stage", "2", "--lora_rank", "2", "--steps", "2", data=toydata)) == 0
    base, tuned = load_bundle(stage1).unet.state_dict(), load_bundle(out / "model").unet.state_dict()
    assert base.keys() == tuned.keys()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(".attn" in k and any(t in k for t in ("to_q", "to_k", "to_v", "to_out.0")) for k in changed)
    assert not any(k.startswith("conv_in") for k in changed)
    info = load_bundle(out / "model").info
    assert info["lora"] == {"rank": 2, "alpha": 2, "targets": ["to_q", "to_k", "to_v", "to_out.0"]}
    assert all(Path(p).is_file() for p in info["lora_files"].values())
    assert train_insertion.main(argv(t2i, tmp_path / "x", "--lora_rank", "2", data=toydata)) == 2
    assert "insertion-model base" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_an_inpainting_or_removal_base_is_refused(tmp_path, t2i, toydata, capsys):
    for name, info in (("removal", {"recipe": "removal", "conditioning": "removal"}),
                       ("inpaint", {"recipe": "inpaint"}), ("sd", {"recipe": None})):
        base = fake_inpainting_base(t2i, tmp_path / name, info)
        assert train_insertion.main(argv(base, tmp_path / f"out_{name}", data=toydata)) == 2
        err = capsys.readouterr().err
        assert "not an insertion model" in err and "TEXT-TO-IMAGE" in err
        assert not (tmp_path / f"out_{name}").exists()
    assert train_insertion.main(["--base", str(t2i), "--output_dir", str(tmp_path / "y")]) == 2
    assert "--data_dir" in capsys.readouterr().err
    assert train_insertion.main(argv(t2i, tmp_path / "z", "--lr_schedule", "linear", data=toydata)) == 2
    assert "lr_schedule" in capsys.readouterr().err
    assert train_insertion.main(argv(t2i, tmp_path / "z", "--stage", "3", data=toydata)) == 2
    assert "stage" in capsys.readouterr().err


def test_bootstrap_folders_are_read_with_read_bootstrap(tmp_path, t2i, toydata, monkeypatch):
    f, y, m = train_insertion.load_pair_tensors(toydata, SIZE)
    composite = y.permute(0, 2, 3, 1).numpy().copy()
    composite[:, 0, 0] = 7  # distinguishable from the triplets' composite
    arrays = {"factual": f.permute(0, 2, 3, 1).numpy(), "composite": composite, "mask": m[:, 0].numpy(),
              "background": composite}
    seen = []

    def read_bootstrap(folder):
        seen.append(Path(folder))
        return dict(arrays)  # the real read_bootstrap returns a dict of arrays

    monkeypatch.setitem(sys.modules, "segdrop.training.bootstrap_data", types.SimpleNamespace(read_bootstrap=read_bootstrap))
    kind, f2, y2, m2 = train_insertion.load_data(toydata, "auto", SIZE)
    assert kind == "bootstrap" and seen == [toydata] and torch.equal(f2, f) and torch.equal(m2, m)
    assert torch.equal(y2, torch.from_numpy(composite).permute(0, 3, 1, 2))
    assert train_insertion.load_data(toydata, "pairs", SIZE)[0] == "pairs"
    out = tmp_path / "boot"
    assert train_insertion.main(argv(t2i, out, "--data_kind", "bootstrap", "--steps", "1", data=toydata)) == 0
    assert load_bundle(out / "model").info["data_kind"] == "bootstrap"


def test_toy_config_parses_and_flags_override(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where no out/toy_bootstrap exists
    config_path = Path(train_insertion.__file__).parent / "configs" / "toy_insertion.toml"
    with pytest.raises(train_insertion.ConfigError, match="toy_bootstrap does not exist"):  # stage 1 reads the bootstrap folder
        train_insertion.resolve(train_insertion.build_parser().parse_args(["--config", str(config_path)]))
    args = train_insertion.build_parser().parse_args(["--config", str(config_path), "--steps", "7", "--stage", "2",
                                                      "--data_dir", str(tmp_path)])
    config = train_insertion.resolve(args)
    assert config.steps == 7 and config.stage == 2 and config.batch_size == 16 and config.conv_in_lr_scale == 10.0
    assert config.prediction_type == "v_prediction" and config.base.endswith("models/default")
    assert config.lr_schedule == "constant" and config.lora_rank == 0


def test_the_cli_registers_the_recipe(capsys):
    from segdrop.training.__main__ import main

    assert main(["insertion", "--help"]) == 0
    assert "--lr_schedule" in capsys.readouterr().out


def test_generated_pairs_are_rendered_once_and_another_count_is_refused(tmp_path):
    from types import SimpleNamespace

    from segdrop.training.loop import ConfigError
    from segdrop.training.train_scratch import generate_dataset, rendered_scenes

    spec = SimpleNamespace(generate=3, split="train", image_size=32, seed=0)
    data = generate_dataset(spec, tmp_path, writer="write_object_pairs", kind="one-object pairs")
    first = (data / "metadata.jsonl").read_text()
    assert generate_dataset(spec, tmp_path, writer="write_object_pairs") == data  # reused, not re-rendered
    assert (data / "metadata.jsonl").read_text() == first
    with pytest.raises(ConfigError, match="already holds 3 generated one-object pairs, not 5"):
        generate_dataset(SimpleNamespace(**{**vars(spec), "generate": 5}), tmp_path, writer="write_object_pairs",
                         kind="one-object pairs")
    # a scene without objects uses its number up and writes no record
    assert rendered_scenes([{"index": 0}, {"index": 1}, {"index": 3}]) == 4
    assert rendered_scenes([{"image": "a"}, {"image": "b"}]) == 2
