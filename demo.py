"""The main job: attention capture -> GMM foreground masks and KL-merge segments on held-out toy-world scenes.

Runs with the default model (models/default, trained from scratch by ``training/``) or a user's diffusers SD1.x
folder (``--checkpoint``), compares against simple baselines measured on the same scenes, and writes picture
panels, ``results.md`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import preview, toyworld
from .attention_patch import schedules
from .attention_patch.diffusers_backend import capture_attention
from .attention_patch.tokens import find_word_positions
from .segment import aggregate_self_attention, gmm_binarize, kl_merge_segment, resize_mask
from .segment.metrics import hungarian_miou, iou

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default"


@dataclass
class DemoConfig:
    out: Path
    checkpoint: Path = DEFAULT_MODEL
    scenes: int = 24
    validation_scenes: int = 12
    seed: int = 2024
    t0: int = schedules.DEFAULT_T0
    tau: float = 1.1
    tau_candidates: tuple[float, ...] = (0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.1, 1.5)
    grid: int = 16
    batch: int = 4
    max_batch: int = 40
    panels: int = 8


def scenes_for(split: str, count: int, seed: int, size: int) -> list[toyworld.Scene]:
    return [toyworld.make_scene(toyworld.scene_seed(seed, split, i), size=size) for i in range(count)]


def ground_truth_labels(scene: toyworld.Scene) -> np.ndarray:
    """Background 0, each object's visible pixels its own id (shadows and reflections are background)."""
    labels = np.zeros(scene.object_mask.shape, dtype=np.int64)
    for index, obj in enumerate(scene.objects, start=1):
        labels[obj.mask] = index
    return labels


def to_tensor(scenes: list[toyworld.Scene]) -> torch.Tensor:
    return torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).float()


# --------------------------------------------------------------------------------------------- our methods


WORD_CHOICES = {
    "shape word": lambda obj: [obj.word],
    "object name (colour + shape words summed)": lambda obj: [obj.color, obj.word],
}
"""Which caption words' maps are summed: the paper's single object token, or the object's full name, as the
authors sum several words for "a human with arms and legs"."""
PANEL_CHOICE = "object name (colour + shape words summed)"


def object_word_positions(tokens: list[str], scene: toyworld.Scene, choice: str) -> list[int]:
    words = sorted({word for obj in scene.objects for word in WORD_CHOICES[choice](obj)})
    return find_word_positions(tokens, ", ".join(words))


def concept_attention(bundle, scenes: list[toyworld.Scene], config: DemoConfig):
    """Concept distillation's capture: the caption as prompt, T0 noised timesteps, cross-attention only."""
    captions = [s.caption for s in scenes]
    maps = capture_attention(
        bundle.unet, bundle.codec.encode(to_tensor(scenes)), bundle.encode_prompt(captions),
        schedules.concept_distillation_timesteps(config.t0), add_noise=True,
        alphas_cumprod=bundle.scheduler.alphas_cumprod, seed=config.seed, keep_self=False,
        max_batch=config.max_batch, image_size=scenes[0].image.shape[:2],
    )
    return maps, bundle.tokens(captions)


def foreground_masks(bundle, scenes: list[toyworld.Scene], config: DemoConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Preliminary masks (object words' cross-attention -> GMM at the latent grid -> image size) per word choice."""
    maps, token_lists = concept_attention(bundle, scenes, config)
    size = scenes[0].image.shape[:2]
    out = {}
    for choice in WORD_CHOICES:
        attention = torch.stack([
            maps.cross_attention_for(object_word_positions(tokens, scene, choice))[index]
            for index, (scene, tokens) in enumerate(zip(scenes, token_lists))
        ])
        out[choice] = (resize_mask(gmm_binarize(attention).mask, size).numpy(), attention.numpy())
    return out


def diffseg_aggregates(bundle, scenes: list[toyworld.Scene], config: DemoConfig) -> torch.Tensor:
    """DiffSeg's input: one pass at t = 300 on the clean latent with the empty prompt, self-attention aggregated."""
    latents = bundle.codec.encode(to_tensor(scenes))
    context = bundle.encode_prompt([""] * len(scenes))
    maps = capture_attention(
        bundle.unet, latents, context, [schedules.DIFFSEG_TIMESTEP], add_noise=False, keep_cross=False,
        max_batch=config.max_batch, image_size=scenes[0].image.shape[:2],
    )
    return aggregate_self_attention(maps.self_attn)


def diffseg_labels(aggregated: torch.Tensor, tau: float, config: DemoConfig, size: tuple[int, int]) -> np.ndarray:
    grid = min(config.grid, aggregated.shape[-1])
    return kl_merge_segment(aggregated, grid=grid, tau=tau, tau_mode="raw", out_size=size).labels.numpy()


# --------------------------------------------------------------------------------------------- baselines


def otsu_threshold(values: np.ndarray) -> float:
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    centers = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * centers)
    total_w, total_m = weight[-1], mean[-1]
    between = (total_m * weight / total_w - mean) ** 2 / np.maximum(weight * (total_w - weight), 1e-12)
    return float(centers[int(np.argmax(between))])


def otsu_foreground(scene: toyworld.Scene) -> np.ndarray:
    """Otsu on grey levels; the minority side is called foreground (objects are the smaller part)."""
    grey = scene.image.mean(-1)
    above = grey > otsu_threshold(grey)
    return above if above.mean() <= 0.5 else ~above


def kmeans_labels(scene: toyworld.Scene, k: int, seed: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    pixels = scene.image.reshape(-1, 3)
    return KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(pixels).reshape(scene.image.shape[:2])


def known_colour_foreground(scene: toyworld.Scene, distance: float) -> np.ndarray:
    """Pixels within ``distance`` of the named colours of the scene's objects (an oracle on the caption)."""
    image = scene.image
    mask = np.zeros(image.shape[:2], dtype=bool)
    for obj in scene.objects:
        reference = np.array(toyworld.COLORS[obj.color], dtype=np.float32)
        mask |= np.linalg.norm(image - reference, axis=-1) < distance
    return mask


def choose_on_validation(candidates, score) -> tuple:
    scored = [(score(c), c) for c in candidates]
    best = max(scored, key=lambda item: item[0])
    return best[1], best[0]


# --------------------------------------------------------------------------------------------- the job


def batches(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_demo(config: DemoConfig) -> dict:
    from .training.bundle import load_bundle

    started = time.perf_counter()
    torch.manual_seed(config.seed)
    bundle = load_bundle(config.checkpoint)
    size = int(bundle.image_size)
    test = scenes_for("test", config.scenes, config.seed, size)
    validation = scenes_for("val", config.validation_scenes, config.seed, size)
    config.out.mkdir(parents=True, exist_ok=True)

    foreground: dict[str, tuple[list, list]] = {choice: ([], []) for choice in WORD_CHOICES}
    aggregates, val_aggregates = [], []
    with tqdm(total=2 * len(test) + len(validation), desc="demo: capture + segment", unit="scene") as bar:
        for chunk in batches(test, config.batch):
            for choice, (masks, attention) in foreground_masks(bundle, chunk, config).items():
                foreground[choice][0].extend(masks)
                foreground[choice][1].extend(attention)
            bar.update(len(chunk))
        for scenes, store in ((test, aggregates), (validation, val_aggregates)):
            for chunk in batches(scenes, config.batch):
                store.extend(diffseg_aggregates(bundle, chunk, config))
                bar.update(len(chunk))
    image_hw = (size, size)

    def merged(aggs, tau):
        return [diffseg_labels(agg[None], tau, config, image_hw)[0] for agg in aggs]

    gt_fg = [s.object_mask for s in test]
    gt_labels = [ground_truth_labels(s) for s in test]

    def mean_miou(predictions, scenes):
        return float(np.mean([hungarian_miou(p, ground_truth_labels(s))[1] for p, s in zip(predictions, scenes)]))

    tau_best, tau_val = choose_on_validation(
        config.tau_candidates, lambda tau: mean_miou(merged(val_aggregates, tau), validation)
    )
    seg_labels = merged(aggregates, tau_best)
    paper_labels = merged(aggregates, config.tau)
    k_best, k_val = choose_on_validation(
        range(2, 7), lambda k: mean_miou([kmeans_labels(s, k, config.seed) for s in validation], validation)
    )
    d_best, d_val = choose_on_validation(
        [0.1, 0.15, 0.2, 0.3, 0.4],
        lambda d: float(np.mean([iou(known_colour_foreground(s, d), s.object_mask) for s in validation])),
    )
    kmeans_test = [kmeans_labels(s, k_best, config.seed) for s in test]
    otsu_fg = [otsu_foreground(s) for s in test]
    colour_fg = [known_colour_foreground(s, d_best) for s in test]

    def mean_iou(masks):
        return float(np.mean([iou(m, g) for m, g in zip(masks, gt_fg)]))

    results = {
        "model": str(config.checkpoint),
        "scenes": len(test),
        "image_size": size,
        "foreground_iou": {
            **{f"concept distillation, {choice} (attention + GMM)": mean_iou(masks)
               for choice, (masks, _) in foreground.items()},
            "Otsu on grey levels (minority side)": mean_iou(otsu_fg),
            f"known object colour (oracle, distance {d_best} chosen on validation)": mean_iou(colour_fg),
        },
        "segmentation_miou": {
            f"DiffSeg (KL merge, tau={tau_best} chosen on validation)": mean_miou(seg_labels, test),
            f"DiffSeg (KL merge, paper tau={config.tau})": mean_miou(paper_labels, test),
            f"k-means on RGB (k={k_best} chosen on validation)": mean_miou(kmeans_test, test),
            "Otsu (2 segments)": mean_miou([m.astype(np.int64) for m in otsu_fg], test),
        },
        "diffseg_segments_per_image": float(np.mean([len(np.unique(lbl)) for lbl in seg_labels])),
        "settings": {
            "t0": config.t0, "tau_paper": config.tau, "tau_chosen": tau_best, "tau_validation_miou": tau_val,
            "grid": config.grid,
            "seed": config.seed, "validation_scenes": config.validation_scenes,
            "kmeans_k_validation_miou": k_val, "colour_distance_validation_iou": d_val,
        },
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    shown_masks, shown_attention = foreground[PANEL_CHOICE]
    write_panels(config.out, test[: config.panels], shown_attention, shown_masks, seg_labels, gt_labels)
    (config.out / "results.json").write_text(json.dumps(results, indent=2))
    (config.out / "results.md").write_text(results_markdown(results))
    return results


def write_panels(out: Path, scenes, attention, masks, labels, gt_labels) -> None:
    """One PNG per scene: image | object-word heatmap | GMM mask | DiffSeg segments | ground truth."""
    from PIL import Image

    for index, scene in enumerate(scenes):
        h, w = scene.image.shape[:2]
        image = torch.from_numpy(scene.image)[None]
        tiles = [
            image,
            preview.heatmap(torch.from_numpy(attention[index])[None], (h, w)),
            torch.from_numpy(masks[index]).float()[None, ..., None].expand(1, h, w, 3),
            preview.overlay(image, preview.colorize_labels(torch.from_numpy(labels[index])[None]), 0.6),
            preview.colorize_labels(torch.from_numpy(gt_labels[index])[None]),
        ]
        gap = torch.ones(1, h, 2, 3)
        row = torch.cat([t for tile in tiles for t in (tile, gap)][:-1], dim=2)[0]
        scale = max(1, 256 // h)
        picture = (row.clamp(0, 1).numpy() * 255).astype(np.uint8).repeat(scale, 0).repeat(scale, 1)
        Image.fromarray(picture).save(out / f"scene_{index:02d}.png")


def results_markdown(results: dict) -> str:
    lines = [
        "# SegDrop demo results",
        "",
        f"Model: `{results['model']}`; {results['scenes']} held-out toy-world scenes at "
        f"{results['image_size']}x{results['image_size']}; {results['seconds']} s.",
        "",
        "## Foreground masks (IoU with the union of object masks, mean over scenes)",
        "",
        "| method | IoU |",
        "| --- | --- |",
        *[f"| {name} | {value:.3f} |" for name, value in results["foreground_iou"].items()],
        "",
        "## Zero-shot segmentation (mIoU, per-image Hungarian matching as DiffSeg's protocol)",
        "",
        "| method | mIoU |",
        "| --- | --- |",
        *[f"| {name} | {value:.3f} |" for name, value in results["segmentation_miou"].items()],
        "",
        f"DiffSeg found {results['diffseg_segments_per_image']:.1f} segments per image on average. "
        f"Panels: image | attention of the {PANEL_CHOICE} | its GMM mask | DiffSeg segments | ground truth.",
        "",
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for panels and results")
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL,
                        help="a SegDrop model folder or a diffusers Stable Diffusion 1.x folder")
    parser.add_argument("--scenes", type=int, default=DemoConfig.scenes, help="held-out scenes to evaluate")
    parser.add_argument("--validation-scenes", type=int, default=DemoConfig.validation_scenes)
    parser.add_argument("--seed", type=int, default=DemoConfig.seed)
    parser.add_argument("--t0", type=int, default=DemoConfig.t0, help="concept distillation timesteps (paper: 40)")
    parser.add_argument("--tau", type=float, default=DemoConfig.tau,
                        help="DiffSeg's KL threshold, reported beside the one chosen on the validation split")
    parser.add_argument("--batch", type=int, default=DemoConfig.batch, help="scenes per capture")


def main(args: argparse.Namespace) -> int:
    config = DemoConfig(
        out=args.out, checkpoint=args.checkpoint, scenes=args.scenes, validation_scenes=args.validation_scenes,
        seed=args.seed, t0=args.t0, tau=args.tau, batch=args.batch,
    )
    results = run_demo(config)
    print(results_markdown(results))
    print(f"Wrote {config.out / 'results.md'}, results.json and scene panels.")
    return 0
