"""Counterfactual triplets for ObjectDrop-style removal training: factual image F (scene with the object), counterfactual
G (the same scene with the object *and its effects* removed) and object mask M (the object only, not its shadow or
reflection; ObjectDrop takes it from SAM on F).

Sources read by ``list_triplets`` / ``read_triplets`` (detected from the folder):

* a normalised dataset written by ``build_dataset`` (``metadata.jsonl`` records with ``factual``);
* a toy-world dataset (``toyworld/dataset.py``; records with ``image``, ``object_masks``, ``counterfactual``):
  F = image, G = counterfactual (all objects and effects removed), M = union of the object masks. The writer
  stores no per-object counterfactuals (``Scene.object_counterfactuals`` lives in memory only), so a
  multi-object scene gives one triplet;
* a folder of photos ``<name>_F.<ext>``, ``<name>_G.<ext>`` and optionally ``<name>_M.<ext>`` (ext png, jpg,
  jpeg, webp; the naming of community removal trainers). A missing M is made with SAM (``SamMasker``).

Normalised layout written by ``build_dataset`` (``python -m segdrop.training counterfactual-data``)::

    OUT/metadata.jsonl            one JSON record per triplet, in source order:
                                  {"id", "factual", "counterfactual", "mask", "width", "height",
                                   "mask_source": "file" | "toyworld" | "sam", "source": {...}}
    OUT/factual/<id>.png          8-bit RGB
    OUT/counterfactual/<id>.png   8-bit RGB, same size
    OUT/masks/<id>.png            8-bit L, 0/255, object only
    OUT/records/<id>.json         the item's record, written last: its presence marks the item complete

Every file is written atomically (temporary name, then ``os.replace``), so a killed run leaves only complete
files and a rerun skips finished items. Under ``accelerate launch`` process k handles the items with
``index % num_processes == k``; the main process writes ``metadata.jsonl`` after all processes finish.

Mask from SAM when M is missing (``object_box`` + ``SamMasker``):

1. significance: a pixel differs when the mean over RGB of |F - G| exceeds ``diff_threshold`` (default 0.1,
   i.e. 25.5 of 255; above JPEG noise and small exposure drift between two tripod shots); a 3x3 opening
   removes isolated pixels;
2. components (8-connected) smaller than ``min_component_fraction`` of the image (default 0.001) are dropped;
   the largest remaining one is the removed object *with its effects*;
3. that component includes the shadow, so the object box excludes shadow-like pixels: pixels where F is
   darker than G in every channel by a near-common factor (F ≈ k·G, k in [0.15, 0.92], per-channel ratios
   within 0.1 of their mean), which is how a cast shadow changes a surface while keeping its hue. The box is
   the bounding box of the remaining (object-like) pixels, after dropping tiny specks; when nothing remains it
   falls back to the whole component. Tinted reflections are not shadow-like and can enlarge the box;
4. SAM is prompted with that box (single-mask output); its mask is kept only inside the hole-filled component
   (dilated by 2 px) and the box grown by ``box_margin`` (2 px + 5 % of the box size), because the object must
   be where F and G differ and SAM's box masks sometimes leak into the shadow.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import tomllib
from PIL import Image, ImageOps

from ..toyworld.dataset import save_png
from .loop import ConfigError, dumps_strict, write_text_atomic

logger = logging.getLogger("segdrop.training.counterfactual_data")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
_PHOTO_NAME = re.compile(r"^(?P<name>.+)_(?P<role>[FGMfgm])$")
SUBDIRS = ("factual", "counterfactual", "masks", "records")
METADATA = "metadata.jsonl"
SAM_TYPES = ("vit_b", "vit_l", "vit_h")
_TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


# ----------------------------------------------------------------------------------------------- data types


@dataclass
class TripletSource:
    """Where one triplet lives on disk (cheap to list; arrays are loaded by ``load_triplet``)."""

    id: str
    factual: Path
    counterfactual: Path
    mask: Path | None = None  # None: to be made with SAM
    object_masks: list[Path] = field(default_factory=list)  # toy world: union of these is the mask
    mask_source: str = "file"  # "file" | "toyworld" | "sam"

    def to_record(self) -> dict:
        rec: dict[str, Any] = {"factual": str(self.factual), "counterfactual": str(self.counterfactual)}
        if self.mask is not None:
            rec["mask"] = str(self.mask)
        if self.object_masks:
            rec["object_masks"] = [str(p) for p in self.object_masks]
        return rec


@dataclass
class CounterfactualTriplet:
    """One training example as plain arrays: ``factual``/``counterfactual`` uint8 (H, W, 3), ``mask`` bool (H, W)."""

    id: str
    factual: np.ndarray
    counterfactual: np.ndarray
    mask: np.ndarray
    mask_source: str


# ----------------------------------------------------------------------------------------------- image I/O


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Any image -> uint8 (H, W, 3) RGB, EXIF orientation applied (phone photos of F and G must line up)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read image {path}: {error}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask image -> bool (H, W): grey level > 127 (an RGB mask is converted to grey first)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as error:
        raise ConfigError(f"cannot read mask {path}: {error}") from None


# ----------------------------------------------------------------------------------------------- listing sources


def _read_jsonl(meta: Path) -> list[dict]:
    out = []
    with open(meta, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ConfigError(f"{meta}:{n}: not JSON ({error})") from None
    return out


def _list_metadata(root: Path) -> list[TripletSource]:
    meta = root / METADATA
    sources = []
    for n, rec in enumerate(_read_jsonl(meta), 1):
        where = f"{meta}:{n}"
        if "factual" in rec:  # normalised layout
            missing = [k for k in ("id", "factual", "counterfactual", "mask") if k not in rec]
            if missing:
                raise ConfigError(f"{where}: a normalised record needs {missing} (rebuild it with counterfactual-data)")
            sources.append(TripletSource(str(rec["id"]), root / rec["factual"], root / rec["counterfactual"],
                                         root / rec["mask"], mask_source=rec.get("mask_source", "file")))
        elif "image" in rec and "counterfactual" in rec:  # toy world
            if not rec.get("object_masks"):
                raise ConfigError(f"{where}: toy-world record {rec.get('id')!r} has no object_masks, so there is no "
                                  "object to remove; regenerate it with `python -m segdrop.toyworld`")
            sid = str(rec.get("id", f"item_{n:05d}"))
            sources.append(TripletSource(sid, root / rec["image"], root / rec["counterfactual"],
                                         object_masks=[root / p for p in rec["object_masks"]], mask_source="toyworld"))
        else:
            raise ConfigError(f"{where}: neither a counterfactual record (factual, counterfactual, mask) nor a "
                              "toy-world record (image, object_masks, counterfactual)")
    ids = [s.id for s in sources]
    bad = [i for i in ids if not i or i.startswith(".") or "/" in i or "\\" in i]
    if bad:
        raise ConfigError(f"{meta}: ids {bad[:10]} cannot name files (empty, leading '.', or a path separator)")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ConfigError(f"{meta}: duplicate ids {dup[:10]}; ids name the output files and must be unique")
    return sources


def _list_photos(root: Path) -> list[TripletSource]:
    groups: dict[str, dict[str, Path]] = {}
    stray, dup = [], []
    for path in sorted(root.iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        match = _PHOTO_NAME.match(path.stem)
        if not match:
            stray.append(path.name)
            continue
        role = match["role"].upper()
        slot = groups.setdefault(match["name"], {})
        if role in slot:
            dup.append(f"{slot[role].name} / {path.name}")
        slot[role] = path
    problems = []
    if stray:
        problems.append(f"image files not named <name>_F/_G/_M: {stray[:10]}")
    if dup:
        problems.append(f"two files for the same role: {dup[:10]}")
    no_g = sorted(f"{n}_F" for n, s in groups.items() if "F" in s and "G" not in s)
    no_f = sorted(f"{n}_G" for n, s in groups.items() if "G" in s and "F" not in s)
    only_m = sorted(f"{n}_M" for n, s in groups.items() if set(s) == {"M"})
    if no_g:
        problems.append(f"factual images without a counterfactual <name>_G: {no_g[:10]}")
    if no_f:
        problems.append(f"counterfactual images without a factual <name>_F: {no_f[:10]}")
    if only_m:
        problems.append(f"masks without F and G: {only_m[:10]}")
    if problems:
        raise ConfigError(f"{root}: " + "; ".join(problems) + ". Each example needs <name>_F and <name>_G "
                          f"(and optionally <name>_M), extensions {', '.join(IMAGE_EXTENSIONS)}")
    return [TripletSource(name, s["F"], s["G"], s.get("M"), mask_source="file" if "M" in s else "sam")
            for name, s in sorted(groups.items())]


def list_triplets(folder: str | os.PathLike) -> list[TripletSource]:
    """The triplets in ``folder`` (normalised dataset, toy-world dataset or F/G/M photo folder), checking pairing."""
    root = Path(folder).resolve()  # absolute paths in records: a resume from another working folder still matches
    if not root.is_dir():
        raise ConfigError(f"source folder {root} does not exist")
    sources = _list_metadata(root) if (root / METADATA).exists() else _list_photos(root)
    if not sources:
        raise ConfigError(f"{root} holds no triplets: expected metadata.jsonl or files named <name>_F.png, "
                          "<name>_G.png (and optionally <name>_M.png)")
    return sources


# ----------------------------------------------------------------------------------------------- loading


def load_triplet(source: TripletSource, masker: "SamMasker | None" = None) -> CounterfactualTriplet:
    """Arrays of one triplet; size mismatches and empty masks are errors, a missing mask is made by ``masker``."""
    factual = load_rgb(source.factual)
    counterfactual = load_rgb(source.counterfactual)
    if factual.shape != counterfactual.shape:
        raise ConfigError(f"{source.id}: factual {source.factual.name} is {factual.shape[1]}x{factual.shape[0]} but "
                          f"counterfactual {source.counterfactual.name} is {counterfactual.shape[1]}x"
                          f"{counterfactual.shape[0]}; F and G must be the same shot (same size, same framing)")
    if source.object_masks:
        masks = [load_mask(p) for p in source.object_masks]
        mask = np.zeros(factual.shape[:2], bool)
        for p, m in zip(source.object_masks, masks):
            if m.shape != mask.shape:
                raise ConfigError(f"{source.id}: object mask {p} is {m.shape[1]}x{m.shape[0]}, image is "
                                  f"{mask.shape[1]}x{mask.shape[0]}")
            mask |= m
    elif source.mask is not None:
        mask = load_mask(source.mask)
        if mask.shape != factual.shape[:2]:
            raise ConfigError(f"{source.id}: mask {source.mask.name} is {mask.shape[1]}x{mask.shape[0]} but the "
                              f"factual image is {factual.shape[1]}x{factual.shape[0]}; resize the mask to match")
    else:
        if masker is None:
            raise ConfigError(f"{source.id}: no mask file and no SAM checkpoint; give one or add {source.id}_M.png")
        mask = masker(factual, counterfactual, source.id)
    if not mask.any():
        where = source.mask or source.object_masks or "SAM"
        raise ConfigError(f"{source.id}: the object mask ({where}) is empty; it must mark the object to remove "
                          "(white = object)")
    return CounterfactualTriplet(source.id, factual, counterfactual, mask, source.mask_source)


def missing_masks(sources: Iterable[TripletSource]) -> list[str]:
    """Ids of the triplets with neither a mask file nor toy-world object masks (they need SAM)."""
    return [s.id for s in sources if s.mask is None and not s.object_masks]


def require_masker(sources: list[TripletSource], masker: "SamMasker | None") -> None:
    """Fail early, naming the files, when masks must be made but no SAM model was given."""
    lacking = [s for s in sources if s.mask is None and not s.object_masks]
    if lacking and masker is None:
        names = [s.factual.name for s in lacking]
        raise ConfigError(f"{len(lacking)} triplet(s) have no mask file: {names[:10]}"
                          f"{' ...' if len(names) > 10 else ''}. Add <name>_M.png masks (white = object) or give "
                          "--sam_checkpoint PATH.safetensors --sam_type vit_b|vit_l|vit_h to make them with SAM")


def read_triplets(folder: str | os.PathLike, masker: "SamMasker | None" = None) -> list[CounterfactualTriplet]:
    """All triplets of ``folder`` as arrays (fine for small sets; use list_triplets + load_triplet for big ones)."""
    sources = list_triplets(folder)
    require_masker(sources, masker)
    return [load_triplet(s, masker) for s in sources]


# ----------------------------------------------------------------------------------------------- difference box


def significant_difference(factual: np.ndarray, counterfactual: np.ndarray, diff_threshold: float = 0.1) -> np.ndarray:
    """Bool (H, W): mean absolute RGB difference (in [0, 1] units) above ``diff_threshold``, 3x3-opened."""
    from scipy import ndimage

    diff = np.abs(factual.astype(np.float32) - counterfactual.astype(np.float32)).mean(axis=-1) / 255.0
    return ndimage.binary_opening(diff > diff_threshold, structure=np.ones((3, 3), bool))


def _components(mask: np.ndarray, min_area: int) -> list[np.ndarray]:
    """8-connected components of ``mask`` with at least ``min_area`` pixels, largest first."""
    from scipy import ndimage

    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if count == 0:
        return []
    areas = np.bincount(labels.ravel())[1:]
    order = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= min_area]
    return [labels == i + 1 for i in order]


def shadow_like(factual: np.ndarray, counterfactual: np.ndarray) -> np.ndarray:
    """Bool (H, W): F ≈ k·G with k in [0.15, 0.92] and per-channel ratios within 0.1 of k (darkened, same hue)."""
    f = factual.astype(np.float32) + 1.0
    g = counterfactual.astype(np.float32) + 1.0
    ratio = f / g
    k = ratio.mean(axis=-1)
    spread = np.abs(ratio - k[..., None]).max(axis=-1)
    return (k >= 0.15) & (k <= 0.92) & (spread <= 0.1)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


@dataclass
class DifferenceRegion:
    """The removed object's difference component (object + effects) and the box around its object-like part."""

    component: np.ndarray  # bool (H, W)
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixel edges (x1, y1 exclusive), SAM's XYXY box
    box_from_component: bool  # True: no object-like pixels were left, the box is the whole component's


def object_box(factual: np.ndarray, counterfactual: np.ndarray, diff_threshold: float = 0.1,
               min_component_fraction: float = 0.001, name: str = "image") -> DifferenceRegion:
    """Box prompt for SAM: the largest significant |F - G| component minus its shadow-like pixels (module docs)."""
    if factual.shape != counterfactual.shape:
        raise ConfigError(f"{name}: F {factual.shape} and G {counterfactual.shape} differ in size")
    min_area = max(4, int(round(min_component_fraction * factual.shape[0] * factual.shape[1])))
    comps = _components(significant_difference(factual, counterfactual, diff_threshold), min_area)
    if not comps:
        raise ConfigError(f"{name}: F and G do not differ significantly anywhere (mean |F-G| > {diff_threshold} on at "
                          f"least {min_area} connected pixels); check that G is the same scene without the object, "
                          "or give a mask file")
    component = comps[0]
    objectish = component & ~shadow_like(factual, counterfactual)
    parts = _components(objectish, max(4, min_area // 4))
    if parts:
        keep = np.zeros_like(component)
        for p in parts:
            keep |= p
        return DifferenceRegion(component, _bbox(keep), False)
    return DifferenceRegion(component, _bbox(component), True)


def box_margin(box: tuple[int, int, int, int], shape: tuple[int, int]) -> np.ndarray:
    """Bool (H, W): ``box`` grown by 2 px + 5 % of its size on each side, clipped to the image."""
    x0, y0, x1, y1 = box
    mx, my = 2 + int(0.05 * (x1 - x0)), 2 + int(0.05 * (y1 - y0))
    out = np.zeros(shape, bool)
    out[max(0, y0 - my):min(shape[0], y1 + my), max(0, x0 - mx):min(shape[1], x1 + mx)] = True
    return out


# ----------------------------------------------------------------------------------------------- SAM


def sam_builders() -> dict[str, Callable[..., Any]]:
    """Model type -> builder called with ``checkpoint=None`` (segment-anything's registry; tests add a tiny one)."""
    from segment_anything import sam_model_registry

    return {k: sam_model_registry[k] for k in SAM_TYPES}


EXTRA_SAM_BUILDERS: dict[str, Callable[..., Any]] = {}  # for tests: e.g. {"tiny": testing.tiny_sam.tiny_sam}


def load_sam(checkpoint: str | os.PathLike, model_type: str = "vit_b", device: str = "cpu"):
    """Build SAM of ``model_type`` from the registry without weights and load a .safetensors state dict (never
    torch.load: segment-anything's own loader unpickles)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(checkpoint)
    if path.suffix.lower() in _TORCH_SUFFIXES:
        raise ConfigError(
            f"SAM checkpoint {path} is a pickled torch file; SegDrop loads safetensors only. Convert it once with\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; save_file(torch.load('{path}', "
            f"map_location='cpu', weights_only=True), '{path.with_suffix('.safetensors')}')\"\n"
            "and pass the .safetensors file")
    if not path.is_file():
        raise ConfigError(f"SAM checkpoint {path} does not exist (expected a .safetensors file, e.g. a converted "
                          "sam_vit_b_01ec64.pth)")
    builders = {**sam_builders(), **EXTRA_SAM_BUILDERS}
    if model_type not in builders:
        raise ConfigError(f"unknown SAM model type {model_type!r}; use one of {sorted(builders)}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ConfigError(f"SAM checkpoint {path} is not a readable safetensors file: {error}") from None
    sam = builders[model_type](checkpoint=None)
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        raise ConfigError(
            f"SAM checkpoint {path} does not match model type {model_type!r}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, {len(shapes)} shape mismatches "
            f"{shapes[:3]}; check --sam_type (vit_b: sam_vit_b_01ec64, vit_l: sam_vit_l_0b3195, vit_h: sam_vit_h_4b8939)")
    with torch.no_grad():
        sam.load_state_dict(state, strict=True)
    return sam.to(device).eval()


class SamMasker:
    """Makes a missing object mask from F and G: SAM prompted with ``object_box``'s box, restricted to the
    difference component and the grown box (module docs). ``last_region`` keeps the region of the last call."""

    def __init__(self, sam: Any, diff_threshold: float = 0.1, min_component_fraction: float = 0.001) -> None:
        from segment_anything import SamPredictor

        self.predictor = SamPredictor(sam)
        self.diff_threshold = diff_threshold
        self.min_component_fraction = min_component_fraction
        self.last_region: DifferenceRegion | None = None

    def __call__(self, factual: np.ndarray, counterfactual: np.ndarray, name: str = "image") -> np.ndarray:
        import torch
        from scipy import ndimage

        region = object_box(factual, counterfactual, self.diff_threshold, self.min_component_fraction, name)
        self.last_region = region
        with torch.inference_mode():
            self.predictor.set_image(factual, image_format="RGB")
            masks, _, _ = self.predictor.predict(box=np.asarray(region.box, np.float32), multimask_output=False)
        allowed = ndimage.binary_fill_holes(ndimage.binary_dilation(region.component, iterations=2))
        mask = np.asarray(masks[0], bool) & allowed & box_margin(region.box, factual.shape[:2])
        if not mask.any():
            raise ConfigError(f"{name}: SAM found no object in the box {region.box} of the F/G difference; add a "
                              f"mask file {name}_M.png (white = object)")
        return mask


# ----------------------------------------------------------------------------------------------- building


def _paths(out: Path, item_id: str) -> dict[str, Path]:
    return {"factual": out / "factual" / f"{item_id}.png", "counterfactual": out / "counterfactual" / f"{item_id}.png",
            "mask": out / "masks" / f"{item_id}.png", "record": out / "records" / f"{item_id}.json"}


def item_complete(out: Path, source: TripletSource) -> bool:
    """True when the item's record and its three PNGs exist (the record is written last) for the same source."""
    paths = _paths(out, source.id)
    if not all(p.exists() for p in paths.values()):
        return False
    try:
        rec = json.loads(paths["record"].read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    if rec.get("source") != source.to_record():
        raise ConfigError(f"{out} already holds item {source.id!r} built from {rec.get('source')}, not from "
                          f"{source.to_record()}; write into a new --out folder")
    return True


def build_item(out: Path, source: TripletSource, masker: SamMasker | None) -> dict:
    """Load, check and write one triplet (PNGs, then the record); returns the record."""
    triplet = load_triplet(source, masker)
    paths = _paths(out, source.id)
    save_png(triplet.factual, paths["factual"])
    save_png(triplet.counterfactual, paths["counterfactual"])
    save_png(triplet.mask, paths["mask"])
    h, w = triplet.mask.shape
    rec = {"id": source.id, "factual": f"factual/{source.id}.png", "counterfactual": f"counterfactual/{source.id}.png",
           "mask": f"masks/{source.id}.png", "width": w, "height": h, "mask_source": source.mask_source,
           "source": source.to_record()}
    write_text_atomic(paths["record"], dumps_strict(rec) + "\n")
    return rec


def build_shard(sources: list[TripletSource], out: str | os.PathLike, process_index: int = 0, num_processes: int = 1,
                masker: SamMasker | None = None) -> list[str]:
    """Write the items with ``index % num_processes == process_index`` that are not complete yet; returns their ids."""
    out = Path(out)
    for d in SUBDIRS:
        (out / d).mkdir(parents=True, exist_ok=True)
    done = []
    for index, source in enumerate(sources):
        if index % num_processes != process_index or item_complete(out, source):
            continue
        build_item(out, source, masker)
        done.append(source.id)
        logger.info("wrote %s (%s)", source.id, source.mask_source)
    return done


def write_metadata(sources: list[TripletSource], out: str | os.PathLike) -> Path:
    """Gather the per-item records into ``metadata.jsonl`` (source order); every item must be complete."""
    out = Path(out)
    lines, missing = [], []
    for source in sources:
        if not item_complete(out, source):
            missing.append(source.id)
            continue
        rec = json.loads(_paths(out, source.id)["record"].read_text(encoding="utf-8"))
        lines.append(dumps_strict(rec) + "\n")
    if missing:
        raise ConfigError(f"{out}: {len(missing)} item(s) not written yet {missing[:10]}; rerun the same command to "
                          "finish them")
    write_text_atomic(out / METADATA, "".join(lines))
    return out / METADATA


# ----------------------------------------------------------------------------------------------- CLI


@dataclass
class CounterfactualDataConfig:
    source: str = ""
    out: str = ""
    sam_checkpoint: str = ""
    sam_type: str = "vit_b"
    diff_threshold: float = 0.1
    min_component_fraction: float = 0.001


def build_dataset(config: CounterfactualDataConfig, state: Any = None) -> Path:
    """List, shard over processes (``accelerate.PartialState``), build, then write metadata on the main process."""
    if not config.source or not config.out:
        raise ConfigError("give --source FOLDER and --out FOLDER")
    if not 0.0 < config.diff_threshold < 1.0:
        raise ConfigError(f"diff_threshold {config.diff_threshold} must be in (0, 1) (mean |F-G| in [0, 1] units)")
    if not 0.0 <= config.min_component_fraction < 1.0:
        raise ConfigError(f"min_component_fraction {config.min_component_fraction} must be in [0, 1)")
    if Path(config.out).resolve() == Path(config.source).resolve():
        raise ConfigError("--out must differ from --source")
    sources = list_triplets(config.source)
    need_sam = bool(missing_masks(sources))
    if need_sam and not config.sam_checkpoint:
        require_masker(sources, None)
    if state is None:
        from accelerate import PartialState

        state = PartialState()
    masker = None
    if need_sam:
        masker = SamMasker(load_sam(config.sam_checkpoint, config.sam_type, str(state.device)),
                           config.diff_threshold, config.min_component_fraction)
    done = build_shard(sources, config.out, state.process_index, state.num_processes, masker)
    logger.info("process %d/%d wrote %d item(s)", state.process_index, state.num_processes, len(done))
    state.wait_for_everyone()
    meta = Path(config.out) / METADATA
    if state.is_main_process:
        meta = write_metadata(sources, config.out)
        logger.info("wrote %s (%d triplets)", meta, len(sources))
    state.wait_for_everyone()
    return meta


_HELP = {
    "source": "folder to read: <name>_F/_G[/_M] photos, a toy-world dataset or a normalised dataset",
    "out": "folder to write the normalised dataset into (resumable: rerun the same command to finish)",
    "sam_checkpoint": "SAM weights as .safetensors, needed only when some triplets have no mask file",
    "sam_type": "SAM model type of the checkpoint: vit_b, vit_l or vit_h",
    "diff_threshold": "a pixel differs when mean |F-G| over RGB, in [0, 1] units, exceeds this",
    "min_component_fraction": "difference components smaller than this fraction of the image are ignored",
}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="python -m segdrop.training counterfactual-data",
                                               description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="TOML file with the same keys as the flags (flags win)")
    for f in dataclasses.fields(CounterfactualDataConfig):
        parser.add_argument(f"--{f.name}", dest=f.name, type=type(f.default), default=argparse.SUPPRESS,
                            help=f"{_HELP[f.name]} (default {f.default!r})")
    return parser


def resolve_config(args: argparse.Namespace) -> CounterfactualDataConfig:
    """Defaults < --config TOML < flags."""
    names = {f.name: f for f in dataclasses.fields(CounterfactualDataConfig)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"config file {path}: unknown keys {unknown}; known: {sorted(names)}")
        for k, v in data.items():
            kind = type(names[k].default)
            if kind is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if not isinstance(v, kind) or isinstance(v, bool):
                raise ConfigError(f"config file {path}: {k} = {v!r} should be a {kind.__name__}")
            values[k] = v
    values.update({k: v for k, v in vars(args).items() if k in names})
    return CounterfactualDataConfig(**values)


def run(args: argparse.Namespace) -> int:
    try:
        build_dataset(resolve_config(args))
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
