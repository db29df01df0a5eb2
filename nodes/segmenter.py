"""SegDrop_SegmenterApply: run a segmenter trained by ``python -m segdrop.training segmenter`` (concept
distillation's final U-Net) on IMAGEs; the model code is the ComfyUI-free ``segdrop.segment.segmenter``."""

from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..segment.segmenter import load_segmenter, predict_masks
from .models_folder import segdrop_file_path, segdrop_files
from .types import CATEGORY

CHUNK = 8  # images per forward pass: one progress tick and one Cancel check each
_CACHE: dict[str, tuple[tuple, torch.nn.Module]] = {}


def cached_segmenter(path: str, device: torch.device) -> torch.nn.Module:
    """The segmenter in ``path``, reloaded only when the file changes (one kept)."""
    stat = os.stat(path)
    key = (path, stat.st_mtime_ns, stat.st_size, str(device))
    hit = _CACHE.get("model")
    if hit is None or hit[0] != key:
        _CACHE["model"] = (key, load_segmenter(path, device=device))
    return _CACHE["model"][1]


def comfy_device() -> torch.device:
    try:
        import comfy.model_management
    except ImportError:
        return torch.device("cpu")
    return comfy.model_management.get_torch_device()


def progress(total: int):
    """(tick(done), check_interrupt) from ComfyUI when importable, no-ops otherwise."""
    try:
        import comfy.model_management
        import comfy.utils
    except ImportError:
        return (lambda done: None), (lambda: None)
    bar = comfy.utils.ProgressBar(total)
    return (lambda done: bar.update_absolute(done, total)), comfy.model_management.throw_exception_if_processing_interrupted


class SegmenterApply(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SegDrop_SegmenterApply",
            display_name="Segmenter Apply (concept distillation)",
            category=CATEGORY,
            description=(
                "Foreground masks from a plain U-Net segmenter, the final model of concept distillation (Dombrowski "
                "et al.), trained with `python -m segdrop.training segmenter`. Each whole image is resized to the "
                "segmenter's input size, the probabilities are resized back and thresholded, then closed and "
                "hole-filled as in the paper's test code."
            ),
            inputs=[
                io.Combo.Input("segmenter", options=segdrop_files(),
                               tooltip="A segmenter.safetensors in ComfyUI/models/segdrop (written by "
                                       "`python -m segdrop.training segmenter`)."),
                io.Image.Input("image", tooltip="Images to segment; each gets a mask at its own size."),
                io.Float.Input("threshold", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="Foreground where the predicted probability is above this (the paper: 0.5)."),
                io.Boolean.Input("postprocess", default=True,
                                 tooltip="The paper's clean-up: binary closing (3x3 cross), then hole filling."),
            ],
            outputs=[io.Mask.Output(display_name="mask", tooltip="Foreground masks at image size (1 = object).")],
        )

    @classmethod
    def execute(cls, segmenter, image, threshold, postprocess) -> io.NodeOutput:
        if image.dim() != 4:
            raise ValueError(f"Expected an IMAGE batch (B, H, W, C), got shape {tuple(image.shape)}.")
        model = cached_segmenter(segdrop_file_path(segmenter), comfy_device())
        tick, check_interrupt = progress(image.shape[0])
        masks = []
        for start in range(0, image.shape[0], CHUNK):
            check_interrupt()
            chunk = image[start:start + CHUNK, ..., :3].float().cpu()
            masks.append(predict_masks(model, chunk, threshold=threshold, postprocess=postprocess).float())
            tick(start + chunk.shape[0])
        return io.NodeOutput(torch.cat(masks))
