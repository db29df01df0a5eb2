"""Procedural backgrounds, sampled as resolution-independent parameters and rendered at any size.

Backgrounds often borrow the object vocabulary's colours (stripes, checkers, patches) so that
"find the red pixels" is not a valid segmentation strategy. Every channel is floored at MIN_LEVEL so
multiplicative shadows and reflections always change a pixel measurably.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import pixel_grid
from .vocab import BACKGROUNDS, COLORS

MIN_LEVEL = 0.15  # lowest value of any background channel


@dataclass(frozen=True)
class BackgroundSpec:
    kind: str
    colors: tuple[tuple[float, float, float], ...]
    params: dict = field(default_factory=dict)
    patches: tuple[dict, ...] = ()  # rectangles in vocabulary colours: (x0, y0, x1, y1, rgb)
    noise: tuple[np.ndarray, ...] = ()  # value-noise lattices (clouds, floor texture)

    @property
    def horizon(self) -> float | None:
        return self.params.get("horizon") if self.kind == "floor" else None


def _random_colour(rng: np.random.Generator, p_vocab: float) -> tuple[float, float, float]:
    """A vocabulary colour (to confuse colour heuristics) or a muted random colour."""
    if rng.random() < p_vocab:
        names = list(COLORS)
        c = np.asarray(COLORS[names[int(rng.integers(len(names)))]])
    else:
        c = rng.uniform(0.1, 0.9, 3)
        c = 0.6 * c + 0.4 * c.mean()
    return (float(c[0]), float(c[1]), float(c[2]))


def sample_background(rng: np.random.Generator, kind: str | None = None) -> BackgroundSpec:
    """Draw background parameters. The rng draw sequence does not depend on the output size."""
    drawn = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    kind = kind or drawn
    if kind not in BACKGROUNDS:
        raise ValueError(f"unknown background {kind!r}; choose from {BACKGROUNDS}")
    colors = tuple(_random_colour(rng, 0.3 if kind != "floor" else 0.15) for _ in range(3))
    params: dict = {
        "angle": float(rng.choice([0.0, np.pi / 2, np.pi / 4, -np.pi / 4, rng.uniform(0, np.pi)])),
        "period": float(rng.uniform(0.07, 0.2)),
        "horizon": float(rng.uniform(0.38, 0.55)),
        "floor_style": str(rng.choice(["plain", "tiles", "planks"])),
    }
    noise = (rng.random((5, 5)), rng.random((9, 9)), rng.random((17, 17)))
    patches: list[dict] = []
    if kind != "floor" or rng.random() < 0.5:
        n = int(rng.choice([0, 0, 1, 2]))
        for _ in range(n):
            w, h = rng.uniform(0.12, 0.5, 2)
            x0, y0 = rng.uniform(-0.1, 1.0 - w * 0.5), rng.uniform(-0.1, 1.0 - h * 0.5)
            name = list(COLORS)[int(rng.integers(len(COLORS)))]
            patches.append({"box": (float(x0), float(y0), float(x0 + w), float(y0 + h)), "rgb": COLORS[name]})
    return BackgroundSpec(kind, colors, params, tuple(patches), noise)


def _value_noise(lattice: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth value noise: smoothstep-interpolated random lattice over the unit square."""
    g = lattice.shape[0] - 1
    fx, fy = np.clip(x * g, 0, g - 1e-6), np.clip(y * g, 0, g - 1e-6)
    ix, iy = fx.astype(np.int64), fy.astype(np.int64)
    tx, ty = fx - ix, fy - iy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    a, b = lattice[iy, ix], lattice[iy, ix + 1]
    c, d = lattice[iy + 1, ix], lattice[iy + 1, ix + 1]
    return (a * (1 - tx) + b * tx) * (1 - ty) + (c * (1 - tx) + d * tx) * ty


def _mix(c0, c1, t: np.ndarray) -> np.ndarray:
    c0, c1 = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0 + (c1 - c0) * t[..., None].astype(np.float32)


def render_background(spec: BackgroundSpec, size: int) -> np.ndarray:
    """(size, size, 3) float32 in [MIN_LEVEL, 1]."""
    x, y = pixel_grid(size)
    c0, c1, c2 = spec.colors
    p = spec.params
    if spec.kind == "vertical_gradient":
        img = _mix(c0, c1, y)
    elif spec.kind == "horizontal_gradient":
        img = _mix(c0, c1, x)
    elif spec.kind in ("stripes", "checkers"):
        ca, sa = np.cos(p["angle"]), np.sin(p["angle"])
        t = (x * ca + y * sa) / p["period"]
        if spec.kind == "stripes":
            sel = np.floor(t).astype(np.int64) % 2
        else:
            s = (-x * sa + y * ca) / p["period"]
            sel = (np.floor(t).astype(np.int64) + np.floor(s).astype(np.int64)) % 2
        img = _mix(c0, c1, sel.astype(np.float32))
    elif spec.kind == "clouds":
        n = sum(w * _value_noise(lat, x, y) for w, lat in zip((0.55, 0.3, 0.15), spec.noise))
        img = _mix(c0, c1, n.astype(np.float32))
    elif spec.kind == "floor":
        h = p["horizon"]
        wall = _mix(c0, np.asarray(c0) * 0.75, y / h)
        depth = np.clip((y - h) / (1 - h), 0, 1)  # 0 at horizon, 1 at bottom
        c1 = 0.35 + 0.65 * np.asarray(c1)  # a light floor keeps shadows and reflections readable
        floor = _mix(c1 * 0.75, c1, depth)
        style = p["floor_style"]
        if style != "plain":
            # Perspective: rows get thicker towards the viewer; tiles also split horizontally.
            row = np.floor(np.sqrt(depth) * 7).astype(np.int64)
            sel = row % 2
            if style == "tiles":
                col = np.floor((x - 0.5) / np.maximum(0.15 + depth, 1e-3) * 6).astype(np.int64)
                sel = (row + col) % 2
            floor = floor * (1.0 - 0.12 * sel[..., None]).astype(np.float32)
        img = np.where((y < h)[..., None], wall, floor)
    else:  # pragma: no cover - sample_background validates
        raise ValueError(spec.kind)
    for patch in spec.patches:
        x0, y0, x1, y1 = patch["box"]
        inside = (x >= x0) & (x < x1) & (y >= y0) & (y < y1)
        if spec.kind == "floor":
            inside &= y < p["horizon"]  # posters on the wall, not on the floor
        img = np.where(inside[..., None], np.asarray(patch["rgb"], np.float32), img)
    return np.clip(img, MIN_LEVEL, 1.0).astype(np.float32)
