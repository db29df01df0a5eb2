"""The demo's concept-distillation stage table, end to end on tiny random models (16x16 scenes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from segdrop.demo import job
from segdrop.demo.data import LabelledImage
from segdrop.demo.protocol import EvalSettings
from segdrop.demo.refinement import (
    M_PRIME_BASE,
    M_PRIME_LORA,
    SEGMENTER_ROWS,
    evaluate_refinement,
    load_m_prime,
    missing_models,
    stage_scores,
)
from segdrop.segment.segmenter import SegmentationUNet, save_segmenter
from segdrop.training.bundle import load_bundle

from .test_distill_pipeline import tiny_lora
from .test_train_objectdrop import SIZE, tiny_t2i_bundle

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def toy_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    t2i = tiny_t2i_bundle(root / "build")
    shutil.copytree(t2i, root / M_PRIME_BASE)
    tiny_lora(root / M_PRIME_BASE, root / M_PRIME_LORA)
    for index, file in enumerate(SEGMENTER_ROWS.values()):
        torch.manual_seed(index)
        save_segmenter(SegmentationUNet(base_width=4, depth=2, input_size=SIZE), root / file, {"test": "random"})
    return root


def test_stage_scores_pool_pixels_and_average_images():
    item_a = LabelledImage(image=np.zeros((4, 4, 3), np.uint8), caption="a photo of a red circle",
                               object_masks=[np.eye(4, dtype=bool)], object_names=["red circle"])
    item_b = LabelledImage(image=np.zeros((4, 4, 3), np.uint8), caption="a photo of a red circle",
                               object_masks=[np.ones((4, 4), bool)], object_names=["red circle"])
    masks = [np.eye(4, dtype=bool), np.eye(4, dtype=bool)]
    scores = stage_scores(masks, [item_a, item_b])
    assert scores["iou_mean"] == pytest.approx((1.0 + 4 / 16) / 2)
    assert scores["iou_pooled"] == pytest.approx(8 / 20)


def test_refinement_rows_run_and_the_demo_reports_them(toy_models, tmp_path):
    items = job.toyworld_scenes("refinement", 3, 0, SIZE)
    capture = load_bundle(toy_models / M_PRIME_BASE)
    table, pictures = evaluate_refinement(capture, items, toy_models, steps=2, t0=2, batch=2)
    assert list(table) == ["prelim", "refined", *SEGMENTER_ROWS]
    for scores in table.values():
        assert 0.0 <= scores["iou_pooled"] <= 1.0 and 0.0 <= scores["iou_mean"] <= 1.0
    assert all(len(pictures[name]) == 3 for name in pictures)
    assert pictures["refined"][0].shape == (SIZE, SIZE) and pictures["refined"][0].dtype == bool

    config = job.DemoConfig(out=tmp_path / "out", checkpoint=toy_models / M_PRIME_BASE, scenes=2, validation_scenes=1,
                            panels=1, settings=EvalSettings(t0=2, tau_candidates=(1.1,)), removal=False,
                            insertion=False, refinement_scenes=2, refinement_steps=2, refinement_models=toy_models)
    results = job.run_demo(config)
    assert set(results["refinement"]) == {"prelim", "refined", *SEGMENTER_ROWS}
    assert set(results["refinement"]["refined"]) == {"iou_pooled", "iou_mean"}
    assert results["refinement_settings"] == {"scenes": 2, "steps": 2}
    assert (tmp_path / "out" / "refinement_00.png").exists()
    assert "Concept distillation stages" in (tmp_path / "out" / "results.md").read_text()


def test_m_prime_is_the_lora_merged_over_the_default_model(toy_models):
    base, m_prime = load_bundle(toy_models / M_PRIME_BASE), load_m_prime(toy_models)
    changed = [name for name, weight in m_prime.unet.state_dict().items()
               if not torch.equal(weight, base.unet.state_dict()[name])]
    assert changed and all(any(part in name for part in ("to_q", "to_k", "to_v", "to_out")) for name in changed)
    assert not any("lora" in name for name in m_prime.unet.state_dict())  # merged: a plain UNet


def test_missing_models_are_named_and_the_section_is_skipped(tmp_path):
    assert set(missing_models(tmp_path)) == {M_PRIME_BASE, M_PRIME_LORA, *SEGMENTER_ROWS.values()}
    config = job.DemoConfig(out=tmp_path / "out", refinement_models=tmp_path)
    assert "skipped" in job.run_refinement(config, capture_bundle=None)
