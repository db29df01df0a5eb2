"""SegDrop_GMMBinarize and SegDrop_KLMergeSegment: masks from an ATTENTION, as MASKs any mask node takes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from comfy_api.latest import io

from .. import preview
from ..attention_patch.maps import AttentionMaps
from ..attention_patch.tokens import find_word_positions, words_of
from ..segment import aggregate_self_attention, gmm_binarize, kl_merge_segment, name_segments, resize_mask
from .types import CATEGORY, Attention


def output_size(attention: AttentionMaps, image: torch.Tensor | None) -> tuple[int, int]:
    if image is None:
        return attention.image_size
    if image.shape[0] not in (1, attention.batch_size):
        raise ValueError(
            f"The image batch has {image.shape[0]} images but the attention was captured from {attention.batch_size}: "
            "connect the image that was encoded for AttentionCapture."
        )
    return int(image.shape[1]), int(image.shape[2])


def resize(maps: torch.Tensor, size: tuple[int, int], mode: str = "nearest") -> torch.Tensor:
    return F.interpolate(maps[:, None].float(), size=size, mode=mode)[:, 0]


def check_attention(attention) -> AttentionMaps:
    if not isinstance(attention, AttentionMaps):
        raise TypeError(f"Expected the ATTENTION output of Attention Capture, got {type(attention).__name__}.")
    return attention


class GMMBinarize(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_GMMBinarize",
            display_name="GMM Binarize (concept distillation)",
            category=CATEGORY,
            description=(
                "Concept distillation's preliminary foreground mask (Dombrowski et al.): the object word's "
                "cross-attention averaged over layers, heads and timesteps, split by a 2-component Gaussian "
                "mixture at the midpoint of its means, cleaned by a 3x3 majority filter."
            ),
            inputs=[
                Attention.Input("attention", tooltip="From Attention Capture (concept distillation preset, prompt 'a photo of a {object}')."),
                io.String.Input("words", default="bird",
                                tooltip="The object word(s) of the prompt; comma-separate several to sum their maps (e.g. 'human, arms, legs')."),
                io.Boolean.Input("majority_filter", default=True, tooltip="The paper's 3x3 orphan filter (5 of 9 neighbours)."),
                io.Int.Input("min_area", default=0, min=0, max=1 << 20,
                             tooltip="Beyond the paper: drop foreground pieces smaller than this many latent cells (0 = off)."),
                io.Float.Input("threshold_shift", default=0.0, min=-1.0, max=1.0, step=0.01,
                               tooltip="Beyond the paper: move the threshold by this fraction of the gap between the two means (+ = smaller mask)."),
                io.Image.Input("image", optional=True, tooltip="Optional: the analysed image, for the mask size and a preview overlay."),
                io.Mask.Input("ignore_mask", optional=True,
                              tooltip="Optional: 1 where the image is padding; the mixture is fitted on the rest and padding is background."),
            ],
            outputs=[
                io.Mask.Output(display_name="mask", tooltip="Foreground mask at image size (1 = object)."),
                io.Mask.Output(display_name="soft", tooltip="The attention map normalised to 0..1 at image size."),
                io.Image.Output(display_name="preview", tooltip="Heatmap with the mask outline, or the mask over the image."),
            ],
        )

    @classmethod
    def execute(cls, attention, words, majority_filter, min_area, threshold_shift, image=None, ignore_mask=None) -> io.NodeOutput:
        attention = check_attention(attention)
        positions = find_word_positions(attention.tokens, words)
        maps = attention.cross_attention_for(positions)
        ignore = None
        if ignore_mask is not None:
            ignore_mask = ignore_mask if ignore_mask.dim() == 3 else ignore_mask[None]
            ignore = resize(ignore_mask, maps.shape[-2:]) > 0.5
        result = gmm_binarize(maps, ignore_mask=ignore, min_area=min_area, threshold_shift=threshold_shift,
                              majority_filter=majority_filter)
        size = output_size(attention, image)
        mask = resize_mask(result.mask, size).float()
        soft = resize(result.soft, size, mode="bilinear").clamp(0, 1)
        if image is not None:
            shown = preview.overlay(image[..., :3], mask[..., None].expand(-1, -1, -1, 3) * torch.tensor([1.0, 0.2, 0.2]), 0.5)
        else:
            shown = preview.colormap(soft) * (0.6 + 0.4 * mask[..., None])
        return io.NodeOutput(mask, soft, shown)


class KLMergeSegment(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_KLMergeSegment",
            display_name="KL Merge Segment (DiffSeg)",
            category=CATEGORY,
            description=(
                "DiffSeg's zero-shot segmentation (Tian et al.): self-attention aggregated across resolutions, a grid "
                "of anchors merged by symmetric KL divergence, then every pixel takes its closest segment. KL is "
                "computed in float32 (the official float16 underflows)."
            ),
            inputs=[
                Attention.Input("attention", tooltip="From Attention Capture with self-attention (DiffSeg preset)."),
                io.Float.Input("tau", default=1.1, min=0.001, max=100.0, step=0.05,
                               tooltip="KL merge threshold: larger = fewer, bigger segments. DiffSeg: 1.1 (COCO), 0.9 (Cityscapes), for "
                                       "64x64 maps. Smaller maps need a smaller tau: on 16x16 maps (the toy default model) "
                                       "1.1 merges each image into one segment, and 0.1 works."),
                io.Combo.Input("tau_mode", options=["raw", "size_aware"], default="raw",
                               tooltip="raw: tau as the paper, for SD1.x/SD2.x at 512 px (64x64 maps). size_aware: tau x log(N)/log(4096) "
                                       "for other map sizes (SDXL at 1024 px has 32x32 self-attention at most; small images too)."),
                io.Int.Input("grid", default=16, min=2, max=64, tooltip="Anchors per side (16 = 256 anchors, the paper)."),
                io.Int.Input("iterations", default=3, min=1, max=10, tooltip="Merge iterations (the paper: 3)."),
                io.Int.Input("max_segments", default=0, min=0, max=256,
                             tooltip="Beyond the paper: merge the closest segments until at most this many remain (0 = no limit)."),
                io.Image.Input("image", optional=True, tooltip="Optional: the analysed image, for the output size and the overlay."),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per segment, largest first (segments of all images, in batch order)."),
                io.Mask.Output(display_name="labels", tooltip="Label map: each pixel holds its segment id 0, 1, 2... (not 0..1)."),
                io.Image.Output(display_name="overlay", tooltip="Segments coloured over the image (or alone), named when the capture had a prompt."),
                io.Int.Output(display_name="count", tooltip="Number of segments of the first image."),
                io.String.Output(display_name="names", is_output_list=True,
                                 tooltip="Per segment, the prompt word with the highest attention inside it (empty without a prompt)."),
            ],
        )

    @classmethod
    def execute(cls, attention, tau, tau_mode, grid, iterations, max_segments, image=None) -> io.NodeOutput:
        attention = check_attention(attention)
        if not attention.self_attn:
            raise ValueError("This ATTENTION has no self-attention: capture with the DiffSeg (or custom) preset.")
        size = output_size(attention, image)
        aggregated = aggregate_self_attention(attention.self_attn)
        grid = min(grid, aggregated.shape[-2], aggregated.shape[-1])
        result = kl_merge_segment(aggregated, grid=grid, iterations=iterations, tau=tau, tau_mode=tau_mode,
                                  max_segments=max_segments or None, out_size=size)
        names: list[str] = []
        if attention.cross_attn and words_of(attention.tokens):
            names = name_segments(result.labels[0], attention, attention.tokens)
        colors = preview.colorize_labels(result.labels)
        shown = preview.overlay(image[..., :3], colors, 0.55) if image is not None else colors
        masks = torch.cat([m.float() for m in result.masks])
        return io.NodeOutput(masks, result.labels.float(), shown, result.counts[0], names)
