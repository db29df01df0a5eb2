"""Scene sampling and compositing with exact ground truth for segmentation and counterfactual removal.

Compositing model (what makes the invariants exact):

    image = objects drawn in order over  background * prod_j shadow_j * prod_j reflection_j

Shadows and reflections are *multiplicative* factors that are exactly 1.0 outside their region, so
removing any subset of objects changes exactly the pixels they or their effects cover (multiplying by
1.0 is bit-exact) and nothing else. Backgrounds are floored at MIN_LEVEL and every factor darkens every
channel by >= 10 %, so each covered effect pixel changes by clearly more than 1e-3. Object colours are
nudged at the rare pixels where they would coincide with what is behind them, so every visible object
pixel changes too. Hence ``image != counterfactual`` exactly on object ∪ shadow ∪ reflection, both for
all objects and for each single object (``object_counterfactuals[i]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .backgrounds import BackgroundSpec, render_background, sample_background
from .shapes import ObjectSpec, colour_field, coverage, extent, jitter_rgb, pixel_grid
from .vocab import COLORS, SHAPES, TEXTURES, make_caption, object_name

SHADOW_FACTOR = 0.55  # multiplicative darkening under a shadow
REF_SIZE = 64  # layout checks (visibility under occlusion) run at this fixed size, so layouts never depend on output size
MIN_VISIBLE_FRACTION = 0.5
CHANGE_EPS = 2e-3  # object pixels are nudged until they differ from what is behind by more than this

_ROTATION_RANGE = {"circle": np.pi, "square": 0.3, "triangle": 0.35, "diamond": 0.25, "cross": 0.3}


@dataclass(frozen=True)
class Layout:
    """Everything random about a scene, in relative units: rendering it at any size is deterministic."""

    background: BackgroundSpec
    objects: tuple[ObjectSpec, ...]
    light: tuple[float, float]  # unit vector pointing from the scene towards the light (image plane, y down)
    shadow: dict  # drop-shadow offset/shear (flat backgrounds) or floor projection parameters


@dataclass
class SceneObject:
    """One object's identity and its ground-truth masks (visible part, its own shadow and reflection)."""

    shape: str
    color: str
    word: str
    name: str
    texture: str
    mask: np.ndarray  # (H, W) bool, visible part (occluded pixels excluded)
    full_mask: np.ndarray  # (H, W) bool, whole silhouette as if nothing occluded it
    shadow_mask: np.ndarray  # (H, W) bool, this object's shadow, minus all object pixels
    reflection_mask: np.ndarray  # (H, W) bool, this object's reflection, minus all object pixels
    spec: ObjectSpec

    def __getitem__(self, key: str):
        """Dict-style access (``obj["mask"]``) for code that treats objects as records."""
        return getattr(self, key)

    @property
    def removal_mask(self) -> np.ndarray:
        """Pixels that change when this object is removed: visible part ∪ its shadow ∪ its reflection."""
        return self.mask | self.shadow_mask | self.reflection_mask

    def to_record(self) -> dict:
        return {"name": self.name, "shape": self.shape, "color": self.color, "word": self.word}


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) float32 in [0, 1]
    caption: str
    objects: list[SceneObject]
    object_mask: np.ndarray  # union of visible object masks
    shadow_mask: np.ndarray
    reflection_mask: np.ndarray
    effects_mask: np.ndarray  # (shadow ∪ reflection) minus objects
    counterfactual: np.ndarray  # all objects and all their effects removed (== background)
    background: np.ndarray
    object_counterfactuals: list[np.ndarray]  # [i]: scene without object i and its effects
    seed: int | None
    size: int
    background_kind: str
    layout: Layout = field(repr=False)

    def counterfactual_without(self, i: int) -> np.ndarray:
        """The scene re-rendered without object i and its shadow/reflection (others stay, occluded parts revealed)."""
        return self.object_counterfactuals[i]

    @property
    def removal_mask(self) -> np.ndarray:
        """Pixels where ``image`` and ``counterfactual`` differ: objects ∪ shadows ∪ reflections."""
        return self.object_mask | self.effects_mask


# ----------------------------------------------------------------------------------------------- sampling


def _sample_object(
    rng: np.random.Generator, placed: list[ObjectSpec], floor: bool, horizon: float, small: bool
) -> tuple[ObjectSpec, bool]:
    """One candidate object; returns (spec, wants_overlap)."""
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    if placed and rng.random() < 0.25:  # same colour as an existing object: colour alone cannot separate them
        color = placed[int(rng.integers(len(placed)))].color
    else:
        color = list(COLORS)[int(rng.integers(len(COLORS)))]
    texture = str(rng.choice(TEXTURES, p=[0.5, 0.17, 0.16, 0.17]))
    radius = float(rng.uniform(0.08, 0.14) if small else rng.uniform(0.09, 0.17))
    rotation = float(rng.uniform(-1, 1) * _ROTATION_RANGE[shape])
    texture_angle = float(rng.uniform(0, np.pi))
    rgb = jitter_rgb(color, rng)
    overlap = bool(placed) and rng.random() < 0.35
    if overlap:  # partial occlusion: place next to an existing object, closer than the sum of radii
        other = placed[int(rng.integers(len(placed)))]
        phi = rng.uniform(0, 2 * np.pi)
        dist = rng.uniform(0.6, 0.95) * (radius + other.radius)
        cx, cy = other.cx + dist * np.cos(phi), other.cy + dist * np.sin(phi)
    else:
        cx = rng.uniform(radius, 1 - radius)
        lo = horizon + 0.02 if floor else radius
        cy = rng.uniform(lo, max(lo, 0.95 - radius)) if floor else rng.uniform(radius, 1 - radius)
    spec = ObjectSpec(shape, color, float(cx), float(cy), radius, rotation, texture, texture_angle, rgb)
    return spec, overlap


def _acceptable(specs: list[ObjectSpec], floor: bool, horizon: float) -> bool:
    """In frame, standing on the floor if there is one, and every object still mostly visible."""
    for s in specs:
        x0, y0, x1, y1 = extent(s)
        if x0 < 0.01 or y0 < 0.01 or x1 > 0.99 or y1 > 0.99:
            return False
        if floor and not (horizon + 0.08 <= y1 <= 0.96):
            return False
    x, y = pixel_grid(REF_SIZE)
    covers = [coverage(s, x, y) for s in specs]
    above = np.zeros_like(covers[0])
    for c in reversed(covers):
        total = int(c.sum())
        if total < 12 or (c & ~above).sum() < MIN_VISIBLE_FRACTION * total:
            return False
        above |= c
    return True


def _base_y(spec: ObjectSpec) -> float:
    return extent(spec)[3]


def light_angle(rng: np.random.Generator, floor: bool) -> float:
    """The light's angle in the image plane (y down): any direction over flat backgrounds; from above-front over a
    floor, so shadows fall back towards the horizon and sideways."""
    theta = rng.uniform(0, 2 * np.pi)
    if floor:
        theta = rng.uniform(np.pi * 1.15, np.pi * 1.85)  # y up in the image (negative)
    return float(theta)


def _shear_side(light: tuple[float, float]) -> float:
    """The sideways direction of floor shadows: away from the light's horizontal component."""
    return -1.0 if light[0] > 0 else 1.0


def relit(layout: Layout, theta: float) -> Layout:
    """The same layout under a light at angle ``theta`` (floor shadows lean to the matching side, same length):
    what the scene would look like had the light come from elsewhere."""
    light = (float(np.cos(theta)), float(np.sin(theta)))
    shadow = dict(layout.shadow, floor_shear=_shear_side(light) * abs(layout.shadow["floor_shear"]))
    return replace(layout, light=light, shadow=shadow)


def sample_layout(
    rng: np.random.Generator, n_objects: int | None = None, background: str | None = None
) -> Layout:
    """Draw a full scene description. The draw order is fixed, so a seed maps to one layout at every size."""
    bg = sample_background(rng, background)
    drawn_n = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    n = drawn_n if n_objects is None else int(n_objects)
    if not 0 <= n <= 3:
        raise ValueError("n_objects must be in 0..3")
    floor = bg.kind == "floor"
    horizon = bg.horizon if floor else 0.0
    theta = light_angle(rng, floor)
    light = (float(np.cos(theta)), float(np.sin(theta)))
    side = _shear_side(light)
    shadow = {
        "offset": float(rng.uniform(0.03, 0.06)),
        "shear": float(rng.uniform(-0.3, 0.3)),
        "floor_k": float(-rng.uniform(0.3, 0.55)),
        "floor_shear": float(side * rng.uniform(0.9, 1.6)),
    }
    specs: list[ObjectSpec] = []
    for _ in range(n):
        for _attempt in range(80):
            cand, _ = _sample_object(rng, specs, floor, horizon, small=n == 3)
            trial = specs + [cand]
            if floor:  # nearer objects (lower base) are drawn later and occlude farther ones
                trial.sort(key=_base_y)
            if _acceptable(trial, floor, horizon):
                specs = trial
                break
    return Layout(bg, tuple(specs), light, shadow)


# ----------------------------------------------------------------------------------------------- rendering


def _shadow_region(spec: ObjectSpec, layout: Layout, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pixels inside the object's cast shadow (before occlusion by objects)."""
    sh = layout.shadow
    if layout.background.kind == "floor":
        base, k = _base_y(spec), sh["floor_k"]
        height = (y - base) / k  # height above the floor of the object point that casts onto (x, y)
        src_x, src_y = x - sh["floor_shear"] * height, base - height
        return (height >= 0) & (y > layout.background.horizon) & coverage(spec, src_x, src_y)
    lx, ly = layout.light
    dx, dy = -lx * sh["offset"], -ly * sh["offset"]
    src_y = y - dy
    src_x = x - dx - sh["shear"] * (src_y - spec.cy)
    return coverage(spec, src_x, src_y)


def _reflection(
    spec: ObjectSpec, layout: Layout, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(region, multiplicative factor (H, W, 3)) of the faint mirrored copy below the object's base (floors only)."""
    ones = np.ones(x.shape + (3,), np.float32)
    if layout.background.kind != "floor":
        return np.zeros(x.shape, bool), ones
    x0, y0, x1, base = extent(spec)
    length = 0.6 * (base - y0)
    mirror_y = 2 * base - y
    below = (y > base) & (y - base <= length)
    region = below & coverage(spec, x, mirror_y)
    col = colour_field(spec, x, mirror_y, layout.light)
    fade = np.clip((y - base) / max(length, 1e-6), 0, 1)
    alpha = (0.55 - 0.3 * fade)[..., None]  # fades from 0.55 to 0.25 but never reaches 0
    # Tinted darkening: channels the object lacks drop most, so the floor takes on the object's hue;
    # capping the tint at 0.75 makes every channel drop by >= 6 %, so covered pixels always change.
    factor = 1.0 - alpha * (1.0 - np.minimum(col, 0.75))
    return region, np.where(region[..., None], factor, ones).astype(np.float32)


def _compose(
    background: np.ndarray,
    factors: list[np.ndarray],
    covers: list[np.ndarray],
    colours: list[np.ndarray],
    keep: list[int],
) -> np.ndarray:
    """Background times the kept objects' effect factors, then the kept objects painted in order."""
    img = background.copy()
    for j in keep:
        img = img * factors[j]
    for j in keep:
        img = np.where(covers[j][..., None], colours[j], img)
    return img.astype(np.float32)


def _nudge(colour: np.ndarray, cover: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
    """Shift object colours where they (almost) equal what would be seen without the object."""

    def bad(c: np.ndarray) -> np.ndarray:
        out = np.zeros(cover.shape, bool)
        for r in refs:
            out |= np.abs(c - r).max(axis=-1) <= CHANGE_EPS
        return out & cover

    todo = bad(colour)
    for delta in (0.06, -0.06, 0.12, -0.12, 0.25, -0.25):
        if not todo.any():
            break
        cand = np.clip(colour + delta, 0.0, 1.0).astype(np.float32)
        fixed = todo & ~bad(cand)
        colour = np.where(fixed[..., None], cand, colour)
        todo &= ~fixed
    return colour


def render_layout(layout: Layout, size: int, seed: int | None = None) -> Scene:
    """Rasterise a layout at ``size`` x ``size`` with all masks and counterfactuals."""
    x, y = pixel_grid(size)
    background = render_background(layout.background, size)
    specs = list(layout.objects)
    n = len(specs)
    covers = [coverage(s, x, y) for s in specs]
    shadows = [_shadow_region(s, layout, x, y) for s in specs]
    refl = [_reflection(s, layout, x, y) for s in specs]
    factors = []
    for i in range(n):
        f = np.where(shadows[i][..., None], np.float32(SHADOW_FACTOR), np.float32(1.0)).astype(np.float32)
        factors.append((f * refl[i][1]).astype(np.float32))  # exact 1.0 outside both regions
    colours = [colour_field(s, x, y, layout.light) for s in specs]
    for i in range(n):  # in drawing order: objects below i are already final
        # What shows at object i's visible pixels once i is removed: effects of *all* other objects
        # (later ones too), then only the earlier objects on top (later ones never cover i's visible part).
        eff = background.copy()
        for j in range(n):
            if j != i:
                eff = eff * factors[j]
        behind = eff.astype(np.float32)
        for j in range(i):
            behind = np.where(covers[j][..., None], colours[j], behind)
        colours[i] = _nudge(colours[i], covers[i], [background, behind.astype(np.float32)])

    everything = list(range(n))
    image = _compose(background, factors, covers, colours, everything)
    object_mask = np.zeros((size, size), bool)
    for c in covers:
        object_mask |= c
    objects = []
    for i, s in enumerate(specs):
        above = np.zeros((size, size), bool)
        for c in covers[i + 1 :]:
            above |= c
        objects.append(
            SceneObject(
                shape=s.shape,
                color=s.color,
                word=s.shape,
                name=object_name(s.color, s.shape),
                texture=s.texture,
                mask=covers[i] & ~above,
                full_mask=covers[i],
                shadow_mask=shadows[i] & ~object_mask,
                reflection_mask=refl[i][0] & ~object_mask,
                spec=s,
            )
        )
    shadow_mask = np.zeros((size, size), bool)
    reflection_mask = np.zeros((size, size), bool)
    for o in objects:
        shadow_mask |= o.shadow_mask
        reflection_mask |= o.reflection_mask
    return Scene(
        image=image,
        caption=make_caption([o.name for o in objects]),
        objects=objects,
        object_mask=object_mask,
        shadow_mask=shadow_mask,
        reflection_mask=reflection_mask,
        effects_mask=(shadow_mask | reflection_mask) & ~object_mask,
        counterfactual=background.copy(),
        background=background,
        object_counterfactuals=[
            _compose(background, factors, covers, colours, [j for j in everything if j != i])
            for i in range(n)
        ],
        seed=seed,
        size=size,
        background_kind=layout.background.kind,
        layout=layout,
    )


def make_scene(
    seed: int, size: int = 64, n_objects: int | None = None, background: str | None = None
) -> Scene:
    """A deterministic scene: same seed (and options) -> same layout at every size, identical arrays at a given size."""
    if size < 16:
        raise ValueError("size must be >= 16")
    rng = np.random.default_rng(seed)
    return render_layout(sample_layout(rng, n_objects, background), size, seed)


def make_scenes(seed: int, count: int, size: int = 64, **kwargs) -> list[Scene]:
    """``count`` scenes with seeds derived from ``seed`` (see ``dataset.scene_seed``)."""
    from .dataset import scene_seed

    return [make_scene(scene_seed(seed, "scenes", i), size, **kwargs) for i in range(count)]
