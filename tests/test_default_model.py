"""The shipped default model: word columns are the right ones, at the token level and in its attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

from segdrop import demo, toyworld
from segdrop.attention_patch.tokens import find_word_positions
from segdrop.demo.protocol import EvalSettings, concept_attention
from segdrop.segment import gmm_binarize
from segdrop.segment.metrics import iou
from segdrop.training.bundle import load_bundle


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(demo.DEFAULT_MODEL)


def test_every_caption_word_maps_to_its_own_token_id(bundle):
    """An off-by-one (forgetting the start token at position 0) gives the neighbouring word's id."""
    for seed in range(20):
        scene = toyworld.make_scene(seed, size=64)
        ids = bundle.tokenizer(scene.caption, padding="max_length", max_length=bundle.tokenizer.model_max_length).input_ids
        tokens = bundle.tokenizer.convert_ids_to_tokens(ids)
        assert tokens[0] == "<|startoftext|>"
        for obj in scene.objects:
            for word in (obj.color, obj.word):
                for position in find_word_positions(tokens, word):
                    assert ids[position] == bundle.tokenizer.convert_tokens_to_ids(word + "</w>")


def test_the_right_attention_column_localizes_best(bundle):
    """The colour word's column finds objects of that colour; the columns one to the left ("a") and one to the
    right (the shape word, which this small CPU-trained model binds weakly) score clearly lower."""
    scenes = [toyworld.make_scene(toyworld.scene_seed(7, "column-test", i), size=bundle.image_size) for i in range(16)]
    maps, token_lists = concept_attention(bundle, [s.image for s in scenes], [s.caption for s in scenes],
                                          EvalSettings(t0=10, seed=7))
    scores: dict[int, list[float]] = {-1: [], 0: [], 1: []}
    for index, (scene, tokens) in enumerate(zip(scenes, token_lists)):
        for obj in scene.objects:
            truth = np.any([o.mask for o in scene.objects if o.color == obj.color], axis=0)
            positions = find_word_positions(tokens, obj.color)
            for shift in scores:
                attention = maps.cross_attention_for([p + shift for p in positions])[index : index + 1]
                mask = F.interpolate(gmm_binarize(attention).mask[:, None].float(), size=truth.shape)[0, 0] > 0.5
                scores[shift].append(iou(mask.numpy(), truth))
    mean = {shift: float(np.mean(values)) for shift, values in scores.items()}
    assert mean[0] > mean[-1] + 0.05 and mean[0] > mean[1] + 0.05, mean
    wins = np.mean(np.array(scores[0]) > np.array(scores[-1]))
    assert wins > 0.7, wins


def test_default_model_is_small_safetensors_only():
    files = [p for p in demo.DEFAULT_MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 20 * 2**20
    weights = [p for p in files if p.suffix in {".safetensors", ".bin", ".pt", ".ckpt", ".pth"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_a_word_outside_the_shipped_vocabulary_is_refused_with_the_vocabulary(bundle):
    with pytest.raises(ValueError, match=r"'cyan'.*a, and, blue, circle, cross, diamond, green"):
        bundle.tokens("a photo of a cyan circle")
