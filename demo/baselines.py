"""Simple baselines measured on the same images as the attention methods: Otsu, k-means, a colour oracle.

They take plain images (``(H, W, 3)`` uint8 or float in [0, 1]) and say where the attention methods stand.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import numpy as np

from .data import RGB, as_float_image

Candidate = TypeVar("Candidate")


def otsu_threshold(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centers)
    total_w, total_m = weight[-1], mean[-1]
    between = (total_m * weight / total_w - mean) ** 2 / np.maximum(weight * (total_w - weight), 1e-12)
    return float(centers[int(np.argmax(between))])


def otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Otsu on grey levels; the minority side is called foreground (objects are the smaller part)."""
    grey = as_float_image(image).mean(-1)
    above = grey > otsu_threshold(grey)
    return above if above.mean() <= 0.5 else ~above


def kmeans_labels(image: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means on RGB values: ``(H, W)`` int labels."""
    from sklearn.cluster import KMeans

    rgb = as_float_image(image)
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(rgb.reshape(-1, 3)).reshape(rgb.shape[:2])


def known_colour_foreground(image: np.ndarray, colours: Iterable[RGB], distance: float) -> np.ndarray:
    """Pixels within ``distance`` (RGB in [0, 1]) of any of the objects' named colours: an oracle that reads
    the caption's colour words."""
    rgb = as_float_image(image)
    mask = np.zeros(rgb.shape[:2], dtype=bool)
    for colour in colours:
        mask |= np.linalg.norm(rgb - np.array(colour, dtype=np.float32), axis=-1) < distance
    return mask


def choose_on_validation(candidates: Sequence[Candidate], score: Callable[[Candidate], float]) -> tuple[Candidate, float]:
    """The candidate with the best validation score (first on ties), and that score."""
    scored = [(score(candidate), candidate) for candidate in candidates]
    best = max(scored, key=lambda item: item[0])
    return best[1], best[0]
