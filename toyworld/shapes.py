"""Resolution-independent shape geometry and object colour fields.

Everything is a function of continuous coordinates in relative units (x, y in [0, 1], y down), so the
same object rasterises to the same layout at 64 px and 256 px. Coverage is binary at pixel centres: no
anti-aliasing, so masks are exactly the pixels an object changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .vocab import COLORS


@dataclass(frozen=True)
class ObjectSpec:
    """Geometry and appearance of one object, in relative units (independent of the output size)."""

    shape: str
    color: str
    cx: float
    cy: float
    radius: float
    rotation: float  # radians
    texture: str  # one of vocab.TEXTURES
    texture_angle: float  # radians, stripe direction / two-tone split direction
    rgb: tuple[float, float, float]  # jittered base colour


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in relative units, each (size, size) float32."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def to_local(spec: ObjectSpec, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World -> object-local coordinates (unit radius, rotation undone)."""
    c, s = np.cos(spec.rotation), np.sin(spec.rotation)
    dx, dy = (x - spec.cx) / spec.radius, (y - spec.cy) / spec.radius
    return (c * dx + s * dy).astype(np.float32), (-s * dx + c * dy).astype(np.float32)


def inside_local(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Binary inside test in local coordinates; shapes roughly fill the unit disc."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (au <= 0.82) & (av <= 0.82)
    if shape == "triangle":  # equilateral, apex up, centroid at origin
        return (v <= 0.5) & (v >= -1.0 + 1.732 * au)
    if shape == "diamond":  # elongated rhombus so it never looks like a rotated square
        return au / 0.68 + av <= 1.0
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    raise ValueError(f"unknown shape {shape!r}")


def coverage(spec: ObjectSpec, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Boolean coverage of the object at world points (x, y)."""
    u, v = to_local(spec, x, y)
    return inside_local(spec.shape, u, v)


@lru_cache(maxsize=None)
def _inside_points(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Local (u, v) samples inside a shape on a fixed dense grid; cached because layouts query it often."""
    ref = np.linspace(-1.0, 1.0, 161, dtype=np.float64)
    v, u = np.meshgrid(ref, ref, indexing="ij")
    inside = inside_local(shape, u, v)
    return u[inside], v[inside]


def extent(spec: ObjectSpec) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of the object in world units, from a fixed dense local sampling."""
    u, v = _inside_points(spec.shape)
    c, s = np.cos(spec.rotation), np.sin(spec.rotation)
    wx = spec.cx + spec.radius * (c * u - s * v)
    wy = spec.cy + spec.radius * (s * u + c * v)
    return float(wx.min()), float(wy.min()), float(wx.max()), float(wy.max())


def secondary_rgb(spec: ObjectSpec) -> np.ndarray:
    """Second tone for textures: darker shade for stripes/dots, lighter tint (or darker for white) for two-tone.

    Always a shade of the named colour, so the caption's colour word stays correct.
    """
    base = np.asarray(spec.rgb, dtype=np.float32)
    if spec.texture == "two_tone":
        if spec.color == "white":
            return base * 0.72
        return 0.55 * base + 0.45
    return base * 0.55


def colour_field(spec: ObjectSpec, x: np.ndarray, y: np.ndarray, light: tuple[float, float]) -> np.ndarray:
    """Object colour at world points (..., 3): base colour, optional texture, and soft shading from the light."""
    u, v = to_local(spec, x, y)
    base = np.asarray(spec.rgb, dtype=np.float32)
    second = secondary_rgb(spec)
    ca, sa = np.cos(spec.texture_angle), np.sin(spec.texture_angle)
    t = u * ca + v * sa
    if spec.texture == "stripes":
        use2 = (np.floor(t / 0.28).astype(np.int64) % 2) == 1
    elif spec.texture == "dots":
        gu = np.mod(u + 10.0, 0.55) - 0.275
        gv = np.mod(v + 10.0, 0.55) - 0.275
        use2 = gu * gu + gv * gv <= 0.14**2
    elif spec.texture == "two_tone":
        use2 = t > 0.0
    else:
        use2 = np.zeros(u.shape, dtype=bool)
    rgb = np.where(use2[..., None], second, base)
    # Lit side slightly brighter: gives objects a gradient so flat colour is not a perfect cue.
    lx, ly = light
    shade = 1.0 + 0.10 * np.clip(-(u * lx + v * ly), -1.0, 1.0)
    return np.clip(rgb * shade[..., None], 0.0, 1.0).astype(np.float32)


def jitter_rgb(color: str, rng: np.random.Generator) -> tuple[float, float, float]:
    """The named colour with a small random jitter so same-colour objects are not bit-identical."""
    base = np.asarray(COLORS[color], dtype=np.float64)
    out = np.clip(base + rng.uniform(-0.04, 0.04, 3), 0.0, 1.0)
    return (float(out[0]), float(out[1]), float(out[2]))
