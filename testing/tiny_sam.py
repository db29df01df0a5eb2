"""A tiny, seeded segment-anything ``Sam`` built in code (no downloads), for tests of SAM-based mask making.

Same module classes as the real vit_b/l/h models (ImageEncoderViT, PromptEncoder, MaskDecoder with a
TwoWayTransformer) but a 64-pixel input, one encoder block and 16-wide embeddings, so a forward pass takes
milliseconds on a CPU.
"""

from __future__ import annotations

from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

TINY_IMG_SIZE = 64


def tiny_sam(seed: int = 0, saturate: bool = False) -> Sam:
    """Random tiny SAM. ``saturate=True`` makes every mask logit positive (the predicted mask is the whole
    image), a deterministic output for tests that check what is done with SAM's mask rather than SAM itself."""
    torch.manual_seed(seed)
    dim, patch = 16, 16
    sam = Sam(
        image_encoder=ImageEncoderViT(
            img_size=TINY_IMG_SIZE,
            patch_size=patch,
            embed_dim=dim,
            depth=1,
            num_heads=2,
            mlp_ratio=2.0,
            out_chans=dim,
            qkv_bias=True,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            use_rel_pos=True,
            window_size=2,
            global_attn_indexes=(0,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(TINY_IMG_SIZE // patch, TINY_IMG_SIZE // patch),
            input_image_size=(TINY_IMG_SIZE, TINY_IMG_SIZE),
            mask_in_chans=4,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=dim, mlp_dim=32, num_heads=2),
            transformer_dim=dim,
            iou_head_depth=1,
            iou_head_hidden_dim=16,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    if saturate:
        with torch.no_grad():
            # upscaled image embedding = GELU(constant 1) > 0 and hypernetwork output = constant 1 > 0, so every
            # mask logit is a positive constant
            last_up = sam.mask_decoder.output_upscaling[-2]
            last_up.weight.zero_()
            last_up.bias.fill_(1.0)
            for mlp in sam.mask_decoder.output_hypernetworks_mlps:
                mlp.layers[-1].weight.zero_()
                mlp.layers[-1].bias.fill_(1.0)
    return sam.eval()
