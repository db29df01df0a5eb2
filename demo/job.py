"""The commands: ``python -m segdrop demo`` (held-out toy-world scenes) and ``python -m segdrop evaluate``
(a folder of labelled images), both through the same protocol, both writing panels, results.md and
results.json."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from .data import LabelledImage, from_scene, read_folder
from .localization import localization_report
from .protocol import PANEL_CHOICE, EvalSettings, evaluate
from .report import (
    results_markdown,
    write_insertion_panels,
    write_panels,
    write_refinement_panels,
    write_removal_panels,
)

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
LIGHT_BLIND_DRAWS = 8
"""Lights drawn per scene for the insertion table's light-blind references (``insertion.light_blind_renders``)."""


@dataclass
class DemoConfig:
    out: Path = Path("demo_out")
    checkpoint: Path = DEFAULT_MODEL
    scenes: int = 24
    validation_scenes: int = 12
    panels: int = 8
    localization: bool = False
    """Also score single words' cross-attention (``localization_report``)."""
    samples: Path | None = None
    """Also write a PNG row of text-to-image samples here."""
    settings: EvalSettings = field(default_factory=EvalSettings)
    removal: bool = True
    """Also score object removal on held-out scenes with the committed toy removal models."""
    removal_scenes: int = 50
    removal_steps: int = 20
    """DDIM steps of the removal rows: 20 keeps install + demo under 5 minutes on a 2-core CPU (the paper and the
    node use 50; on these models 50 steps move every row by at most 0.4 dB, see the README)."""
    removal_models: Path = DEFAULT_MODEL.parent
    refinement: bool = True
    """Also score concept distillation's stages (M_pre, refined M, segmenters) with the committed toy models."""
    refinement_scenes: int = 50
    refinement_steps: int = 20
    """DDIM steps of the background inpainting (paper: 50; on the toy m′ 50 steps change IoU by at most 0.005)."""
    refinement_models: Path = DEFAULT_MODEL.parent
    insertion: bool = True
    """Also score object insertion (naive paste, without and with bootstrap) with the committed toy models."""
    insertion_scenes: int = 50
    insertion_steps: int = 20
    """DDIM steps of the insertion rows (paper and node: 50; 20 keeps the demo fast, as removal)."""
    insertion_models: Path = DEFAULT_MODEL.parent


def toyworld_scenes(split: str, count: int, seed: int, size: int) -> list[LabelledImage]:
    """Held-out toy-world scenes of a split (seeds training never uses), as plain arrays."""
    from .. import toyworld

    return [from_scene(toyworld.make_scene(toyworld.scene_seed(seed, split, i), size=size)) for i in range(count)]


def run_evaluation(bundle, test: list[LabelledImage], validation: list[LabelledImage], settings: EvalSettings,
                   out: Path, panels: int, localization: bool, header: dict) -> dict:
    """Evaluate, then write panels, results.json and results.md into ``out``; returns the results."""
    started = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=2 * len(test) + len(validation), desc="evaluate: capture + segment", unit="image") as bar:
        evaluation = evaluate(bundle, test, validation, settings, progress=bar.update)
    results = {**header, **evaluation.results}
    if localization:
        results["word_localization"] = localization_report(bundle, test)
    results["seconds"] = round(time.perf_counter() - started, 1)
    masks, attention = evaluation.foreground[PANEL_CHOICE]
    write_panels(out, test[:panels], attention, masks, evaluation.segments)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False))
    (out / "results.md").write_text(results_markdown(results))
    return results


def run_demo(config: DemoConfig) -> dict:
    """The main job: every method and baseline on held-out toy-world scenes (validation scenes tune)."""
    from ..training.bundle import load_bundle

    seed = config.settings.seed
    torch.manual_seed(seed)
    bundle = load_bundle(config.checkpoint)
    size = int(bundle.image_size)
    test = toyworld_scenes("test", config.scenes, seed, size)
    validation = toyworld_scenes("val", config.validation_scenes, seed, size)
    header = {"model": str(config.checkpoint), "data": "toy world, held-out test split"}
    started = time.perf_counter()
    results = run_evaluation(bundle, test, validation, config.settings, config.out, config.panels,
                             config.localization, header)
    if config.refinement:
        results.update(section_results("refinement", run_refinement(config, bundle)))
    if config.removal:
        results.update(section_results("removal", run_removal(config)))
    if config.insertion:
        results.update(section_results("insertion", run_insertion(config)))
    if config.refinement or config.removal or config.insertion:
        results["seconds"] = round(time.perf_counter() - started, 1)
        (config.out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False))
        (config.out / "results.md").write_text(results_markdown(results))
    if config.samples is not None:
        from PIL import Image

        from ..training.sampling import sample_grid

        Image.fromarray(sample_grid(bundle)).save(config.samples)
    return results


def section_results(name: str, section: dict) -> dict:
    """``{name: {row: scores}, name_settings: {scenes, steps}}`` (``{name_settings: {skipped}}`` when skipped): the
    rows at ``results[name]`` as the README documents them, the run's settings beside them."""
    rows = section.get("rows")
    settings = {key: value for key, value in section.items() if key != "rows"}
    return ({name: rows} if rows is not None else {}) | {f"{name}_settings": settings}


def run_refinement(config: DemoConfig, capture_bundle) -> dict:
    """Concept distillation's stage table on held-out toy-world scenes; writes refinement panels."""
    from .refinement import evaluate_refinement, missing_models

    missing = missing_models(config.refinement_models)
    if missing:
        return {"skipped": f"no toy concept-distillation models {', '.join(missing)} in {config.refinement_models}: "
                           "train them with the commands in the README (python -m segdrop.training background / "
                           "segmenter) or pass --refinement-models"}
    items = toyworld_scenes("refinement", config.refinement_scenes, config.settings.seed, int(capture_bundle.image_size))
    with tqdm(total=len(items), desc="evaluate: concept distillation stages", unit="image") as bar:
        table, pictures = evaluate_refinement(capture_bundle, items, config.refinement_models,
                                              steps=config.refinement_steps, seed=config.settings.seed,
                                              t0=config.settings.t0, progress=bar.update)
    write_refinement_panels(config.out, items[: config.panels], pictures)
    return {"scenes": len(items), "steps": config.refinement_steps, "rows": table}


def run_removal(config: DemoConfig) -> dict:
    """The removal table on held-out toy-world scenes with true counterfactuals; writes removal panels."""
    from .removal import TOY_EFFECT_OPTIONS, TOY_MODELS, evaluate_removal, toy_removers

    missing = [name for name in TOY_MODELS if not (config.removal_models / name).is_dir()]
    if missing:
        return {"skipped": f"no toy removal models {', '.join(missing)} in {config.removal_models}: train them with "
                           "the commands in the README (python -m segdrop.training inpaint / removal), copy "
                           "out/<name>/model to <models>/<name> (the LoRA: out/toy_removal_lora/lora) or pass "
                           "--removal-models"}
    card = config.removal_models / "toy_inpaint" / "segdrop_model.json"
    size = int(json.loads(card.read_text()).get("image_size", 64)) if card.is_file() else 64
    items = toyworld_scenes("removal", config.removal_scenes, config.settings.seed, size)
    with tqdm(total=6 * len(items), desc="evaluate: object removal", unit="image") as bar:
        table, outputs = evaluate_removal(toy_removers(config.removal_models, config.removal_steps,
                                                       config.settings.seed), items, progress=bar.update)
    write_removal_panels(config.out, items[: config.panels], outputs, TOY_EFFECT_OPTIONS)
    return {"scenes": len(items), "steps": config.removal_steps, "rows": table}


def run_insertion(config: DemoConfig) -> dict:
    """The insertion table on held-out one-object toy pairs whose factual scene is the target; writes panels."""
    from .insertion import (
        evaluate_insertion,
        insertion_pairs,
        light_blind_renders,
        light_blind_scores,
        missing_models,
        toy_inserters,
    )
    from .removal import TOY_EFFECT_OPTIONS

    missing = missing_models(config.insertion_models)
    if missing:
        return {"skipped": f"no toy insertion models {', '.join(missing)} in {config.insertion_models}: train them "
                           "with the commands in the README (python -m segdrop.training bootstrap / insertion), copy "
                           "out/<name>/model to <models>/<name> or pass --insertion-models"}
    card = config.insertion_models / "toy_insertion" / "segdrop_model.json"
    size = int(json.loads(card.read_text()).get("image_size", 64)) if card.is_file() else 64
    pairs = insertion_pairs("insertion", config.insertion_scenes, config.settings.seed, size)
    inserters = toy_inserters(config.insertion_models, config.insertion_steps, config.settings.seed, TOY_EFFECT_OPTIONS)
    with tqdm(total=len(inserters) * len(pairs), desc="evaluate: object insertion", unit="image") as bar:
        table, outputs = evaluate_insertion(inserters, pairs, progress=bar.update)
    write_insertion_panels(config.out, pairs[: config.panels], outputs["bootstrap"], TOY_EFFECT_OPTIONS)
    renders = light_blind_renders("insertion", config.insertion_scenes, config.settings.seed, size,
                                  draws=LIGHT_BLIND_DRAWS, rng_seed=config.settings.seed)
    return {"scenes": len(pairs), "steps": config.insertion_steps, "rows": table,
            "light_blind": {"draws": LIGHT_BLIND_DRAWS, **light_blind_scores(pairs, renders)}}


def evaluate_folder(folder: Path, checkpoint: Path, out: Path, split: str | None = None,
                    validation_split: str | None = None, settings: EvalSettings | None = None, panels: int = 8,
                    localization: bool = False) -> dict:
    """Score a folder laid out as the toy-world writer lays it out (see ``read_folder``)."""
    from ..training.bundle import load_bundle

    settings = settings or EvalSettings()
    torch.manual_seed(settings.seed)
    test = read_folder(folder, split)
    validation = read_folder(folder, validation_split) if validation_split is not None else []
    if split is None and validation:  # never score the images the settings were tuned on
        tuned_on = {item.id for item in validation}
        test = [item for item in test if item.id not in tuned_on]
        if not test:
            raise ValueError(f"Every record of {folder} is in the validation split {validation_split!r}: give --split "
                             "for the images to score.")
    bundle = load_bundle(checkpoint)
    header = {"model": str(checkpoint), "data": f"{folder}" + (f", split {split}" if split else "")}
    return run_evaluation(bundle, test, validation, settings, out, panels, localization, header)


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = EvalSettings()
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL,
                        help="a SegDrop model folder or a diffusers Stable Diffusion 1.x folder (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--t0", type=int, default=defaults.t0, help="concept distillation timesteps (paper: 40)")
    parser.add_argument("--tau", type=float, default=defaults.tau,
                        help="DiffSeg's KL threshold (paper: 1.1), reported beside the one chosen on validation")
    parser.add_argument("--batch", type=int, default=defaults.batch, help="images per capture")
    parser.add_argument("--panels", type=int, default=8, help="picture panels to write")
    parser.add_argument("--localization", action="store_true",
                        help="also score single words' cross-attention (top-k IoU, pointing)")


def _settings(args: argparse.Namespace) -> EvalSettings:
    return EvalSettings(seed=args.seed, t0=args.t0, tau=args.tau, batch=args.batch)


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for panels and results")
    parser.add_argument("--scenes", type=int, default=DemoConfig.scenes, help="held-out scenes to evaluate")
    parser.add_argument("--validation-scenes", type=int, default=DemoConfig.validation_scenes)
    parser.add_argument("--samples", type=Path, help="also write a PNG row of text-to-image samples here")
    parser.add_argument("--removal", action=argparse.BooleanOptionalAction, default=True,
                        help="score object removal with the committed toy removal models (--no-removal skips it)")
    parser.add_argument("--removal-scenes", type=int, default=DemoConfig.removal_scenes,
                        help="held-out scenes with true counterfactuals for the removal table")
    parser.add_argument("--removal-steps", type=int, default=DemoConfig.removal_steps, help="DDIM steps (paper: 50; the demo's default 20 keeps it fast)")
    parser.add_argument("--removal-models", type=Path, default=DemoConfig.removal_models,
                        help="folder holding toy_inpaint/, toy_removal/, toy_removal_grayed/ (model bundles) and "
                             "toy_removal_lora/ (the LoRA adapter); default: the pack's models/")
    parser.add_argument("--refinement", action=argparse.BooleanOptionalAction, default=True,
                        help="score concept distillation's stages (M_pre, refined mask, segmenters) with the committed "
                             "toy models (--no-refinement skips it)")
    parser.add_argument("--refinement-scenes", type=int, default=DemoConfig.refinement_scenes,
                        help="held-out scenes for the concept-distillation stage table")
    parser.add_argument("--refinement-steps", type=int, default=DemoConfig.refinement_steps,
                        help="DDIM steps of the background inpainting (paper: 50; the demo's default 20 keeps it fast)")
    parser.add_argument("--refinement-models", type=Path, default=DemoConfig.refinement_models,
                        help="folder holding default/ and toy_background_lora/ (m′: the LoRA over the default "
                             "model) and the toy_segmenter_*.safetensors files; default: the pack's models/")
    parser.add_argument("--insertion", action=argparse.BooleanOptionalAction, default=True,
                        help="score object insertion (naive paste, without and with bootstrap) with the committed toy "
                             "models (--no-insertion skips it)")
    parser.add_argument("--insertion-scenes", type=int, default=DemoConfig.insertion_scenes,
                        help="held-out one-object scenes for the insertion table")
    parser.add_argument("--insertion-steps", type=int, default=DemoConfig.insertion_steps,
                        help="DDIM steps (paper: 50; the demo's default 20 keeps it fast)")
    parser.add_argument("--insertion-models", type=Path, default=DemoConfig.insertion_models,
                        help="folder holding toy_insertion/ (bootstrap, stage 1 + 2) and toy_insertion_real/ (real "
                             "pairs only); default: the pack's models/")
    _settings_arguments(parser)


def add_evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", type=Path, help="a folder with metadata.jsonl laid out as the toy-world writer does")
    parser.add_argument("--out", type=Path, default=Path("eval_out"), help="folder for panels and results")
    parser.add_argument("--split", help="score only records of this split (default: all records)")
    parser.add_argument("--validation-split", help="tune tau, k and the colour distance on this split")
    _settings_arguments(parser)


def demo_main(args: argparse.Namespace) -> int:
    config = DemoConfig(out=args.out, checkpoint=args.checkpoint, scenes=args.scenes,
                        validation_scenes=args.validation_scenes, panels=args.panels,
                        localization=args.localization, samples=args.samples, settings=_settings(args),
                        removal=args.removal, removal_scenes=args.removal_scenes, removal_steps=args.removal_steps,
                        removal_models=args.removal_models, refinement=args.refinement,
                        refinement_scenes=args.refinement_scenes, refinement_steps=args.refinement_steps,
                        refinement_models=args.refinement_models, insertion=args.insertion,
                        insertion_scenes=args.insertion_scenes, insertion_steps=args.insertion_steps,
                        insertion_models=args.insertion_models)
    results = run_demo(config)
    print(results_markdown(results))
    print(f"Wrote {config.out / 'results.md'}, results.json and picture panels.")
    return 0


def evaluate_main(args: argparse.Namespace) -> int:
    results = evaluate_folder(args.folder, args.checkpoint, args.out, args.split, args.validation_split,
                              _settings(args), args.panels, args.localization)
    print(results_markdown(results))
    print(f"Wrote {args.out / 'results.md'}, results.json and picture panels.")
    return 0
