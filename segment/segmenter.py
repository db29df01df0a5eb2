"""The final step of concept distillation (Dombrowski et al., ICCV 2023, §1.7 of the paper notes): a plain U-Net
trained on images with pseudo masks, its safetensors file, and applying it to whole images. ComfyUI-free.

Network: milesial's Pytorch-UNet as the paper uses it (``bilinear=False``): double 3x3 conv + BatchNorm + ReLU
blocks, max-pool down, transposed-conv up, skip concatenation, a 1x1 conv to one logit channel (the paper's
sigmoid output is ``torch.sigmoid`` of it; training uses BCE-with-logits, the same loss computed stably).
``base_width`` 64 and ``depth`` 4 give the paper's 64 -> 1024 channels; the toy uses a narrower, shallower one.

Test protocol vs apply: the paper evaluates at Resize(128 shorter side) -> CenterCrop(128), i.e. on the centre
square only. :func:`predict_masks` wants a mask for the *whole* image at its own size, so it resizes the whole
image to ``input_size`` x ``input_size`` (no crop; non-square images are squashed, ``keep_aspect=True`` resizes
the shorter side instead and runs the fully convolutional net on the whole rectangle), resizes the probabilities
back bilinearly, thresholds, then closes and fills holes as the paper's test code does.
``training/train_segmenter.py`` reports both protocols.

File: safetensors only (no pickle), float32 weights, metadata ``segdrop_kind = "segmenter"``, ``architecture``
(JSON of the constructor arguments), ``input_size`` and a ``training`` JSON record. A file of another kind is
refused with what it looks like.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

KIND = "segmenter"
WRITTEN_BY = "python -m segdrop.training segmenter"
DEFAULT_INPUT_SIZE = 128


class DoubleConv(nn.Sequential):
    """(3x3 conv, BatchNorm, ReLU) x 2, no conv bias: milesial's block."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Transposed conv (halves the channels, doubles the size), pad to the skip's size, concat, DoubleConv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = DoubleConv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        dy, dx = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
        x = F.pad(x, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])  # odd sizes: the skip is 1 px larger
        return self.conv(torch.cat([skip, x], dim=1))


class SegmentationUNet(nn.Module):
    """Plain U-Net, (B, in_channels, H, W) -> (B, 1, H, W) foreground logits, any H, W >= 2**depth."""

    def __init__(self, in_channels: int = 3, base_width: int = 64, depth: int = 4,
                 input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        if in_channels < 1 or base_width < 1 or depth < 1:
            raise ValueError(f"in_channels, base_width and depth must be >= 1, got {in_channels}, {base_width}, {depth}")
        self.config = {"in_channels": int(in_channels), "base_width": int(base_width), "depth": int(depth)}
        self.input_size = int(input_size)  # preprocessing, not architecture: the side the net was trained at
        widths = [base_width * 2**i for i in range(depth + 1)]
        self.inc = DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(nn.Sequential(nn.MaxPool2d(2), DoubleConv(widths[i], widths[i + 1]))
                                   for i in range(depth))
        self.ups = nn.ModuleList(Up(widths[i + 1], widths[i]) for i in reversed(range(depth)))
        self.outc = nn.Conv2d(widths[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.inc(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        x = skips.pop()
        for up in self.ups:
            x = up(x, skips.pop())
        return self.outc(x)


# ----------------------------------------------------------------------------------------------- file


def save_segmenter(model: SegmentationUNet, path: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` as float32 safetensors with the segmenter metadata, atomically (temp file + ``os.replace``).
    ``metadata`` values that are not strings are stored as JSON (safetensors metadata is str -> str)."""
    from safetensors.torch import save_file

    path = Path(path)
    meta = {k: v if isinstance(v, str) else json.dumps(v, default=str) for k, v in (metadata or {}).items()}
    meta.update({"segdrop_kind": KIND, "architecture": json.dumps(model.config), "input_size": str(model.input_size),
                 "format": "pt"})
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
             if v.is_floating_point()}
    state.update({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if not v.is_floating_point()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class SegmenterFileError(ValueError):
    """A file that is not a segmenter written by ``python -m segdrop.training segmenter``."""


def _describe(keys: list[str], meta: dict[str, str]) -> str:
    """What a safetensors file that is not a segmenter looks like, from its metadata and tensor names."""
    if meta.get("segdrop_kind"):
        return f"a SegDrop {meta['segdrop_kind']!r} file"
    text = " ".join(keys[:2000])
    if "lora" in text.lower() or meta.get("ss_network_module"):
        return f"a LoRA ({len(keys)} tensors, e.g. {keys[0]!r})"
    if "model.diffusion_model." in text:
        return "a Stable Diffusion checkpoint (model.diffusion_model.* weights)"
    if "down_blocks." in text and "conv_in." in text:
        return "a diffusers UNet or VAE"
    if "encoder.down." in text or "first_stage_model." in text:
        return "a VAE"
    if not keys:
        return "an empty safetensors file"
    return f"a safetensors file without SegDrop metadata ({len(keys)} tensors, e.g. {keys[0]!r})"


def _expected(path: Path) -> str:
    return (f"{path} is {{what}}, not a segmenter; expected a segmenter written by `{WRITTEN_BY}` "
            "(its output_dir/segmenter.safetensors)")


def read_segmenter_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a segmenter file; ``SegmenterFileError`` (saying what the file is) for anything else."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmenter file {path} does not exist; train one with `{WRITTEN_BY}`")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta, keys = dict(handle.metadata() or {}), list(handle.keys())
    except Exception as error:  # noqa: BLE001 - a pickle, a truncated or foreign file: not safetensors
        raise SegmenterFileError(_expected(path).format(
            what=f"not a readable safetensors file ({type(error).__name__}: {str(error)[:120]}); pickled "
                 ".ckpt/.pt files are never loaded")) from None
    if meta.get("segdrop_kind") != KIND:
        raise SegmenterFileError(_expected(path).format(what=_describe(keys, meta)))
    return meta


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu") -> SegmentationUNet:
    """The segmenter in ``path`` in eval mode, with ``input_size`` from its metadata."""
    from safetensors.torch import load_file

    meta = read_segmenter_metadata(path)
    try:
        config = json.loads(meta["architecture"])
        model = SegmentationUNet(**config, input_size=int(meta.get("input_size", DEFAULT_INPUT_SIZE)))
    except (KeyError, TypeError, ValueError) as error:
        raise SegmenterFileError(f"{path} is a segmenter file with unreadable architecture metadata "
                                 f"({type(error).__name__}: {error}); retrain it with `{WRITTEN_BY}`") from None
    state = load_file(str(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise SegmenterFileError(f"{path}: the weights do not match the recorded architecture {config} "
                                 f"({str(error).splitlines()[0]}); the file is damaged or was edited") from None
    return model.to(device).eval()


# ----------------------------------------------------------------------------------------------- apply


def as_float_images(images) -> torch.Tensor:
    """(B, H, W, C) uint8 or float [0, 1] (numpy or torch) -> float32 (B, 3, H, W) in [0, 1]; alpha is dropped."""
    x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else torch.as_tensor(images)
    if x.dim() != 4 or x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected images (B, H, W, 3), got shape {tuple(x.shape)}; add a batch axis for one image")
    if x.dtype == torch.uint8:
        x = x.float() / 255.0
    elif x.is_floating_point():
        x = x.float()
        low, high = float(x.min()), float(x.max())
        if low < -1e-3 or high > 1 + 1e-3:
            raise ValueError(f"float images must be in [0, 1], got values in [{low:.3g}, {high:.3g}]; "
                             "divide uint8 pixels by 255 (or pass them as uint8)")
    else:
        raise ValueError(f"images must be uint8 or float in [0, 1], got {x.dtype}")
    x = x[..., :3] if x.shape[-1] >= 3 else x.expand(*x.shape[:-1], 3)
    return x.permute(0, 3, 1, 2).clamp(0, 1)


def resize_images(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear with antialiasing (as PIL/torchvision Resize) for (B, C, H, W) float images."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def shorter_side_size(h: int, w: int, side: int) -> tuple[int, int]:
    """torchvision ``Resize(side)``: the shorter side becomes ``side``, the aspect ratio is kept."""
    if h <= w:
        return side, max(1, int(side * w / h))
    return max(1, int(side * h / w)), side


def postprocess_mask(mask: np.ndarray) -> np.ndarray:
    """The paper's test-time clean-up of one (H, W) bool mask: ``binary_closing`` (3x3 cross, 1 iteration), then
    ``binary_fill_holes`` (``segment.refine.postprocess_mask``), with the border edge-padded for the closing: scipy's
    erosion treats outside the image as background and would otherwise remove foreground along the image border."""
    from .refine import postprocess_mask as close_and_fill

    return close_and_fill(np.asarray(mask, bool), pad_border=True)


@torch.no_grad()
def predict_probabilities(model: nn.Module, images, *, input_size: int | None = None,
                          keep_aspect: bool = False) -> torch.Tensor:
    """Foreground probabilities (B, H, W) float32 at each image's own size (module docstring for the resizing)."""
    x = as_float_images(images)
    h, w = x.shape[-2:]
    side = int(input_size or getattr(model, "input_size", DEFAULT_INPUT_SIZE))
    size = shorter_side_size(h, w, side) if keep_aspect else (side, side)
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    try:
        probs = torch.sigmoid(model(resize_images(x, size).to(device)).float()).cpu()
    finally:
        model.train(was_training)
    if tuple(probs.shape[-2:]) != (h, w):
        probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
    return probs[:, 0].clamp(0, 1)


def predict_masks(model: nn.Module, images, *, input_size: int | None = None, threshold: float = 0.5,
                  postprocess: bool = True, keep_aspect: bool = False) -> torch.Tensor:
    """Foreground masks (B, H, W) bool for images (B, H, W, 3) uint8 or float [0, 1]: probability > ``threshold``,
    then closing and hole filling when ``postprocess``. ``input_size`` defaults to the model's (128 in the paper)."""
    probs = predict_probabilities(model, images, input_size=input_size, keep_aspect=keep_aspect)
    masks = probs > threshold
    if postprocess:
        masks = torch.from_numpy(np.stack([postprocess_mask(m) for m in masks.numpy()]))
    return masks


__all__ = [
    "SegmentationUNet", "SegmenterFileError", "as_float_images", "load_segmenter", "postprocess_mask",
    "predict_masks", "predict_probabilities", "read_segmenter_metadata", "resize_images", "save_segmenter",
    "shorter_side_size",
]
