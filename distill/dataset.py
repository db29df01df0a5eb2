"""The "mask folder": the on-disk layout shared by the distillation builders, the background recipe and the
segmenter recipe (keep it stable)::

    <root>/metadata.jsonl          one JSON object per line:
        {"id": str, "image": "images/<id>.png", "caption": str,
         optional mask keys, each a path relative to root:
         "mask"       given/true mask, image size, L 0/255
         "prelim"     M_pre at the LATENT grid, L 0/255           (prelim-masks, synthesize)
         "refined"    refined mask M, image size, L 0/255         (refine-masks, synthesize)
         "inpainted"  m′'s background inpainting, RGB             (refine-masks, synthesize)
         "difference" D = mean_RGB |x − x̂| scaled to 0..255, L   (refine-masks, synthesize)
         any other keys are kept as they are}
    <root>/images/<id>.png, masks/, prelim/, refined/, inpainted/, difference/   (the writer's file names)
    <root>/metadata.part-<k>.jsonl process k's records of an unfinished run (merged into metadata.jsonl at the end)

A toy-world dataset (``toyworld.write_dataset``: ``images/``, ``masks/`` = the union of the object masks,
``metadata.jsonl`` with "image", "caption", "mask") is already a mask folder.

Writing (:class:`MaskFolderWriter`): every PNG is written atomically (``toyworld.dataset.save_png``), then the
item's record is appended to the process's own part file, so a record marks a finished item; a killed run keeps
every finished item and a rerun skips it. The main process merges the part files into ``metadata.jsonl``
(atomically) once all processes are done.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..toyworld.dataset import save_png
from ..training.loop import ConfigError

METADATA = "metadata.jsonl"
PART_GLOB = "metadata.part-*.jsonl"
SUBDIRS = {"image": "images", "mask": "masks", "prelim": "prelim", "refined": "refined", "inpainted": "inpainted",
           "difference": "difference"}
"""The path keys of a mask folder and the sub-folder the writer puts each one in."""
PATH_KEYS = tuple(SUBDIRS)
WRITTEN_BY = {
    "image": "python -m segdrop.training prelim-masks (it copies the images)",
    "caption": "python -m segdrop.training prelim-masks --caption TEXT (or a <name>.txt next to each image)",
    "mask": "a given mask: toy-world folders have it (python -m segdrop.toyworld)",
    "prelim": "python -m segdrop.training prelim-masks",
    "refined": "python -m segdrop.training refine-masks",
    "inpainted": "python -m segdrop.training refine-masks",
    "difference": "python -m segdrop.training refine-masks",
}
FOREIGN_PATH_KEYS = ("effects_mask", "object_masks", "counterfactual", "background")
"""Toy-world path keys that are not part of the mask-folder layout: dropped when a record is copied elsewhere."""


class MaskFolderError(ConfigError):
    """A folder that is not a (complete enough) mask folder (a ``ConfigError``, so the recipes' CLIs report it as
    ``error: ...``)."""


# ----------------------------------------------------------------------------------------------- reading


def read_jsonl(path: Path, *, tolerate_torn: bool = False) -> list[dict]:
    """Records of a JSON-lines file. ``tolerate_torn``: skip lines that are not JSON (an append cut short by a
    kill; its item is simply not finished) instead of failing."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if tolerate_torn:
                continue
            raise MaskFolderError(f"{path}:{number}: not JSON ({error})") from None
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise MaskFolderError(f"{path}:{number}: each line must be a JSON object with a string \"id\"")
        out.append(record)
    return out


def check_ids(ids: Sequence[str], where: str) -> None:
    """Ids name files: refuse empty ones, path separators, leading dots and duplicates."""
    bad = [i for i in ids if not i or i.startswith(".") or "/" in i or "\\" in i]
    if bad:
        raise MaskFolderError(f"{where}: ids {bad[:10]} cannot name files (empty, leading '.', or a path separator)")
    if len(set(ids)) != len(ids):
        seen, duplicates = set(), []
        for i in ids:
            if i in seen:
                duplicates.append(i)
            seen.add(i)
        raise MaskFolderError(f"{where}: duplicate ids {duplicates[:10]}; ids must be unique")


def read_mask_folder(root: str | os.PathLike, require: Iterable[str] = ()) -> list[dict]:
    """The records of ``root/metadata.jsonl`` in file order, mask-folder paths made absolute.

    ``require``: keys every record must have (paths must exist too), e.g. ``("image", "caption", "prelim")``;
    a missing one is a ``MaskFolderError`` naming the command that writes it.
    """
    root = Path(root).expanduser().resolve()
    meta = root / METADATA
    if not meta.is_file():
        hint = "; an unfinished run left part files: rerun its command to merge them" if any(root.glob(PART_GLOB)) else ""
        raise MaskFolderError(f"{root} has no {METADATA}: it is not a mask folder (write one with `python -m "
                              f"segdrop.training prelim-masks` or `synthesize`, or use a toy-world dataset){hint}")
    if any(root.glob(PART_GLOB)):
        warnings.warn(f"{root} holds records of an unfinished run (metadata.part-*.jsonl) that metadata.jsonl does "
                      "not include yet; rerun the command that wrote them to finish and merge.", RuntimeWarning,
                      stacklevel=2)
    records = read_jsonl(meta)
    if not records:
        raise MaskFolderError(f"{meta} holds no records")
    check_ids([r["id"] for r in records], str(meta))
    required = tuple(require)
    out = []
    for record in records:
        record = dict(record)
        for key in PATH_KEYS:
            if isinstance(record.get(key), str):
                record[key] = str(root / record[key])
        for key in required:
            if record.get(key) is None:
                raise MaskFolderError(f"{meta}: record {record['id']!r} has no {key!r}; "
                                      f"it is written by {WRITTEN_BY.get(key, 'the command that made this folder')}")
            if key in PATH_KEYS and not Path(record[key]).is_file():
                raise MaskFolderError(f"{meta}: record {record['id']!r}: the {key} file {record[key]} is missing; "
                                      f"rerun {WRITTEN_BY.get(key, 'the command that wrote it')} to rewrite it")
        out.append(record)
    return out


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Any image -> uint8 ``(H, W, 3)`` RGB (EXIF orientation applied, transparency over white)."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = Image.alpha_composite(Image.new("RGBA", im.size, (255, 255, 255, 255)), im.convert("RGBA"))
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as error:
        raise MaskFolderError(f"cannot read image {path}: {error}") from None


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """Mask image -> bool ``(H, W)``: grey level > 127."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L")) > 127
    except (OSError, ValueError) as error:
        raise MaskFolderError(f"cannot read mask {path}: {error}") from None


def load_difference(path: str | os.PathLike) -> np.ndarray:
    """The stored difference image -> float32 ``(H, W)`` in [0, 1] (quantised to 1/255)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    except (OSError, ValueError) as error:
        raise MaskFolderError(f"cannot read difference image {path}: {error}") from None


def difference_to_uint8(difference: np.ndarray) -> np.ndarray:
    """D in [0, 1] -> uint8 0..255 (rounded), the stored "difference" image."""
    return np.clip(np.rint(np.asarray(difference, np.float64) * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- writing


def _copy_atomic(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class MaskFolderWriter:
    """Writes one process's items into a mask folder; knows which items are finished; merges at the end.

    ``process_index`` names the part file (``metadata.part-<k>.jsonl``) this process appends to.
    """

    def __init__(self, root: str | os.PathLike, process_index: int = 0):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.part = self.root / f"metadata.part-{int(process_index):03d}.jsonl"

    # --- state

    def base_records(self) -> list[dict]:
        """The merged records (``metadata.jsonl``), relative paths."""
        meta = self.root / METADATA
        return read_jsonl(meta) if meta.is_file() else []

    def records(self) -> dict[str, dict]:
        """Every record by id, relative paths: ``metadata.jsonl`` overlaid with all part files (last wins)."""
        out = {r["id"]: r for r in self.base_records()}
        for part in sorted(self.root.glob(PART_GLOB)):
            out.update({r["id"]: r for r in read_jsonl(part, tolerate_torn=True)})
        return out

    def is_complete(self, record: dict | None, keys: Iterable[str]) -> bool:
        """True when ``record`` has every key in ``keys`` and every path key's file exists."""
        if record is None:
            return False
        for key in keys:
            value = record.get(key)
            if value is None or (key in PATH_KEYS and not (self.root / value).is_file()):
                return False
        return True

    def finished(self, keys: Iterable[str]) -> set[str]:
        """Ids whose record has all ``keys`` with their files present (a deleted output makes its item unfinished)."""
        keys = tuple(keys)
        return {i for i, r in self.records().items() if self.is_complete(r, keys)}

    # --- items

    def relpath(self, key: str, item_id: str) -> str:
        return f"{SUBDIRS[key]}/{item_id}.png"

    def save(self, key: str, item_id: str, array: np.ndarray) -> str:
        """Write one array as the item's ``key`` PNG (atomically); returns its path relative to the root.
        ``difference`` accepts float [0, 1] (scaled to 0..255); masks are bool; images uint8 RGB."""
        if key not in SUBDIRS:
            raise KeyError(f"unknown mask-folder key {key!r}; known: {list(SUBDIRS)}")
        data = np.asarray(array)
        if key == "difference" and data.dtype != np.uint8:
            data = difference_to_uint8(data)
        elif key in ("mask", "prelim", "refined"):
            data = data.astype(bool)
        relative = self.relpath(key, item_id)
        save_png(data, self.root / relative)
        return relative

    def adopt(self, record: dict) -> dict:
        """``record`` (absolute paths, as ``read_mask_folder`` gives) made local to this folder: path keys inside
        the root become relative, files elsewhere are copied in (PNGs byte for byte, other images converted to
        PNG). Toy-world paths outside the layout (``FOREIGN_PATH_KEYS``) are dropped when copying."""
        out = dict(record)
        item_id = out["id"]
        for key in PATH_KEYS:
            value = out.get(key)
            if not isinstance(value, str):
                continue
            source = Path(value).resolve()
            try:
                out[key] = source.relative_to(self.root).as_posix()
                continue
            except ValueError:
                pass
            target = self.root / self.relpath(key, item_id)
            if source.suffix.lower() == ".png":
                _copy_atomic(source, target)
            elif key in ("image", "inpainted"):
                save_png(load_image(source), target)
            else:
                save_png(load_mask(source), target)
            out[key] = self.relpath(key, item_id)
        copied = any(isinstance(record.get(k), str) and not self._inside(record[k]) for k in PATH_KEYS)
        if copied:
            for key in FOREIGN_PATH_KEYS:
                out.pop(key, None)
        return out

    def _inside(self, path: str) -> bool:
        try:
            Path(path).resolve().relative_to(self.root)
            return True
        except ValueError:
            return False

    def add(self, record: dict, arrays: dict[str, np.ndarray] | None = None) -> dict:
        """Save ``arrays`` (key -> array) as the item's files, then append the record (with their paths) to this
        process's part file; the appended record is what marks the item finished. Returns the record."""
        record = dict(record)
        for key, array in (arrays or {}).items():
            record[key] = self.save(key, record["id"], array)
        line = json.dumps(record, allow_nan=False) + "\n"
        if self.part.is_file() and self.part.stat().st_size:
            with open(self.part, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    line = "\n" + line  # a killed append left a torn line: keep it on its own (skipped) line
        with open(self.part, "a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())
        return record

    def merge(self, order: Sequence[str] | None = None) -> Path:
        """Write ``metadata.jsonl`` from the merged records (atomically), then delete the part files.

        ``order``: ids in the order they should appear (the source order); ids not in it follow in their previous
        order. Call it on one process, after every process has finished writing.
        """
        records = self.records()
        check_ids(list(records), str(self.root))
        ids = [i for i in (order or []) if i in records]
        listed = set(ids)
        previous = [r["id"] for r in self.base_records()]
        parts = sorted(self.root.glob(PART_GLOB))
        later = [r["id"] for part in parts for r in read_jsonl(part, tolerate_torn=True)]
        ids += [i for i in dict.fromkeys(previous + later) if i not in listed]
        text = "".join(json.dumps(records[i], allow_nan=False) + "\n" for i in ids)
        meta = self.root / METADATA
        tmp = meta.with_name(f".{meta.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, meta)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        for part in parts:
            part.unlink(missing_ok=True)
        return meta


__all__ = ["FOREIGN_PATH_KEYS", "METADATA", "MaskFolderError", "MaskFolderWriter", "PATH_KEYS", "SUBDIRS",
           "WRITTEN_BY", "check_ids", "difference_to_uint8", "load_difference", "load_image", "load_mask",
           "read_jsonl", "read_mask_folder"]
