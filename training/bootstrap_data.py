"""ObjectDrop insertion data by bootstrap supervision (Winter et al., ECCV 2024, §5.1 and Appendix B).

    python -m segdrop.training bootstrap --source IMAGES_WITH_MASKS --removal_model models/toy_removal --out BOOT

Procedure, per image x with a foreground (object) mask M:

1. area filter: keep when ``min_area <= mean(M) <= max_area`` (paper: 5 %-50 % of the image);
2. bottom-border filter: keep when M covers at most ``max_bottom_touch`` of the image's bottom row (paper: 20 %;
   an object standing on the lower border would have its shadow or reflection cut off);
3. the REMOVAL model removes the object and its effects: z = removal(x, M) (``conditioned_sample``, DDIM
   ``--steps``, eta 0, empty prompt, at the model's image size; ``gray_masked`` is read from the bundle card),
   then pasted into x through the effect-aware mask (object ∪ changed region, grown, feathered) as
   SegDrop_ObjectDropRemove does (``--removal_composite effects``, default; ``none`` keeps the raw output, which
   regenerates every pixel, so y would differ from x everywhere and the effect filter would count that noise);
4. the object is pasted back without its effects: y = M·x + (1 - M)·z (M binary, so y is exact in uint8);
5. effect filter: a pixel changed when mean |x - z| over RGB in [0, 1] exceeds ``effect_threshold`` (default 0.08,
   ``removal/effect_mask.py`` DEFAULT_THRESHOLD); the pair is kept when the changed pixels OUTSIDE M dilated by
   ``effect_dilate`` px (default 2, so the object's own edge and the VAE's blur along it do not count) cover at least
   ``min_effect_area`` of the image (default 0.005 = 0.5 %, e.g. 1,311 px at 512x512, about 1 px at 16x16). A
   pair without a visible effect teaches insertion nothing beyond copy-paste.
6. the insertion model trains on (y, M) -> x (``read_bootstrap``).

Sources (``--source``): a folder with ``metadata.jsonl`` whose records have "id", "image" and a mask key
(``--mask_key``, default "mask"): a toy-world dataset (``toyworld.write_dataset``: "mask" is the union of the object
masks) or a mask folder (``distill/dataset.py``). On a toy world ONLY the factual image and its mask are read, never
"counterfactual", "background", "effects_mask" or "object_masks": the point of bootstrapping is that unpaired
images suffice, and using the renderer's ground truth would leak it into the insertion data. ``--split`` keeps the
records of one split (toy worlds have "train"/"test"). Images of another size than the model's are center-cropped
to a square and resized to the model size (bicubic; masks nearest) before filtering, so the filters judge the
training example itself.

Output, laid out like ``counterfactual-data``'s (``read_triplets(OUT)`` reads the kept pairs as F/G/M)::

    OUT/metadata.jsonl           the KEPT items, source order: {"id", "factual", "counterfactual", "mask", "composite",
                                 "width", "height", "mask_source": "file", "source": {...}, "stats": {...}}
    OUT/factual/<id>.png         x (model size, RGB)
    OUT/counterfactual/<id>.png  z, the removal model's output
    OUT/masks/<id>.png           M (L, 0/255)
    OUT/composite/<id>.png       y = M·x + (1 - M)·z
    OUT/records/<id>.json        every processed item, kept or not ("status": "kept" | "area" | "bottom" | "effect",
                                 its statistics and the settings that judged it), written last: it marks the item done
    OUT/report.json              how many items each filter kept (input, after_area, after_bottom, after_effect)
    OUT/bootstrap.toml           the effective settings

Resumable: an item whose record exists (with the same settings) and whose files exist is skipped; delete a record
to recompute that item. The removal seed of an item is drawn from ``--seed`` and its id, so a resumed or resharded
run writes the same files. Under ``accelerate launch`` process k takes items k::N; the main process merges the
per-item records into ``metadata.jsonl`` and ``report.json`` once all processes are done.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..toyworld.dataset import save_png
from .loop import ConfigError, dumps_strict, setup_logging, write_text_atomic
from .settings import dump_toml, recipe_parser, resolve_config

logger = logging.getLogger("segdrop.training.bootstrap_data")

METADATA = "metadata.jsonl"
REPORT = "report.json"
SETTINGS_FILE = "bootstrap.toml"
SUBDIRS = ("factual", "counterfactual", "masks", "composite", "records")
FORBIDDEN_MASK_KEYS = ("image", "counterfactual", "background", "effects_mask", "object_masks")
"""Keys that are not an object mask of the factual image (toy-world ground truth must never be read)."""
STATUSES = ("area", "bottom", "effect", "kept")


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class BootstrapConfig:
    source: str = ""
    out: str = ""
    removal_model: str = ""
    mask_key: str = "mask"
    split: str = ""
    min_area: float = 0.05
    max_area: float = 0.50
    max_bottom_touch: float = 0.20
    effect_threshold: float = 0.08
    effect_dilate: int = 2
    min_effect_area: float = 0.005
    removal_composite: str = "effects"
    composite_min_area: int = 16
    composite_grow: int = 4
    composite_feather: int = 4
    steps: int = 50
    seed: int = 0
    limit: int = 0


HELPS = {
    "source": "folder with metadata.jsonl records holding 'image' and the mask key (toy-world dataset or mask folder)",
    "out": "folder to write the bootstrap dataset into (resumable: rerun the same command to finish)",
    "removal_model": "removal bundle (python -m segdrop.training removal), e.g. models/toy_removal",
    "mask_key": "record key of the object mask (toy world: 'mask' = union of the object masks)",
    "split": "keep only records of this split ('' = all)",
    "min_area": "keep images whose mask covers at least this fraction of the image (paper 0.05)",
    "max_area": "... and at most this fraction (paper 0.50)",
    "max_bottom_touch": "keep images whose mask covers at most this fraction of the bottom image row (paper 0.20)",
    "effect_threshold": "a pixel changed when mean |x - z| over RGB in [0, 1] exceeds this",
    "effect_dilate": "the object mask is dilated by this many px before counting changed pixels outside it",
    "min_effect_area": "keep pairs whose changed pixels outside the dilated mask cover at least this fraction of the image",
    "removal_composite": "effects: paste the removal output into x through the effect-aware mask (object + changed "
                         "region, grown, feathered), as ObjectDropRemove does, so z is exactly x away from the object "
                         "and its effects; none: the raw, fully regenerated output",
    "composite_min_area": "effect-aware mask: changed pieces smaller than this many px are dropped (node default 16)",
    "composite_grow": "effect-aware mask: px the object + changed region is grown by (node default 4)",
    "composite_feather": "effect-aware mask: px of feathered edge (node default 4)",
    "steps": "DDIM steps of the removal model",
    "seed": "base seed; each item's removal seed is drawn from it and the item id",
    "limit": "use only the first N source records (0 = all)",
}


def check_config(config: BootstrapConfig) -> None:
    if not config.source or not config.out or not config.removal_model:
        raise ConfigError("give --source FOLDER, --removal_model BUNDLE and --out FOLDER")
    if Path(config.out).resolve() == Path(config.source).resolve():
        raise ConfigError("--out must differ from --source")
    if not 0.0 <= config.min_area <= config.max_area <= 1.0:
        raise ConfigError(f"need 0 <= min_area ({config.min_area}) <= max_area ({config.max_area}) <= 1")
    if not 0.0 <= config.max_bottom_touch <= 1.0:
        raise ConfigError(f"max_bottom_touch {config.max_bottom_touch} must be in [0, 1]")
    if not 0.0 < config.effect_threshold < 1.0:
        raise ConfigError(f"effect_threshold {config.effect_threshold} must be in (0, 1) (mean |x - z| in [0, 1] units)")
    if config.effect_dilate < 0:
        raise ConfigError(f"effect_dilate {config.effect_dilate} must be >= 0")
    if not 0.0 <= config.min_effect_area < 1.0:
        raise ConfigError(f"min_effect_area {config.min_effect_area} must be a fraction of the image in [0, 1)")
    if config.removal_composite not in ("effects", "none"):
        raise ConfigError(f"removal_composite {config.removal_composite!r} must be 'effects' or 'none'")
    if min(config.composite_min_area, config.composite_grow, config.composite_feather) < 0:
        raise ConfigError("composite_min_area, composite_grow and composite_feather must be >= 0")
    if config.steps < 1:
        raise ConfigError(f"steps {config.steps} must be >= 1")
    if config.limit < 0:
        raise ConfigError(f"limit {config.limit} must be >= 0")
    if config.mask_key in FORBIDDEN_MASK_KEYS:
        raise ConfigError(f"--mask_key {config.mask_key!r} is not an object mask of the factual image; bootstrapping "
                          "uses only the image and its object mask (toy world: 'mask')")


def judging_settings(config: BootstrapConfig) -> dict:
    """The settings an item's record depends on: a record judged under other settings is recomputed."""
    keys = ("removal_model", "mask_key", "min_area", "max_area", "max_bottom_touch", "effect_threshold",
            "effect_dilate", "min_effect_area", "removal_composite", "composite_min_area", "composite_grow",
            "composite_feather", "steps", "seed")
    out = {k: getattr(config, k) for k in keys}
    out["removal_model"] = str(Path(config.removal_model).resolve())
    return out


# ----------------------------------------------------------------------------------------------- filters


def area_fraction(mask: np.ndarray) -> float:
    """Fraction of the image the (H, W) mask covers."""
    return float(np.asarray(mask, bool).mean())


def bottom_touch_fraction(mask: np.ndarray) -> float:
    """Fraction of the bottom image row that the (H, W) mask covers."""
    return float(np.asarray(mask, bool)[-1].mean())


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of an (H, W) mask by a (2r+1)^2 square (no wrap-around at the borders)."""
    mask = np.asarray(mask, bool)
    if radius <= 0:
        return mask.copy()
    h, w = mask.shape
    padded = np.pad(mask, radius)
    out = np.zeros_like(mask)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + h, dx:dx + w]
    return out


def changed_pixels(factual: np.ndarray, background: np.ndarray, threshold: float = 0.08) -> np.ndarray:
    """Bool (H, W): mean |x - z| over RGB, in [0, 1] units, above ``threshold``."""
    x = np.asarray(factual, np.float32)[..., :3] / 255.0
    z = np.asarray(background, np.float32)[..., :3] / 255.0
    return np.abs(x - z).mean(-1) > threshold


def effect_area_fraction(factual: np.ndarray, background: np.ndarray, mask: np.ndarray, threshold: float = 0.08,
                         dilate: int = 2) -> float:
    """Fraction of the image that changed between x and z OUTSIDE the object mask dilated by ``dilate`` px."""
    changed = changed_pixels(factual, background, threshold) & ~dilate_mask(mask, dilate)
    return float(changed.mean())


def effect_composite(factual: np.ndarray, removed: np.ndarray, mask: np.ndarray, config: BootstrapConfig) -> np.ndarray:
    """The removal output pasted into x through the effect-aware mask (``removal.effect_mask``: object ∪ pixels that
    changed by more than ``effect_threshold``, grown and feathered), as SegDrop_ObjectDropRemove composites: away
    from the object and its effects z is exactly x, so the effect filter and the insertion model see only what the
    removal took away, not the model's regeneration noise over the whole image."""
    from ..removal.effect_mask import paste_effects

    return paste_effects(factual, removed, mask, config.effect_threshold, config.composite_min_area,
                         config.composite_grow, config.composite_feather)


def composite(factual: np.ndarray, background: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """y = M·x + (1 - M)·z for a binary mask: the object pasted onto the removal output, without its effects."""
    return np.where(np.asarray(mask, bool)[..., None], factual, background).astype(np.uint8)


def prefilter(mask: np.ndarray, config: BootstrapConfig) -> tuple[str | None, dict]:
    """(failed filter or None, stats) for the mask-only filters: area, then bottom-border touch."""
    stats = {"area": area_fraction(mask), "bottom_touch": bottom_touch_fraction(mask)}
    if not config.min_area <= stats["area"] <= config.max_area:
        return "area", stats
    if stats["bottom_touch"] > config.max_bottom_touch:
        return "bottom", stats
    return None, stats


# ----------------------------------------------------------------------------------------------- sources


def list_sources(config: BootstrapConfig) -> list[dict]:
    """``[{"id", "image", "mask"}]`` (absolute paths) of the source; only the image and the mask key are used."""
    root = Path(config.source).expanduser().resolve()
    meta = root / METADATA
    if not meta.is_file():
        raise ConfigError(f"{root} has no {METADATA}: give a toy-world dataset (python -m segdrop.toyworld) or a mask "
                          "folder whose records hold 'image' and the mask key")
    items, seen = [], set()
    with open(meta, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as error:
                raise ConfigError(f"{meta}:{n}: not JSON ({error})") from None
            if config.split and rec.get("split") != config.split:
                continue
            sid = str(rec.get("id", ""))
            if not sid or sid.startswith(".") or "/" in sid or "\\" in sid:
                raise ConfigError(f"{meta}:{n}: id {sid!r} cannot name files")
            if sid in seen:
                raise ConfigError(f"{meta}:{n}: duplicate id {sid!r}")
            seen.add(sid)
            for key in ("image", config.mask_key):
                if not isinstance(rec.get(key), str):
                    raise ConfigError(f"{meta}:{n}: record {sid!r} has no {key!r} path (mask key: --mask_key)")
            items.append({"id": sid, "image": str(root / rec["image"]), "mask": str(root / rec[config.mask_key])})
    if config.limit:
        items = items[:config.limit]
    if not items:
        raise ConfigError(f"{meta} holds no records{' of split ' + repr(config.split) if config.split else ''}")
    return items


def _square(im: Image.Image) -> Image.Image:
    w, h = im.size
    if w == h:
        return im
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.crop((left, top, left + s, top + s))


def load_item(item: dict, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(x uint8 (size, size, 3), M bool (size, size), original [w, h]): center-cropped to square, resized."""
    from .counterfactual_data import load_mask, load_rgb

    image = load_rgb(item["image"])
    mask = load_mask(item["mask"])
    if mask.shape != image.shape[:2]:
        raise ConfigError(f"{item['id']}: mask {item['mask']} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                          f"{image.shape[1]}x{image.shape[0]}")
    original = [int(image.shape[1]), int(image.shape[0])]
    if image.shape[:2] != (size, size):
        im = _square(Image.fromarray(image)).resize((size, size), Image.BICUBIC)
        mk = _square(Image.fromarray(mask.astype(np.uint8) * 255)).resize((size, size), Image.NEAREST)
        image, mask = np.asarray(im, np.uint8).copy(), np.asarray(mk) > 127
    return image, mask, original


# ----------------------------------------------------------------------------------------------- building


def _paths(out: Path, sid: str) -> dict[str, Path]:
    return {"factual": out / "factual" / f"{sid}.png", "counterfactual": out / "counterfactual" / f"{sid}.png",
            "mask": out / "masks" / f"{sid}.png", "composite": out / "composite" / f"{sid}.png",
            "record": out / "records" / f"{sid}.json"}


def read_record(out: Path, sid: str) -> dict | None:
    path = _paths(out, sid)["record"]
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def item_complete(out: Path, sid: str, settings: dict) -> bool:
    rec = read_record(out, sid)
    if rec is None or rec.get("settings") != settings or rec.get("status") not in STATUSES:
        return False
    if rec["status"] != "kept":
        return True
    return all(p.is_file() for k, p in _paths(out, sid).items() if k != "record")


def build_item(out: Path, item: dict, bundle, config: BootstrapConfig, settings: dict, gray_masked: bool) -> dict:
    """Filter, remove, composite and write one item; the record is written last."""
    from .conditioned_unet import conditioned_sample
    from .distill_data import item_seed

    sid = item["id"]
    paths = _paths(out, sid)
    x, m, original = load_item(item, int(bundle.image_size))
    record: dict[str, Any] = {"id": sid, "source": {"image": item["image"], "mask": item["mask"],
                                                    "width": original[0], "height": original[1]},
                              "settings": settings}
    failed, stats = prefilter(m, config)
    if failed is None:
        seed = item_seed(config.seed, sid, "bootstrap-removal")
        z = conditioned_sample(bundle, x[None], m[None], steps=config.steps, seed=seed, gray_masked=gray_masked)[0]
        if config.removal_composite == "effects":
            z = effect_composite(x, z, m, config)
        stats["effect_area"] = effect_area_fraction(x, z, m, config.effect_threshold, config.effect_dilate)
        stats["removal_seed"] = seed
        if stats["effect_area"] < config.min_effect_area:
            failed = "effect"
        else:
            y = composite(x, z, m)
            save_png(x, paths["factual"])
            save_png(z, paths["counterfactual"])
            save_png(m, paths["mask"])
            save_png(y, paths["composite"])
            record.update({"factual": f"factual/{sid}.png", "counterfactual": f"counterfactual/{sid}.png",
                           "mask": f"masks/{sid}.png", "composite": f"composite/{sid}.png",
                           "width": int(x.shape[1]), "height": int(x.shape[0]), "mask_source": "file"})
    record["status"] = failed or "kept"
    record["stats"] = stats
    write_text_atomic(paths["record"], dumps_strict(record, indent=1) + "\n")
    return record


def count_report(records: Sequence[dict]) -> dict:
    """How many items each filter kept (filters apply in order: area, bottom border, effect)."""
    status = [r["status"] for r in records]
    n = len(status)
    after_area = n - status.count("area")
    after_bottom = after_area - status.count("bottom")
    return {"input": n, "after_area": after_area, "after_bottom": after_bottom,
            "after_effect": after_bottom - status.count("effect")}


def check_out(out: Path) -> None:
    if out.is_dir() and any(out.iterdir()) and not (out / "records").is_dir():
        raise ConfigError(f"--out {out} is a non-empty folder that is not a bootstrap dataset; choose a new folder")


def build_bootstrap(config: BootstrapConfig, state=None, argv: Sequence[str] = ()) -> dict:
    """List, shard over processes, build, then (main process) write metadata.jsonl and report.json; returns the report."""
    from .conditioned_unet import inpaint_layout_problem
    from .distill_data import default_state, load_model, progress_bar

    check_config(config)
    out = Path(config.out).expanduser().resolve()
    check_out(out)
    items = list_sources(config)
    if state is None:
        state = default_state()
    bundle = load_model(config.removal_model, "removal model")
    problem = inpaint_layout_problem(bundle)
    if problem is not None:
        raise ConfigError(f"--removal_model {config.removal_model}: {problem}")
    if bundle.info.get("recipe") not in (None, "removal"):
        logger.warning("--removal_model %s was made by the %r recipe, not 'removal': its output keeps effects, so "
                       "the effect filter will drop most pairs", config.removal_model, bundle.info.get("recipe"))
    gray_masked = bool(bundle.info.get("gray_masked", False))
    bundle = bundle.to(state.device)
    bundle.unet.eval()
    settings = judging_settings(config)
    for d in SUBDIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    mine = [it for it in items[state.process_index::state.num_processes] if not item_complete(out, it["id"], settings)]
    logger.info("bootstrap: %d item(s), process %d/%d takes %d unfinished", len(items), state.process_index,
                state.num_processes, len(mine))
    bar = progress_bar(len(mine), state, "bootstrap")
    for item in mine:
        build_item(out, item, bundle, config, settings, gray_masked)
        bar.update(1)
    bar.close()
    state.wait_for_everyone()
    report: dict = {}
    if state.is_main_process:
        records, missing = [], []
        for item in items:
            if not item_complete(out, item["id"], settings):
                missing.append(item["id"])
            else:
                records.append(read_record(out, item["id"]))
        if missing:
            raise ConfigError(f"{out}: {len(missing)} item(s) not written yet {missing[:10]}; rerun the same command")
        lines = []
        for rec in records:
            if rec["status"] == "kept":
                lines.append(dumps_strict({k: v for k, v in rec.items() if k != "settings"}) + "\n")
        write_text_atomic(out / METADATA, "".join(lines))
        report = count_report(records)
        report["dropped"] = {s: [r["id"] for r in records if r["status"] == s] for s in ("area", "bottom", "effect")}
        report["settings"] = settings
        write_text_atomic(out / REPORT, json.dumps(report, indent=1) + "\n")
        header = f"# written by: python -m segdrop.training bootstrap {shlex.join(list(argv))}\n"
        write_text_atomic(out / SETTINGS_FILE, header + dump_toml(config))
        print(f"bootstrap: input {report['input']}, after area filter {report['after_area']}, after bottom-border "
              f"filter {report['after_bottom']}, after effect filter {report['after_effect']} -> {out / METADATA}")
    state.wait_for_everyone()
    return report


# ----------------------------------------------------------------------------------------------- reading


def read_bootstrap(folder: str | Path) -> dict[str, np.ndarray]:
    """The kept pairs as arrays: ``factual``/``composite``/``background`` uint8 (N, H, W, 3), ``mask`` bool (N, H, W),
    ``ids`` (N,) str. The insertion model learns (composite, mask) -> factual."""
    from .counterfactual_data import load_mask, load_rgb

    root = Path(folder).expanduser().resolve()
    meta = root / METADATA
    if not meta.is_file():
        raise ConfigError(f"{root} has no {METADATA}: build it with `python -m segdrop.training bootstrap`")
    records = [json.loads(line) for line in meta.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise ConfigError(f"{meta} holds no pairs: every image was filtered out (see {root / REPORT})")
    missing = [r.get("id") for r in records if "composite" not in r]
    if missing:
        raise ConfigError(f"{meta}: records {missing[:10]} have no 'composite': not a bootstrap dataset")
    out = {"factual": np.stack([load_rgb(root / r["factual"]) for r in records]),
           "composite": np.stack([load_rgb(root / r["composite"]) for r in records]),
           "mask": np.stack([load_mask(root / r["mask"]) for r in records]),
           "background": np.stack([load_rgb(root / r["counterfactual"]) for r in records]),
           "ids": np.array([r["id"] for r in records])}
    return out


# ----------------------------------------------------------------------------------------------- CLI


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    return recipe_parser("bootstrap", BootstrapConfig, __doc__, HELPS, parser)


def run(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    try:
        build_bootstrap(resolve_config(BootstrapConfig, args, "bootstrap"), argv=argv)
    except (ConfigError, ValueError) as error:
        logger.debug("bootstrap failed", exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging()
    return run(args, argv)


if __name__ == "__main__":
    raise SystemExit(main())
