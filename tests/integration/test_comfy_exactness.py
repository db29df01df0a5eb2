"""The ComfyUI backend's patched UNet forward equals the unpatched one, on a real ComfyUI model."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.comfyui


def forward(patcher, x, sigma, context, cond_or_uncond):
    import comfy.model_management
    import torch
    from comfy.patcher_extension import copy_nested_dicts

    comfy.model_management.load_models_gpu([patcher])
    options = copy_nested_dicts(patcher.model_options)["transformer_options"] if patcher.model_options.get(
        "transformer_options") else {}
    options["cond_or_uncond"] = cond_or_uncond
    options["sigmas"] = sigma
    with torch.inference_mode():
        return patcher.model.apply_model(x, sigma, c_crossattn=context, transformer_options=options)


@pytest.mark.parametrize("cond_or_uncond", [[0], [1, 0]])
def test_patched_forward_equals_unpatched(comfyui, tiny_checkpoint, cond_or_uncond):
    import torch

    from segdrop.attention_patch.comfy_backend import discover_transformer_blocks, layer_name, patch_model
    from segdrop.attention_patch.store import CROSS, SELF, AttentionStore

    model, clip, _ = comfyui.load_checkpoint(tiny_checkpoint)
    with torch.inference_mode():
        cond = clip.encode_from_tokens(clip.tokenize("a red square"))
    torch.manual_seed(0)
    images = 1
    batch = len(cond_or_uncond) * images
    x = torch.randn(batch, 4, 16, 16)
    sigma = torch.full((batch,), 1.5)
    context = cond.float().repeat(batch, 1, 1)
    expected = forward(model, x, sigma, context, cond_or_uncond)

    store = AttentionStore(images=images, latent_hw=(16, 16))
    patched = patch_model(model, store)
    got = forward(patched, x, sigma, context, cond_or_uncond)
    assert (got - expected).abs().max().item() <= 1e-5
    store.check_hits()
    keys = discover_transformer_blocks(model.get_model_object("diffusion_model"))
    assert len(keys) == 7
    assert store.hits == {layer_name(kind, key): 1 for key in keys for kind in (SELF, CROSS)}  # attn1, attn2 apart
    for (kind, hw), total in store.sums.items():
        assert total.shape[:2] == (images, hw[0] * hw[1])
        assert torch.allclose(total.sum(-1) / store.counts[(kind, hw)], torch.ones(()), atol=1e-5)


def test_sdxl_shaped_unet_blocks_are_discovered(comfyui):
    """SDXL's layout (no attention at full resolution, 2 and 10 transformer layers per block) without weights."""
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    from segdrop.attention_patch.comfy_backend import discover_transformer_blocks

    with torch.device("meta"):
        unet = UNetModel(
            image_size=32, in_channels=4, out_channels=4, model_channels=32, num_res_blocks=[1, 1, 1],
            channel_mult=[1, 2, 2], transformer_depth=[0, 2, 3], transformer_depth_output=[0, 0, 2, 2, 3, 3],
            transformer_depth_middle=3, context_dim=64, num_head_channels=16, use_linear_in_transformer=True,
            adm_in_channels=None, use_spatial_transformer=True, dtype=torch.float32,
        )
    keys = discover_transformer_blocks(unet)
    # input_blocks: 0 conv_in, 1 res (no attention), 2 downsample, 3 res+2 layers, 4 downsample, 5 res+3 layers
    assert [k for k in keys if k[0] == "input"] == [("input", 3, 0), ("input", 3, 1)] + [("input", 5, j) for j in range(3)]
    assert [k for k in keys if k[0] == "middle"] == [("middle", 0, j) for j in range(3)]
    assert len(keys) == 2 + 3 + 3 + (3 + 3 + 2 + 2)


def test_prompt_weighting_does_not_shift_word_columns(comfyui, tiny_checkpoint):
    from segdrop.attention_patch.comfy_backend import tokenizer_strings
    from segdrop.attention_patch.tokens import find_word_positions

    _, clip, _ = comfyui.load_checkpoint(tiny_checkpoint)
    plain = tokenizer_strings(clip, "a photo of a red square")
    weighted = tokenizer_strings(clip, "a photo of a (red:1.3) (square:0.8)")
    assert plain == weighted
    assert find_word_positions(weighted, "square") == [6]


def test_latent_with_wrong_channel_count_is_a_clear_error(comfyui, tiny_checkpoint):
    import torch

    from segdrop.attention_patch.comfy_backend import run_capture
    from segdrop.attention_patch.store import AttentionStore

    model, clip, _ = comfyui.load_checkpoint(tiny_checkpoint)
    with torch.inference_mode():
        positive = clip.encode_from_tokens_scheduled(clip.tokenize("a red square"))
        with pytest.raises(ValueError, match="takes 4 latent channels"):
            run_capture(model, positive, {"samples": torch.randn(1, 16, 8, 8)}, [300], add_noise=False, seed=0,
                        store=AttentionStore())
