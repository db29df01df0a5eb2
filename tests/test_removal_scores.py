"""Removal scores against true counterfactuals, on toy-world scenes with known effects."""

from __future__ import annotations

import numpy as np
import pytest

from segdrop import toyworld
from segdrop.demo import from_scene
from segdrop.demo.removal import copy_input, evaluate_removal, psnr_from_mse, removal_scores


@pytest.fixture(scope="module")
def items():
    scenes = [toyworld.make_scene(toyworld.scene_seed(3, "removal-test", i), size=32, background="floor") for i in range(6)]
    return [from_scene(scene) for scene in scenes]


def oracle(items):
    """A remover that returns the true counterfactual (uint8)."""
    truth = {i: np.rint(item.counterfactual * 255).astype(np.uint8) for i, item in enumerate(items)}
    calls = iter(range(len(items)))

    def remove(images, masks):
        return np.stack([truth[next(calls)] for _ in images])

    return remove


def test_psnr_is_ten_log_of_inverse_mse():
    assert psnr_from_mse(0.01) == pytest.approx(20.0)
    assert psnr_from_mse(0.0) == 100.0


def test_copy_removes_nothing_and_the_truth_removes_everything(items):
    assert any(item.shadow_mask.any() for item in items) and any(item.reflection_mask.any() for item in items)
    table, outputs = evaluate_removal({"input": copy_input, "oracle": oracle(items)}, items, batch=4)
    assert table["input"]["effect_error_removed"] == 0.0
    assert table["oracle"]["effect_error_removed"] == pytest.approx(1.0, abs=1e-3)  # uint8 rounding only
    for region in ("psnr", "psnr_object", "psnr_shadow", "psnr_reflection"):
        assert table["oracle"][region] > table["input"][region] + 10
    assert len(outputs["input"]) == len(items) and outputs["input"][0].dtype == np.uint8


def test_fixing_only_the_object_leaves_the_shadow_error(items):
    """Pasting the counterfactual inside the object mask alone (what a tight-mask inpainter can do at best)."""
    def object_only(images, masks):
        out = images.copy()
        for k, (mask, item) in enumerate(zip(masks, batch_items.pop(0))):
            out[k][mask] = np.rint(item.counterfactual[mask] * 255).astype(np.uint8)
        return out

    batch_items = [items[:4], items[4:]]
    table, _ = evaluate_removal({"input": copy_input, "object_only": object_only}, items, batch=4)
    assert table["object_only"]["psnr_object"] > 40
    assert table["object_only"]["psnr_shadow"] == pytest.approx(table["input"]["psnr_shadow"])
    assert table["object_only"]["effect_error_removed"] == pytest.approx(0.0, abs=1e-12)


def test_removal_needs_counterfactuals(items):
    from dataclasses import replace

    with pytest.raises(ValueError, match="counterfactual"):
        removal_scores([items[0].image], [replace(items[0], counterfactual=None)])
