"""The closed vocabulary of the toy world: shapes, colours, background kinds and caption words.

Captions are built only from these words so a tiny text encoder can use a fixed word-level tokenizer.
"""

from __future__ import annotations

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "cross")

# Reference RGB in [0, 1]. Chosen to be distinct at 64 px; objects jitter slightly around these.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.12, 0.12),
    "green": (0.15, 0.68, 0.22),
    "blue": (0.15, 0.32, 0.90),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.56, 0.22, 0.76),
    "orange": (1.00, 0.55, 0.10),
    "white": (0.95, 0.95, 0.95),
}

BACKGROUNDS: tuple[str, ...] = (
    "vertical_gradient",
    "horizontal_gradient",
    "stripes",
    "checkers",
    "clouds",
    "floor",
)

TEXTURES: tuple[str, ...] = ("plain", "stripes", "dots", "two_tone")

FUNCTION_WORDS: tuple[str, ...] = ("a", "photo", "of", "and")


def object_name(color: str, shape: str) -> str:
    """The noun phrase used in captions, e.g. "red circle"."""
    return f"{color} {shape}"


def make_caption(names: list[str]) -> str:
    """Systematic caption: objects in drawing order joined by "and" (no punctuation, closed vocabulary)."""
    if not names:
        return "a photo"
    return "a photo of " + " and ".join(f"a {n}" for n in names)


def vocabulary() -> list[str]:
    """Every word that can appear in a caption (lowercase, sorted, unique)."""
    return sorted(set(FUNCTION_WORDS) | set(COLORS) | set(SHAPES))
