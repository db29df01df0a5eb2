"""Toy world: procedurally generated scenes with exact ground truth for segmentation and object removal.

Scenes hold shapes from a small vocabulary over varied backgrounds; every object casts a shadow and, on
floors, a faint reflection. Ground truth (visible masks, effect masks, all-object and per-object
counterfactuals) lets concept distillation, DiffSeg and ObjectDrop be checked exactly, and the
systematic captions make it training data for a tiny text-to-image model.
"""

from .dataset import (
    chosen_object,
    load_png,
    object_effects,
    read_dataset,
    save_png,
    scene_seed,
    write_dataset,
    write_object_pairs,
)
from .panel import panel_array, save_panel
from .scene import Layout, Scene, SceneObject, make_scene, make_scenes, render_layout, sample_layout
from .vocab import BACKGROUNDS, COLORS, SHAPES, TEXTURES, make_caption, vocabulary

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "TEXTURES",
    "Layout",
    "Scene",
    "SceneObject",
    "chosen_object",
    "load_png",
    "make_caption",
    "make_scene",
    "make_scenes",
    "panel_array",
    "object_effects",
    "read_dataset",
    "render_layout",
    "sample_layout",
    "save_panel",
    "save_png",
    "scene_seed",
    "vocabulary",
    "write_dataset",
    "write_object_pairs",
]
