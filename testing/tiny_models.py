"""Tiny, seeded diffusers models built in code (no downloads), as diffusers' own tests build them.

``tiny_sd15_unet`` keeps SD1.5's block layout (16 transformer blocks: 2+2+2 down, 1 mid, 3+3+3 up; self- and
cross-attention at 1/8, 1/16, 1/32, 1/64 of the image) with tiny widths, so attention shapes and module names
are the real ones while a forward pass takes milliseconds.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel


def tiny_sd15_unet(
    seed: int = 0,
    cross_attention_dim: int = 32,
    widths: tuple[int, int, int, int] = (32, 64, 64, 64),
    in_channels: int = 4,
    sample_size: int = 64,
    head_dim: int = 8,
    layers_per_block: int = 2,
) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=widths,
        layers_per_block=layers_per_block,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=head_dim,
        norm_num_groups=8,
        cross_attention_dim=cross_attention_dim,
    ).eval()


def tiny_sd2_unet(seed: int = 0) -> UNet2DConditionModel:
    """SD2.x-style: head *dim* fixed (64-style), linear projections, v-prediction is a scheduler matter."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64, 64, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=(2, 4, 4, 4),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=48,
    ).eval()


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """SDXL-style: attention only at 1/16 and 1/32, several transformer layers per block, added conditions."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 8),
        use_linear_projection=True,
        norm_num_groups=8,
        cross_attention_dim=64,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + 32,
    ).eval()


def tiny_text_encoder(
    vocab_size: int, hidden_size: int = 32, seed: int = 0, max_position_embeddings: int = 77
) -> CLIPTextModel:
    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    return CLIPTextModel(config).eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    """Three levels: 8x downsampling like SD's VAE, tiny widths."""
    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=(8, 16, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=8,
        layers_per_block=1,
    ).eval()
