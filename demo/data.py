"""Labelled images as plain arrays: what the evaluation protocol scores.

A :class:`LabelledImage` holds numpy arrays and strings only, so any data goes in: toy-world scenes
(:func:`from_scene`), a folder laid out as the toy-world writer lays it out (:func:`read_folder`), or arrays
you build yourself::

    LabelledImage(image=rgb_uint8, caption="a photo of a red circle",
                  object_masks=[circle_mask], object_names=["red circle"])

The last word of an object's name is its object word (the paper's single token); all its words together are
its full name. Both must appear in the caption.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RGB = tuple[float, float, float]


def as_float_image(image: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 or float in [0, 1] -> float32 in [0, 1] (float32 input is returned as it is)."""
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"An image must be (H, W, 3) RGB; got shape {array.shape}.")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"An image must be uint8 or float in [0, 1]; got dtype {array.dtype}.")
    if array.size and (array.max() > 1.0 + 1e-6 or array.min() < -1e-6):
        raise ValueError(f"A float image must be in [0, 1]; got values in [{array.min():g}, {array.max():g}]: divide "
                         "0-255 values by 255 or pass uint8.")
    return array.astype(np.float32, copy=False)


def ground_truth_labels(object_masks: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` visible object masks -> ``(H, W)`` int64: background 0, object ``k`` is ``k + 1``.

    Shadows and reflections are background, as in DiffSeg's protocol.
    """
    masks = np.asarray(object_masks, dtype=bool)
    labels = np.zeros(masks.shape[1:], dtype=np.int64)
    for index, mask in enumerate(masks, start=1):
        labels[mask] = index
    return labels


def _optional_mask(mask: np.ndarray | None, shape: tuple[int, int], what: str) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask).astype(bool)
    if mask.shape != shape:
        raise ValueError(f"The {what} is {mask.shape} but the image is {shape}: give masks at the image's size.")
    return mask


@dataclass
class LabelledImage:
    """One image with its caption and per-object ground truth (plain arrays; see the module notes)."""

    image: np.ndarray
    """``(H, W, 3)`` uint8, or float32 in [0, 1]."""
    caption: str
    object_masks: np.ndarray | Sequence[np.ndarray]
    """``(K, H, W)`` bool, each object's visible pixels (a list of ``(H, W)`` masks is stacked)."""
    object_names: list[str]
    """K names as written in the caption, e.g. ``"red circle"``."""
    object_colours: list[RGB] | None = None
    """Optional RGB in [0, 1] per object: only the known-colour oracle baseline reads it."""
    shadow_mask: np.ndarray | None = None
    reflection_mask: np.ndarray | None = None
    effects_mask: np.ndarray | None = None
    """Optional ``(H, W)`` bool: shadows, reflections, or both, minus object pixels."""
    counterfactual: np.ndarray | None = None
    """Optional ``(H, W, 3)``: the same scene without the objects and their effects."""
    id: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        height, width = as_float_image(self.image).shape[:2]
        masks = np.asarray(self.object_masks).astype(bool)
        if masks.size == 0:
            masks = np.zeros((0, height, width), dtype=bool)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            raise ValueError(
                f"object_masks must be (K, {height}, {width}) to match the image; got {masks.shape}."
            )
        self.object_masks = masks
        self.object_names = [str(name) for name in self.object_names]
        if len(self.object_names) != len(masks):
            raise ValueError(f"{len(masks)} object masks but {len(self.object_names)} object names: give one name each.")
        if self.object_colours is not None and len(self.object_colours) != len(masks):
            raise ValueError(f"{len(masks)} object masks but {len(self.object_colours)} object colours.")
        for what in ("shadow_mask", "reflection_mask", "effects_mask"):
            setattr(self, what, _optional_mask(getattr(self, what), (height, width), what.replace("_", " ")))
        if self.counterfactual is not None and as_float_image(self.counterfactual).shape[:2] != (height, width):
            raise ValueError("The counterfactual must have the image's size.")

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.image.shape[:2])

    @property
    def rgb(self) -> np.ndarray:
        """The image as float32 in [0, 1]."""
        return as_float_image(self.image)

    @property
    def foreground(self) -> np.ndarray:
        """Union of the object masks ``(H, W)`` bool."""
        return self.object_masks.any(axis=0)

    @property
    def labels(self) -> np.ndarray:
        return ground_truth_labels(self.object_masks)


def from_scene(scene) -> LabelledImage:
    """A toy-world ``Scene`` as plain arrays (its float image kept exactly)."""
    from ..toyworld import COLORS

    height, width = scene.image.shape[:2]
    masks = np.stack([obj.mask for obj in scene.objects]) if scene.objects else np.zeros((0, height, width), bool)
    return LabelledImage(
        image=scene.image, caption=scene.caption, object_masks=masks,
        object_names=[obj.name for obj in scene.objects],
        object_colours=[tuple(COLORS[obj.color]) for obj in scene.objects],
        shadow_mask=scene.shadow_mask, reflection_mask=scene.reflection_mask, effects_mask=scene.effects_mask,
        counterfactual=scene.counterfactual, id=str(scene.seed),
    )


def _read_png(path: Path, mask: bool) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (named in metadata.jsonl).")
    with Image.open(path) as picture:
        data = np.asarray(picture.convert("L" if mask else "RGB"))
    return data > 127 if mask else data


def read_folder(root: str | os.PathLike, split: str | None = None) -> list[LabelledImage]:
    """Read a folder laid out as the toy-world writer lays it out (``metadata.jsonl`` + PNGs).

    Each record needs ``image`` and ``caption``, ``object_masks`` (PNG paths, white = object) and ``objects``
    (``[{"name": "red circle"}, ...]``, one per mask; ``color`` is optional). ``effects_mask``,
    ``shadow_mask``, ``reflection_mask`` and ``counterfactual`` are read when present. Paths are relative to
    the folder. ``split``: keep only records whose ``split`` field equals it.
    """
    from ..toyworld import COLORS

    root = Path(root)
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise FileNotFoundError(
            f"{root} has no metadata.jsonl. Lay the folder out as `python -m segdrop.toyworld` writes it: one JSON "
            "record per line with image, caption, object_masks and objects (see segdrop.demo.data.read_folder)."
        )
    items = []
    for number, line in enumerate(meta.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        if split is not None and record.get("split") != split:
            continue
        missing = [key for key in ("image", "caption", "object_masks", "objects") if key not in record]
        if missing:
            raise ValueError(f"{meta}:{number}: the record lacks {', '.join(missing)}.")
        objects = record["objects"]
        colours = [obj.get("color") for obj in objects]
        optional = {
            key: _read_png(root / record[key], mask=key != "counterfactual")
            for key in ("effects_mask", "shadow_mask", "reflection_mask", "counterfactual") if record.get(key)
        }
        items.append(LabelledImage(
            image=_read_png(root / record["image"], mask=False),
            caption=record["caption"],
            object_masks=[_read_png(root / path, mask=True) for path in record["object_masks"]],
            object_names=[obj["name"] for obj in objects],
            object_colours=[tuple(COLORS[c]) for c in colours] if all(c in COLORS for c in colours) else None,
            id=str(record.get("id", number)),
            **optional,
        ))
    if not items:
        raise ValueError(f"{meta} has no records" + (f" of split {split!r}" if split is not None else "") + ".")
    return items
