"""DiffSeg aggregation: probability rows, resolution weights, head invariance, official float64 reference."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segdrop.attention_patch.maps import AttentionMaps
from segdrop.segment import aggregate_self_attention, resolution_weights
from segdrop.testing.reference import aggregate_reference

LAYOUTS = [
    [(16, 16), (8, 8), (4, 4)],
    [(16, 16), (8, 8), (4, 4), (2, 2)],
    [(16, 12), (8, 6)],  # non-square latent
    [(8, 8), (4, 4)],  # SDXL-like: two resolutions
    [(12, 12), (6, 6), (3, 3)],
    [(8, 8)],
]


def random_attention(layout, batch, heads, seed, sharpness=3.0):
    generator = torch.Generator().manual_seed(seed)
    maps = {}
    for h, w in layout:
        shape = (batch, heads, h * w, h * w) if heads else (batch, h * w, h * w)
        maps[(h, w)] = torch.softmax(sharpness * torch.randn(shape, generator=generator), dim=-1)
    return maps


@settings(max_examples=25, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), batch=st.integers(1, 2), heads=st.sampled_from([0, 1, 3]),
       seed=st.integers(0, 2**16))
def test_rows_sum_to_one_and_match_official_reference(layout, batch, heads, seed):
    maps = random_attention(layout, batch, heads, seed)
    out = aggregate_self_attention(maps)
    h, w = layout[0]
    assert out.shape == (batch, h * w, h, w) and out.dtype == torch.float32
    torch.testing.assert_close(out.sum(dim=(-1, -2)), torch.ones(batch, h * w), atol=2e-6, rtol=0)
    reference = aggregate_reference({hw: m.numpy() for hw, m in maps.items()})
    np.testing.assert_allclose(out.numpy(), reference, atol=1e-7, rtol=1e-5)


def test_weights_proportional_to_resolution():
    sd15 = resolution_weights([(64, 64), (32, 32), (16, 16), (8, 8)])
    np.testing.assert_allclose(list(sd15.values()), np.array([64, 32, 16, 8]) / 120)
    sdxl = resolution_weights([(128, 128), (64, 64)])
    np.testing.assert_allclose(list(sdxl.values()), [2 / 3, 1 / 3])
    wide = resolution_weights([(64, 96), (32, 48)])
    np.testing.assert_allclose(list(wide.values()), [2 / 3, 1 / 3])
    custom = resolution_weights([(8, 8), (4, 4)], {(8, 8): 1.0, (4, 4): 3.0})
    assert custom == {(8, 8): 0.25, (4, 4): 0.75}


def test_weights_visible_in_output():
    """Identity attention at 8x8 and uniform at 4x4: the diagonal is w8 + w4/64, elsewhere w4/64."""
    maps = {(8, 8): torch.eye(64)[None], (4, 4): torch.full((1, 16, 16), 1 / 16)}
    out = aggregate_self_attention(maps).reshape(64, 64)
    w8, w4 = 8 / 12, 4 / 12
    torch.testing.assert_close(out.diagonal(), torch.full((64,), w8 + w4 / 64))
    torch.testing.assert_close(out[0, 1:], torch.full((63,), w4 / 64))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), heads=st.integers(2, 5))
def test_head_order_does_not_matter(seed, heads):
    maps = random_attention(LAYOUTS[0], 1, heads, seed)
    permutation = torch.randperm(heads, generator=torch.Generator().manual_seed(seed))
    shuffled = {hw: m[:, permutation] for hw, m in maps.items()}
    torch.testing.assert_close(aggregate_self_attention(maps), aggregate_self_attention(shuffled), atol=1e-7, rtol=1e-6)


def test_attention_maps_input_and_explicit_size():
    maps = random_attention(LAYOUTS[0], 1, 0, 0)
    payload = AttentionMaps(self_attn=maps)
    torch.testing.assert_close(aggregate_self_attention(payload), aggregate_self_attention(maps))
    bigger = aggregate_self_attention({(8, 8): maps[(8, 8)], (4, 4): maps[(4, 4)]}, size=(16, 16))
    assert bigger.shape == (1, 256, 16, 16)
    torch.testing.assert_close(bigger.sum(dim=(-1, -2)), torch.ones(1, 256), atol=2e-6, rtol=0)


def test_errors():
    maps = random_attention(LAYOUTS[0], 1, 0, 0)
    maps[(8, 8)][0, 3, 5] = float("nan")
    with pytest.raises(ValueError, match=r"at \(8, 8\) contains NaN.*float32.*float16 model"):
        aggregate_self_attention(maps)
    with pytest.raises(ValueError, match="No self-attention"):
        aggregate_self_attention({})
    with pytest.raises(ValueError, match="zero"):
        resolution_weights([(8, 8)], {(8, 8): 0.0})
