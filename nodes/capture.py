"""SegDrop_AttentionCapture: average a real image's attention maps over a paper's schedule of timesteps."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from .. import preview
from ..attention_patch import schedules
from ..attention_patch.comfy_backend import run_capture, tokenizer_strings
from ..attention_patch.maps import AttentionMaps
from ..attention_patch.store import AttentionStore
from ..attention_patch.tokens import find_word_positions, words_of
from .types import CATEGORY, Attention

LATENT_SCALE = 8  # pixels per latent cell for SD1.x/SD2.x/SDXL VAEs


def preview_image(maps: AttentionMaps, word: str) -> torch.Tensor:
    """The chosen word's cross-attention as a heatmap; without a prompt, the self-attention's principal colours."""
    size = maps.image_size
    words = words_of(maps.tokens)
    if maps.cross_attn and (word.strip() or words):
        positions = find_word_positions(maps.tokens, word.strip() or words[-1])
        return preview.heatmap(maps.cross_attention_for(positions), size)
    if maps.self_attn:
        hw = maps.latent_size if maps.latent_size in maps.self_attn else max(maps.self_attn, key=lambda r: r[0] * r[1])
        return preview.self_attention_pca(maps.self_attn[hw], hw, size)
    return torch.zeros(maps.batch_size or 1, size[0], size[1], 3)


def check_something_is_kept(preset: str, prompt: str, keep_self: bool, keep_cross: bool) -> None:
    """Refuse before sampling when the capture would keep no map (it would run every timestep for nothing)."""
    if keep_self or keep_cross:
        return
    raise ValueError(
        f"The {preset} preset keeps only cross-attention, and the prompt {prompt!r} has no words, so there is no "
        "attention to capture. Give a prompt naming the object, such as 'a photo of a bird', or use the "
        f"{schedules.DIFFSEG} preset (self-attention, no prompt needed)."
    )


class AttentionCapture(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_AttentionCapture",
            display_name="Attention Capture",
            category=CATEGORY,
            description=(
                "Runs the model on an encoded image at a schedule of timesteps and averages its self- and "
                "cross-attention over layers, heads and steps. Feed the result to GMM Binarize (foreground mask) "
                "or KL Merge Segment (zero-shot segmentation)."
            ),
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x, SD2.x or SDXL model. It is cloned; the original is untouched."),
                io.Clip.Input("clip", tooltip="The text encoder of the same checkpoint; also maps prompt words to attention columns."),
                io.Latent.Input("latent", tooltip="The image to analyse, encoded with VAEEncode and the model's own VAE."),
                io.String.Input(
                    "prompt",
                    default="a photo of a bird",
                    multiline=True,
                    tooltip=(
                        "Concept distillation: 'a photo of a {object}'. DiffSeg: leave empty as the paper does; a "
                        "prompt only adds segment names. Weighting syntax such as (bird:1.2) is allowed."
                    ),
                ),
                io.Combo.Input(
                    "preset",
                    options=list(schedules.PRESETS),
                    default=schedules.CONCEPT_DISTILLATION,
                    tooltip=(
                        "concept distillation (Dombrowski et al.): T0 timesteps t = 1, 21, ... of a 50-step DDIM grid, "
                        "fresh noise at each, cross-attention kept. DiffSeg (Tian et al.): one pass at t = 300 on the "
                        "clean latent, self- and cross-attention kept. custom: your timesteps and noise setting."
                    ),
                ),
                io.Int.Input("seed", default=52, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="Seed of the noise added at each timestep (the authors seed 52)."),
                io.Int.Input("t0", default=schedules.DEFAULT_T0, min=1, max=schedules.DDIM_STEPS,
                             tooltip="Concept distillation only: how many of the 50 DDIM timesteps, from the low-noise end, to average (paper: 40)."),
                io.String.Input("timesteps", default="300",
                                tooltip="Custom only: comma-separated DDPM timesteps (0-999), e.g. '300' or '1, 21, 41'."),
                io.Boolean.Input("add_noise", default=False,
                                 tooltip="Custom only: noise the latent afresh at each timestep (on) or show the UNet the clean latent (off, as DiffSeg)."),
                io.String.Input("preview_word", default="",
                                tooltip="Word whose cross-attention the preview shows; empty = the prompt's last word."),
                io.Int.Input("max_batch", default=8, min=1, max=64,
                             tooltip="Timesteps run together as one batched UNet call; lower it if memory runs out."),
                io.Conditioning.Input("conditioning", optional=True,
                                      tooltip="Optional: use this conditioning for the UNet instead of encoding the prompt. The prompt must still be its text, for word columns."),
            ],
            outputs=[
                Attention.Output(display_name="attention", tooltip="Averaged self-attention per resolution and cross-attention per prompt token."),
                io.Image.Output(display_name="preview", tooltip="Heatmap of the preview word's cross-attention (or self-attention colours without a prompt)."),
            ],
        )

    @classmethod
    def execute(cls, model, clip, latent, prompt, preset, seed, t0, timesteps, add_noise, preview_word, max_batch,
                conditioning=None) -> io.NodeOutput:
        schedule = schedules.schedule_for(preset, t0=t0, timesteps=timesteps, add_noise=add_noise)
        tokens = tokenizer_strings(clip, prompt)
        # An empty prompt (DiffSeg's setting) has no word to name segments with: skip its cross-attention.
        keep_cross = schedule.keep_cross and bool(words_of(tokens))
        check_something_is_kept(preset, prompt, schedule.keep_self, keep_cross)
        if preview_word.strip():
            find_word_positions(tokens, preview_word)  # fail before the long part on a word not in the prompt
        if conditioning is None:
            conditioning = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        store = AttentionStore(keep_self=schedule.keep_self, keep_cross=keep_cross)
        import comfy.utils

        bar = comfy.utils.ProgressBar(len(schedule.timesteps))
        run_capture(
            model, conditioning, latent, schedule.timesteps, add_noise=schedule.add_noise, seed=seed, store=store,
            max_batch=max_batch, progress=lambda done, total: bar.update_absolute(done, total),
        )
        h, w = latent["samples"].shape[-2:]
        meta = {"backend": "comfyui", "preset": preset, "prompt": prompt, "timesteps": list(schedule.timesteps),
                "add_noise": schedule.add_noise, "seed": seed}
        maps = store.to_maps(tokens, (h * LATENT_SCALE, w * LATENT_SCALE), meta)
        return io.NodeOutput(maps, preview_image(maps, preview_word))
