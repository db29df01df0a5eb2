"""Node glue without ComfyUI: schemas (ids, tooltips, execute arguments) and the segmentation nodes' execute."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import torch

from segdrop.attention_patch.maps import AttentionMaps

SD_TOKENS = ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "square</w>"] + ["<|endoftext|>"] * 9
PUBLISHED_IDS = {"SegDrop_AttentionCapture", "SegDrop_GMMBinarize", "SegDrop_KLMergeSegment"}


def square_scene_attention(size: int = 16) -> AttentionMaps:
    """Cross-attention peaking on a square for the word 'square'; self-attention that groups inside/outside."""
    inside = torch.zeros(size, size, dtype=torch.bool)
    inside[4:11, 5:12] = True
    flat = inside.reshape(-1)
    cross = torch.full((1, size * size, len(SD_TOKENS)), 0.01)
    cross[0, flat, 6] = 0.5
    cross[0, ~flat, 6] = 0.05
    cross = cross / cross.sum(-1, keepdim=True)
    same = (flat[:, None] == flat[None, :]).float()
    self_attn = (same * 4 + 0.01).softmax(-1)[None]
    return AttentionMaps(self_attn={(size, size): self_attn}, cross_attn={(size, size): cross},
                         self_counts={(size, size): 1}, cross_counts={(size, size): 1},
                         tokens=SD_TOKENS, image_size=(size * 8, size * 8))


def test_every_node_has_prefixed_id_and_tooltips_everywhere(nodes):
    classes = asyncio.run(asyncio.run(nodes.comfy_entrypoint()).get_node_list())
    assert {cls.define_schema().node_id for cls in classes} == PUBLISHED_IDS
    for cls in classes:
        schema = cls.define_schema()
        assert schema.description and schema.category == "SegDrop"
        for socket in schema.inputs + schema.outputs:
            assert socket.tooltip, f"{schema.node_id}: {socket.id or socket.options} has no tooltip"
        arguments = set(inspect.signature(cls.execute).parameters)
        assert {socket.id for socket in schema.inputs} == arguments


def test_gmm_node_gives_image_size_masks(nodes):
    from segdrop.nodes.segment import GMMBinarize

    mask, soft, shown = GMMBinarize.execute(square_scene_attention(), "square", False, 0, 0.0).result
    assert mask.shape == soft.shape == (1, 128, 128) and shown.shape == (1, 128, 128, 3)
    expected = torch.zeros(128, 128)
    expected[32:88, 40:96] = 1
    assert torch.equal(mask[0], expected)
    # The paper's 5-of-9 majority filter takes the square's four corner cells (4 of 9) away.
    filtered = GMMBinarize.execute(square_scene_attention(), "square", True, 0, 0.0).result[0][0]
    for y, x in [(32, 40), (32, 95), (87, 40), (87, 95)]:
        expected[y // 8 * 8 : y // 8 * 8 + 8, x // 8 * 8 : x // 8 * 8 + 8] = 0
    assert torch.equal(filtered, expected)


def test_gmm_node_rejects_word_not_in_prompt(nodes):
    from segdrop.nodes.segment import GMMBinarize

    with pytest.raises(ValueError, match="'bird' is not in the prompt"):
        GMMBinarize.execute(square_scene_attention(), "bird", True, 0, 0.0)


def test_gmm_node_needs_cross_attention(nodes):
    from segdrop.nodes.segment import GMMBinarize

    maps = square_scene_attention()
    maps.cross_attn, maps.cross_counts = {}, {}
    with pytest.raises(ValueError, match="no cross-attention"):
        GMMBinarize.execute(maps, "square", True, 0, 0.0)


def test_kl_merge_node_finds_the_square_and_names_it(nodes):
    from segdrop.nodes.segment import KLMergeSegment

    masks, labels, overlay, count, names = KLMergeSegment.execute(square_scene_attention(), 1.1, "size_aware", 8, 3, 0).result
    assert count == 2 and masks.shape == (2, 128, 128) and labels.shape == (1, 128, 128)
    assert overlay.shape == (1, 128, 128, 3)
    square = masks[1] if masks[1].sum() < masks[0].sum() else masks[0]
    truth = torch.zeros(128, 128, dtype=torch.bool)
    truth[32:88, 40:96] = True
    iou = (square.bool() & truth).sum() / (square.bool() | truth).sum()
    assert iou > 0.85  # bilinear upsampling of the 16x16 proposals blurs the boundary by a few pixels
    assert names[int(labels[0, 50, 60])] == "square"


def test_kl_merge_node_rejects_bad_tau(nodes):
    from segdrop.nodes.segment import KLMergeSegment

    with pytest.raises(ValueError, match="tau must be > 0"):
        KLMergeSegment.execute(square_scene_attention(), 0.0, "raw", 8, 3, 0)
