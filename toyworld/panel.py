"""Human-readable panels: image | object mask | shadow+reflection mask | counterfactual."""

from __future__ import annotations

import os

import numpy as np

from .dataset import save_png
from .scene import Scene

_OBJECT_TINTS = np.array([[1.0, 0.3, 0.3], [0.3, 1.0, 0.3], [0.35, 0.5, 1.0]], np.float32)


def panel_array(scene: Scene, gap: int = 4) -> np.ndarray:
    """(H, 4W + 3 gap, 3) float image. Objects get distinct tints; shadows grey, reflections cyan."""
    h, w = scene.image.shape[:2]
    objs = np.zeros((h, w, 3), np.float32)
    for k, o in enumerate(scene.objects):
        objs[o.mask] = _OBJECT_TINTS[k % len(_OBJECT_TINTS)]
    eff = np.zeros((h, w, 3), np.float32)
    eff[scene.shadow_mask] = 0.6
    eff[scene.reflection_mask & ~scene.shadow_mask] = (0.2, 0.8, 0.9)
    eff[scene.reflection_mask & scene.shadow_mask] = (0.4, 0.7, 0.8)
    sep = np.ones((h, gap, 3), np.float32)
    tiles = [scene.image, sep, objs, sep, eff, sep, scene.counterfactual]
    return np.concatenate(tiles, axis=1)


def save_panel(scene: Scene, path: str | os.PathLike) -> None:
    """Write the panel as an RGB PNG (atomically)."""
    save_png(panel_array(scene), path)
