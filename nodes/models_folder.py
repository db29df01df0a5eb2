"""The ``segdrop`` models folder (``ComfyUI/models/segdrop``, ``.safetensors``) in ComfyUI's ``folder_paths``, so
SegDrop's own model files (segmenters today) appear in node drop-downs and extra_model_paths.yaml can add places."""

from __future__ import annotations

import logging
import os

FOLDER = "segdrop"
EXTENSIONS = {".safetensors"}
log = logging.getLogger("segdrop")


def register_models_folder() -> bool:
    """Add ``<models_dir>/segdrop`` to ``folder_paths`` (idempotent). Paths already registered for ``segdrop`` (by
    extra_model_paths.yaml) are kept and get the ``.safetensors`` filter. False when ComfyUI is not importable."""
    try:
        import folder_paths
    except ImportError:
        return False
    default = os.path.join(folder_paths.models_dir, FOLDER)
    paths, extensions = folder_paths.folder_names_and_paths.get(FOLDER, ([], set()))
    paths = list(paths) if default in paths else [*paths, default]
    folder_paths.folder_names_and_paths[FOLDER] = (paths, set(extensions) | EXTENSIONS)
    return True


def segdrop_files() -> list[str]:
    """File names in the segdrop models folder(s); empty without ComfyUI."""
    try:
        import folder_paths
    except ImportError:
        return []
    register_models_folder()
    return list(folder_paths.get_filename_list(FOLDER))


def segdrop_file_path(name: str) -> str:
    """Full path of ``name`` in the segdrop models folder(s); outside ComfyUI an existing file path is accepted."""
    try:
        import folder_paths
    except ImportError:
        if os.path.isfile(name):
            return name
        raise FileNotFoundError(f"segmenter file {name!r} does not exist (outside ComfyUI give a file path)") from None
    register_models_folder()
    path = folder_paths.get_full_path(FOLDER, name)
    if path is None:
        where = ", ".join(folder_paths.get_folder_paths(FOLDER))
        raise FileNotFoundError(
            f"{name!r} is not in the segdrop models folder ({where}); copy a segmenter.safetensors written by "
            "`python -m segdrop.training segmenter` there and refresh the node list.")
    return path


register_models_folder()
