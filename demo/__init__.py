"""Evaluation of the pack's methods on labelled images, and the main job that runs it on the toy world.

* ``data``: :class:`LabelledImage` (plain arrays: image, caption, per-object masks and names, optional
  shadow/reflection masks and counterfactual), ``from_scene`` for toy-world scenes, ``read_folder`` for a folder
  laid out as the toy-world writer lays it out;
* ``protocol``: :func:`evaluate` scores concept distillation and DiffSeg beside the baselines;
* ``baselines``: Otsu, k-means on RGB, the known-colour oracle;
* ``localization``: whether single words' cross-attention points at their objects;
* ``report``: picture panels and Markdown;
* ``job``: ``python -m segdrop demo`` and ``python -m segdrop evaluate FOLDER``.
"""

from .baselines import choose_on_validation, kmeans_labels, known_colour_foreground, otsu_foreground
from .data import LabelledImage, as_float_image, from_scene, ground_truth_labels, read_folder
from .job import DEFAULT_MODEL, DemoConfig, evaluate_folder, run_demo, toyworld_scenes
from .localization import localization_report, word_maps
from .protocol import EvalSettings, Evaluation, evaluate

__all__ = [
    "DEFAULT_MODEL",
    "DemoConfig",
    "EvalSettings",
    "Evaluation",
    "LabelledImage",
    "as_float_image",
    "choose_on_validation",
    "evaluate",
    "evaluate_folder",
    "from_scene",
    "ground_truth_labels",
    "kmeans_labels",
    "known_colour_foreground",
    "localization_report",
    "otsu_foreground",
    "read_folder",
    "run_demo",
    "toyworld_scenes",
    "word_maps",
]
