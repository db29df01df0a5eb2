"""Node glue without ComfyUI: schemas (ids, tooltips, execute arguments) and the segmentation nodes' execute."""

from __future__ import annotations

import asyncio
import inspect

import pytest
import torch

from segdrop.attention_patch.maps import AttentionMaps

SD_TOKENS = ["<|startoftext|>", "a</w>", "photo</w>", "of</w>", "a</w>", "red</w>", "square</w>"] + ["<|endoftext|>"] * 9
PUBLISHED_IDS = {
    "SegDrop_AttentionCapture", "SegDrop_GMMBinarize", "SegDrop_KLMergeSegment", "SegDrop_ObjectDropConditioning",
    "SegDrop_ObjectDropRemove", "SegDrop_BackgroundInpaintRefine", "SegDrop_SegmenterApply",
    "SegDrop_ObjectDropInsert",
}


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


# --- AttentionCapture: refusing a capture that would keep nothing, before any sampling --------------------------


class FakeTokenizer:
    """What ``tokenizer_strings`` reads of a ComfyUI CLIP tokenizer: ``clip_l.inv_vocab``."""

    VOCAB = {49406: "<|startoftext|>", 49407: "<|endoftext|>", 320: "a</w>", 1125: "photo</w>", 539: "of</w>",
             3329: "bird</w>"}

    def __init__(self):
        self.clip_l = type("Inner", (), {"inv_vocab": self.VOCAB})()


class FakeClip:
    """A CLIP that tokenizes from a six-word vocabulary and records whether anything was encoded."""

    def __init__(self):
        self.tokenizer = FakeTokenizer()
        self.encoded = 0

    def tokenize(self, prompt: str) -> dict:
        ids = {word: token for token, word in FakeTokenizer.VOCAB.items()}
        body = [(ids[f"{word}</w>"], 1.0) for word in prompt.split()]
        return {"l": [[(49406, 1.0), *body] + [(49407, 1.0)] * (76 - len(body))]}

    def encode_from_tokens_scheduled(self, tokens: dict) -> list:
        self.encoded += 1
        return [[torch.zeros(1, 77, 8), {}]]


CAPTURE_ARGS = dict(seed=52, t0=40, timesteps="300", add_noise=False, preview_word="", max_batch=8)


def test_capture_with_nothing_to_keep_is_refused_before_sampling(nodes, monkeypatch):
    from segdrop.nodes import capture

    def must_not_run(*args, **kwargs):
        raise AssertionError("run_capture ran although nothing would be kept")

    monkeypatch.setattr(capture, "run_capture", must_not_run)
    clip = FakeClip()
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    with pytest.raises(ValueError) as caught:
        capture.AttentionCapture.execute(object(), clip, latent, "", "concept distillation", **CAPTURE_ARGS)
    message = str(caught.value)
    assert "concept distillation preset keeps only cross-attention" in message
    assert "prompt '' has no words" in message
    assert "'a photo of a bird'" in message and "DiffSeg preset" in message
    assert clip.encoded == 0  # refused before the prompt was even encoded


def test_empty_prompt_with_diffseg_keeps_self_attention_only(nodes, monkeypatch):
    """The refusal is only for captures that would keep nothing: DiffSeg's empty prompt still runs."""
    import sys
    import types

    from segdrop.attention_patch.store import SELF
    from segdrop.nodes import capture

    comfy = types.ModuleType("comfy")
    comfy.utils = types.SimpleNamespace(ProgressBar=lambda total: types.SimpleNamespace(update_absolute=lambda d, t: None))
    monkeypatch.setitem(sys.modules, "comfy", comfy)
    monkeypatch.setitem(sys.modules, "comfy.utils", comfy.utils)
    seen = {}

    def fake_run_capture(model, conditioning, latent, timesteps, *, add_noise, seed, store, max_batch, progress):
        seen.update(timesteps=timesteps, add_noise=add_noise, keep_self=store.keep_self, keep_cross=store.keep_cross)
        store.sums[(SELF, (8, 8))] = torch.eye(64)[None].clone()
        store.counts[(SELF, (8, 8))] = 1

    monkeypatch.setattr(capture, "run_capture", fake_run_capture)
    maps, shown = capture.AttentionCapture.execute(
        object(), FakeClip(), {"samples": torch.zeros(1, 4, 8, 8)}, "", "DiffSeg", **CAPTURE_ARGS
    ).result
    assert seen == {"timesteps": (300,), "add_noise": False, "keep_self": True, "keep_cross": False}
    assert set(maps.self_attn) == {(8, 8)} and not maps.cross_attn
    assert shown.shape == (1, 64, 64, 3)
