"""On-disk dataset format read by the training CLI (keep it stable).

    <root>/metadata.jsonl   one JSON record per scene (see ``write_dataset``)
    <root>/images/<id>.png            8-bit RGB
    <root>/masks/<id>.png             union of object masks, 8-bit L 0/255
    <root>/effects/<id>.png           shadow ∪ reflection (minus objects), 0/255
    <root>/objects/<id>_<k>.png       visible mask of object k, 0/255
    <root>/counterfactuals/<id>.png   scene with all objects and effects removed
    <root>/backgrounds/<id>.png       background (identical to the counterfactual)

``write_object_pairs`` writes the one-object variant used for insertion (a scene, one chosen object k, the scene
without k): ``factual``/``counterfactual``/``mask`` records as ``training/counterfactual_data.py`` reads them, plus
``image`` (= factual) so the bootstrap builder can read it as a source::

    <root>/metadata.jsonl                {"id", "split", "index", "seed", "object", "image", "factual",
                                          "counterfactual", "mask", "effects_mask", "caption"}
    <root>/images/<id>.png               the factual scene (all objects, all effects)
    <root>/without/<id>.png              the scene without object k and its effects (others stay)
    <root>/objects/<id>.png              visible mask of object k, 0/255
    <root>/effects/<id>.png              object k's shadow ∪ reflection, 0/255

All files are written atomically (temp name in the same folder, then ``os.replace``), so an interrupted
run never leaves a half-written PNG or metadata file behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from .scene import Scene, make_scene

_SUBDIRS = ("images", "masks", "effects", "objects", "counterfactuals", "backgrounds")
_PATH_KEYS = ("image", "mask", "effects_mask", "counterfactual", "background")


def scene_seed(seed: int, split: str, index: int) -> int:
    """Scene seed from (seed, split, index): splits get disjoint, reproducible 64-bit seed streams."""
    ss = np.random.SeedSequence([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])
    return (
        int(ss.generate_state(1, dtype=np.uint64)[0]) >> 1
    )  # 63 bits: fits a signed int64 in any JSON reader


def to_uint8(array: np.ndarray) -> np.ndarray:
    """[0, 1] float image, uint8 image (kept) or bool mask -> uint8 (masks become 0/255)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    return np.clip(np.rint(np.asarray(array, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _atomic_write_bytes(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_png(array: np.ndarray, path: str | os.PathLike) -> None:
    """Atomically write an (H, W, 3) float or uint8 image as RGB or an (H, W) bool mask as L (0/255)."""
    data = to_uint8(array)
    mode = "RGB" if data.ndim == 3 else "L"
    _atomic_write_bytes(Path(path), lambda fh: Image.fromarray(data, mode).save(fh, format="PNG"))


def _write_scene(root: Path, sid: str, split: str, seed: int, scene: Scene) -> dict:
    rec = {
        "id": sid,
        "split": split,
        "seed": seed,
        "image": f"images/{sid}.png",
        "caption": scene.caption,
        "mask": f"masks/{sid}.png",
        "effects_mask": f"effects/{sid}.png",
        "object_masks": [f"objects/{sid}_{k}.png" for k in range(len(scene.objects))],
        "objects": [o.to_record() for o in scene.objects],
        "counterfactual": f"counterfactuals/{sid}.png",
        "background": f"backgrounds/{sid}.png",
    }
    save_png(scene.image, root / rec["image"])
    save_png(scene.object_mask, root / rec["mask"])
    save_png(scene.effects_mask, root / rec["effects_mask"])
    for o, rel in zip(scene.objects, rec["object_masks"]):
        save_png(o.mask, root / rel)
    save_png(scene.counterfactual, root / rec["counterfactual"])
    save_png(scene.background, root / rec["background"])
    return rec


def _read_lines(meta: Path) -> list[dict]:
    if not meta.exists():
        return []
    with open(meta, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_dataset(
    root: str | os.PathLike, count: int, size: int = 64, seed: int = 0, split: str = "train"
) -> Path:
    """Render ``count`` scenes of ``split`` into ``root`` and append their records to metadata.jsonl.

    Appending is safe: a split that already has records continues its numbering (ids stay unique and
    new scenes are new seeds); other splits' records are kept. Returns ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for d in _SUBDIRS:
        (root / d).mkdir(exist_ok=True)
    meta = root / "metadata.jsonl"
    existing = _read_lines(meta)
    start = sum(1 for r in existing if r.get("split") == split)
    new = []
    for index in range(start, start + count):
        s = scene_seed(seed, split, index)
        new.append(_write_scene(root, f"{split}_{index:05d}", split, s, make_scene(s, size)))
    text = "".join(json.dumps(r) + "\n" for r in existing + new)
    _atomic_write_bytes(meta, lambda fh: fh.write(text.encode("utf-8")))
    return root


def chosen_object(scene: Scene) -> int:
    """The object a one-object pair is about: drawn from the scene's seed, so a seed always names the same one."""
    return int(np.random.default_rng([int(scene.seed or 0), 1]).integers(len(scene.objects)))


def object_effects(scene: Scene, k: int) -> np.ndarray:
    """(H, W) bool: object k's own shadow ∪ reflection (outside every object)."""
    o = scene.objects[k]
    return (o.shadow_mask | o.reflection_mask) & ~scene.object_mask


def write_object_pairs(
    root: str | os.PathLike, count: int, size: int = 64, seed: int = 0, split: str = "train"
) -> Path:
    """Render ``count`` one-object pairs of ``split`` into ``root`` (layout in the module docstring) and append them.

    A pair is a scene, one object k (``chosen_object``) and the scene re-rendered without k, its shadow and its
    reflection, while the other objects and their effects stay: inserting k back is the insertion task with the
    scene's own light cues, as in a photo. Scenes without objects are skipped (their index is used up). Appending
    continues the split's numbering, as ``write_dataset`` does.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    meta = root / "metadata.jsonl"
    existing = _read_lines(meta)
    start = max([int(r["index"]) + 1 for r in existing if r.get("split") == split] + [0])
    new = []
    for index in range(start, start + count):
        s = scene_seed(seed, split, index)
        scene = make_scene(s, size)
        if not scene.objects:
            continue
        k = chosen_object(scene)
        sid = f"{split}_{index:05d}"
        rec = {"id": sid, "split": split, "index": index, "seed": s, "object": k, "image": f"images/{sid}.png",
               "factual": f"images/{sid}.png", "counterfactual": f"without/{sid}.png", "mask": f"objects/{sid}.png",
               "effects_mask": f"effects/{sid}.png", "caption": scene.caption}
        save_png(scene.image, root / rec["image"])
        save_png(scene.counterfactual_without(k), root / rec["counterfactual"])
        save_png(scene.objects[k].mask, root / rec["mask"])
        save_png(object_effects(scene, k), root / rec["effects_mask"])
        new.append(rec)
    text = "".join(json.dumps(r) + "\n" for r in existing + new)
    _atomic_write_bytes(meta, lambda fh: fh.write(text.encode("utf-8")))
    return root


def read_dataset(root: str | os.PathLike, split: str | None = None) -> list[dict]:
    """Parse metadata.jsonl (``root`` may be the folder or the file itself); file fields become absolute
    path strings. Optionally keep only one split."""
    root = Path(root).resolve()
    meta = root / "metadata.jsonl" if root.is_dir() else root
    base = meta.parent
    out = []
    for rec in _read_lines(meta):
        if split is not None and rec.get("split") != split:
            continue
        rec = dict(rec)
        for k in _PATH_KEYS:
            rec[k] = str(base / rec[k])
        rec["object_masks"] = [str(base / p) for p in rec["object_masks"]]
        out.append(rec)
    return out


def load_png(path: str | os.PathLike) -> np.ndarray:
    """PNG -> float32 [0, 1] RGB array, or bool mask for L images."""
    with Image.open(path) as im:
        data = np.asarray(im)
    if data.ndim == 2:
        return data > 127
    return data.astype(np.float32) / 255.0
