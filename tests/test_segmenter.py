"""Concept distillation's final U-Net: the network, its safetensors file, whole-image prediction, the paper's pooled
metrics, the ``segmenter`` recipe (tiny runs, exact resume, bad inputs) and the SegmenterApply node glue."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from segdrop.segment import mean_image_iou, pooled_iou
from segdrop.segment.segmenter import (
    SegmentationUNet,
    SegmenterFileError,
    load_segmenter,
    postprocess_mask,
    predict_masks,
    save_segmenter,
)
from segdrop.training import train_segmenter

torch.set_num_threads(1)
TINY = ["--input_size", "32", "--base_width", "4", "--depth", "2", "--batch_size", "4", "--num_threads", "1",
        "--log_every", "1"]


def tiny_model(seed: int = 0, input_size: int = 32) -> SegmentationUNet:
    torch.manual_seed(seed)
    return SegmentationUNet(base_width=4, depth=2, input_size=input_size).eval()


# ------------------------------------------------------------------------------------------ network and file


@pytest.mark.parametrize("size", [(37, 53), (65, 64), (16, 16)])
def test_unet_keeps_any_size_and_gives_one_logit_channel(size):
    out = tiny_model()(torch.rand(2, 3, *size))
    assert out.shape == (2, 1, *size)


def test_paper_configuration_reaches_1024_channels():
    model = SegmentationUNet()  # base_width 64, depth 4: milesial's UNet(3, 1, bilinear=False)
    assert model.downs[-1][1][3].out_channels == 1024 and model.ups[0].up.out_channels == 512
    assert model.input_size == 128 and model.config == {"in_channels": 3, "base_width": 64, "depth": 4}


def test_save_load_round_trip_gives_equal_outputs(tmp_path):
    model = tiny_model(input_size=48)
    model.train()
    model(torch.rand(4, 3, 32, 32))  # move the batch-norm statistics off their initial values
    model.eval()
    path = save_segmenter(model, tmp_path / "seg.safetensors", {"training": {"steps": 7}})
    assert [p.name for p in tmp_path.iterdir()] == ["seg.safetensors"]  # no temp file left
    loaded = load_segmenter(path)
    assert loaded.input_size == 48 and not loaded.training
    x = torch.rand(2, 3, 40, 36)
    assert torch.equal(model(x), loaded(x))
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["segdrop_kind"] == "segmenter" and meta["input_size"] == "48"
    assert json.loads(meta["architecture"]) == {"in_channels": 3, "base_width": 4, "depth": 2}
    assert json.loads(meta["training"]) == {"steps": 7}


@pytest.mark.parametrize("tensors, metadata, looks_like", [
    ({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, None, "a LoRA"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, None, "Stable Diffusion checkpoint"),
    ({"weight": torch.zeros(2)}, None, "without SegDrop metadata"),
    ({"weight": torch.zeros(2)}, {"segdrop_kind": "background"}, "SegDrop 'background' file"),
])
def test_load_refuses_other_kinds_and_says_what_they_are(tmp_path, tensors, metadata, looks_like):
    path = tmp_path / "other.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(SegmenterFileError) as caught:
        load_segmenter(path)
    message = str(caught.value)
    assert looks_like in message and "not a segmenter" in message
    assert "python -m segdrop.training segmenter" in message


def test_load_never_unpickles(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(SegmenterFileError, match="not a readable safetensors file"):
        load_segmenter(path)
    with pytest.raises(FileNotFoundError, match="python -m segdrop.training segmenter"):
        load_segmenter(tmp_path / "missing.safetensors")


# ------------------------------------------------------------------------------------------ prediction


class RedIsForeground(torch.nn.Module):
    """A stand-in segmenter: logit +10 where the red channel is 1, -10 where it is 0."""

    input_size = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x[:, :1] * 2 - 1) * 10


def ring_image(size: int = 32) -> np.ndarray:
    image = np.zeros((size, size, 3), np.uint8)
    image[6:26, 6:26, 0] = 255
    image[14:18, 14:18, 0] = 0  # a hole
    image[0:4, 28:32, 0] = 255  # a blob in the corner: closing must not eat the image border
    return image


def test_postprocess_fills_the_hole_and_keeps_border_foreground():
    raw = predict_masks(RedIsForeground(), ring_image()[None], postprocess=False)[0]
    clean = predict_masks(RedIsForeground(), ring_image()[None])[0]
    assert not raw[15, 15] and clean[15, 15]
    assert clean[6:26, 6:26].all() and clean[0:4, 28:32].all() and clean.sum() == 400 + 16
    assert np.array_equal(postprocess_mask(raw.numpy()), clean.numpy())


def test_predict_resizes_the_whole_image_and_back():
    image = np.zeros((48, 40, 3), np.uint8)
    image[:, 20:, 0] = 255  # the right half is red
    masks = predict_masks(RedIsForeground(), np.stack([image, image]), postprocess=False)
    assert masks.shape == (2, 48, 40) and masks.dtype == torch.bool
    assert masks[:, :, 22:].all() and not masks[:, :, :18].any()  # no centre crop: every column is predicted
    as_float = predict_masks(RedIsForeground(), torch.from_numpy(image[None]).float() / 255, postprocess=False)
    assert torch.equal(as_float[0], masks[0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict_masks(RedIsForeground(), np.full((1, 8, 8, 3), 255.0, np.float32))
    with pytest.raises(ValueError, match="batch axis"):
        predict_masks(RedIsForeground(), image)


# ------------------------------------------------------------------------------------------ metrics


def test_pooled_iou_pools_pixels_over_images_of_any_size():
    preds = [np.array([[1, 1], [0, 0]]), np.array([[0, 0, 0]])]
    truths = [np.array([[1, 0], [0, 0]]), np.array([[0, 1, 1]])]
    # pooled: TP 1, FP 1, FN 2, TN 3
    scores = pooled_iou(preds, truths)
    assert scores == pytest.approx({"iou_fg": 1 / 4, "iou_bg": 3 / 6, "miou": 0.375, "accuracy": 4 / 7})
    assert mean_image_iou(preds, truths) == pytest.approx((1 / 2 + 0) / 2)


def test_metrics_empty_cases_and_mismatches():
    empty = np.zeros((3, 3), bool)
    assert mean_image_iou([empty], [empty]) == 1.0  # no object predicted, none there: correct
    assert pooled_iou([empty], [empty])["iou_fg"] == 1.0
    full = ~empty
    assert pooled_iou([full], [full]) == {"iou_fg": 1.0, "iou_bg": 1.0, "miou": 1.0, "accuracy": 1.0}
    assert mean_image_iou(torch.zeros(2, 3, 3), torch.ones(2, 3, 3)) == 0.0  # stacked tensors work too
    with pytest.raises(ValueError, match="differ in size"):
        pooled_iou([empty], [np.zeros((2, 3), bool)])
    with pytest.raises(ValueError, match="1 predictions but 2"):
        mean_image_iou([empty], [empty, empty])


# ------------------------------------------------------------------------------------------ recipe


@pytest.fixture(scope="module")
def toydata(tmp_path_factory) -> Path:
    from segdrop.toyworld import write_dataset

    return write_dataset(tmp_path_factory.mktemp("toy") / "data", 6, size=32, seed=0)


@pytest.fixture(scope="module")
def refined_folder(tmp_path_factory, toydata) -> Path:
    """A mask folder as the distillation writes one: 'refined' at image size, 'prelim' on an 8x coarser grid."""
    root = tmp_path_factory.mktemp("masks")
    (root / "images").mkdir()
    (root / "refined").mkdir()
    (root / "prelim").mkdir()
    lines = []
    for rec in [json.loads(x) for x in (toydata / "metadata.jsonl").read_text().splitlines()][:4]:
        rid = rec["id"]
        Image.open(toydata / rec["image"]).save(root / "images" / f"{rid}.png")
        mask = np.asarray(Image.open(toydata / rec["mask"]))
        Image.fromarray(mask).save(root / "refined" / f"{rid}.png")
        Image.fromarray(mask[::8, ::8]).save(root / "prelim" / f"{rid}.png")
        lines.append(json.dumps({"id": rid, "image": f"images/{rid}.png", "caption": rec["caption"],
                                 "refined": f"refined/{rid}.png", "prelim": f"prelim/{rid}.png"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data_dir", str(data), "--mask_key", "mask", "--output_dir", str(out), "--steps", "4",
            "--checkpointing_steps", "2", *TINY, *extra]


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "loss.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_segmenter(out / train_segmenter.OUTPUT_FILE).state_dict()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, toydata) -> Path:
    out = tmp_path_factory.mktemp("seg") / "full"
    assert train_segmenter.main(argv(toydata, out, "--eval_dir", str(toydata), "--eval_key", "mask")) == 0
    return out


def test_recipe_writes_a_segmenter_and_the_paper_scores(finished):
    assert len(losses(finished)) == 4 and all(np.isfinite(losses(finished)))
    model = load_segmenter(finished / "segmenter.safetensors")
    assert model.input_size == 32 and model.config["base_width"] == 4
    with safe_open(str(finished / "segmenter.safetensors"), framework="pt") as handle:
        info = json.loads(handle.metadata()["training"])
    assert info["steps"] == 4 and info["recipe"] == "segmenter" and info["config"]["lr"] == 2e-3
    scores = json.loads((finished / "eval.json").read_text())
    assert scores["images"] == 6 and scores["key"] == "mask"
    for protocol in ("paper_center_crop", "full_image"):
        assert set(scores[protocol]) == {"iou_fg", "iou_bg", "miou", "accuracy", "mean_image_iou"}
        assert 0 <= scores[protocol]["miou"] <= 1


def test_recipe_resume_is_exact(tmp_path, toydata, finished):
    split = tmp_path / "split"
    assert train_segmenter.main(argv(toydata, split, "--steps", "2")) == 0
    assert train_segmenter.main(argv(toydata, split, "--resume")) == 0
    np.testing.assert_allclose(losses(split), losses(finished), rtol=0, atol=1e-6)
    a, b = weights(split), weights(finished)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_several_folders_with_their_own_keys(tmp_path, toydata, refined_folder):
    sources = f"{toydata}:mask,{refined_folder}:prelim"
    config = train_segmenter.resolve(train_segmenter.build_parser().parse_args(
        ["--data_dirs", sources, "--data_dir", str(refined_folder), "--output_dir", str(tmp_path / "x"), *TINY]))
    data = train_segmenter.load_training_set(train_segmenter.data_sources(config), "", 32)
    assert data.counts == {f"{refined_folder}:refined": 4, f"{toydata}:mask": 6, f"{refined_folder}:prelim": 4}
    # the prelim masks (4x4 grid) are upsampled nearest to the image: the refined mask on 8x8 cells
    refined, prelim = data.masks[0][0], data.masks[10][0]
    assert torch.equal(prelim, refined[::8, ::8].repeat_interleave(8, 0).repeat_interleave(8, 1))


def test_draw_batch_crops_and_flips_from_the_step_generator():
    data = train_segmenter.TrainingSet([torch.arange(3 * 4 * 6, dtype=torch.uint8).reshape(3, 4, 6)],
                                       [torch.zeros(1, 4, 6, dtype=torch.bool)], {})
    a = train_segmenter.draw_batch(data, torch.Generator().manual_seed(3), 8, 4, True)
    b = train_segmenter.draw_batch(data, torch.Generator().manual_seed(3), 8, 4, True)
    assert torch.equal(a[0], b[0]) and a[0].shape == (8, 3, 4, 4) and a[1].shape == (8, 1, 4, 4)
    firsts = {round(float(x[0, 0, 0]) * 255) for x in a[0]}
    assert len(firsts) > 1  # different crops / flips within one batch


def test_recipe_refuses_bad_data(tmp_path, toydata, refined_folder, capsys):
    assert train_segmenter.main(argv(refined_folder, tmp_path / "a")) == 2
    err = capsys.readouterr().err
    assert "record 'train_00000' has no 'mask'" in err and "--mask_key" in err
    assert "(mask keys of its first record: prelim, refined)" in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    assert train_segmenter.main(argv(empty, tmp_path / "b")) == 2
    assert "holds no records" in capsys.readouterr().err
    assert train_segmenter.main(argv(tmp_path, tmp_path / "c")) == 2
    assert "no metadata.jsonl" in capsys.readouterr().err
    assert train_segmenter.main(["--output_dir", str(tmp_path / "d")]) == 2
    assert "no training data" in capsys.readouterr().err
    assert train_segmenter.main(argv(toydata, tmp_path / "e", "--eval_dir", str(refined_folder))) == 2
    assert "has no 'mask'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()  # refused before the run folder was made


def test_training_cli_lists_the_recipe(capsys):
    from segdrop.training.__main__ import main

    assert main(["segmenter", "--help"]) == 0
    assert "--mask_key" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ node glue


def fake_folder_paths(models_dir: Path) -> types.ModuleType:
    module = types.ModuleType("folder_paths")
    module.models_dir = str(models_dir)
    module.folder_names_and_paths = {"segdrop": ([str(models_dir / "extra")], set())}
    module.get_folder_paths = lambda name: list(module.folder_names_and_paths[name][0])

    def files(name):
        paths, exts = module.folder_names_and_paths[name]
        return sorted(p.name for d in paths if Path(d).is_dir() for p in Path(d).iterdir() if p.suffix in exts)

    def full_path(name, filename):
        found = [Path(d) / filename for d in module.folder_names_and_paths[name][0] if (Path(d) / filename).is_file()]
        return str(found[0]) if found else None

    module.get_filename_list, module.get_full_path = files, full_path
    return module


def test_models_folder_registration_is_idempotent(nodes, tmp_path, monkeypatch):
    from segdrop.nodes import models_folder

    fake = fake_folder_paths(tmp_path)
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    assert models_folder.register_models_folder() and models_folder.register_models_folder()
    paths, extensions = fake.folder_names_and_paths["segdrop"]
    assert paths == [str(tmp_path / "extra"), str(tmp_path / "segdrop")] and extensions == {".safetensors"}
    (tmp_path / "segdrop").mkdir()
    save_segmenter(tiny_model(), tmp_path / "segdrop" / "toy.safetensors")
    (tmp_path / "segdrop" / "notes.txt").write_text("not a model")
    assert models_folder.segdrop_files() == ["toy.safetensors"]
    with pytest.raises(FileNotFoundError, match="not in the segdrop models folder"):
        models_folder.segdrop_file_path("missing.safetensors")
    monkeypatch.setitem(sys.modules, "folder_paths", None)  # outside ComfyUI: nothing registered, nothing listed
    assert not models_folder.register_models_folder() and models_folder.segdrop_files() == []


def test_segmenter_node_applies_the_file_and_refuses_other_kinds(nodes, tmp_path, monkeypatch):
    from segdrop.nodes.segmenter import SegmenterApply

    for name in ("folder_paths", "comfy"):
        monkeypatch.setitem(sys.modules, name, None)  # as without ComfyUI, also after the integration tests
    schema = SegmenterApply.define_schema()
    assert schema.node_id == "SegDrop_SegmenterApply" and all(s.tooltip for s in schema.inputs + schema.outputs)
    assert [s.id for s in schema.inputs] == ["segmenter", "image", "threshold", "postprocess"]
    path = save_segmenter(tiny_model(), tmp_path / "seg.safetensors")
    image = torch.rand(10, 24, 20, 3)  # more than one chunk of 8
    (mask,) = SegmenterApply.execute(str(path), image, 0.5, True).result
    assert mask.shape == (10, 24, 20) and mask.dtype == torch.float32
    assert torch.equal(mask.bool(), predict_masks(load_segmenter(path), image))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_x.lora_up.weight": torch.zeros(1)}, str(lora))
    with pytest.raises(ValueError, match="a LoRA .* not a segmenter"):
        SegmenterApply.execute(str(lora), image, 0.5, True)
