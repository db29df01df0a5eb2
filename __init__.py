"""SegDrop: a ComfyUI node pack and a plain-Python library.

Inside ComfyUI this folder is loaded as a custom-node package and exports the V3 ``comfy_entrypoint``.
Outside ComfyUI (tests, the CLI, ``import segdrop``) nothing ComfyUI-specific is imported.
"""

__version__ = "0.1.0"

try:
    import comfy_api.latest  # noqa: F401  (present only inside ComfyUI)
except ModuleNotFoundError as error:
    if not (error.name or "").startswith("comfy"):
        raise
else:
    from .nodes import comfy_entrypoint  # noqa: F401

    __all__ = ["comfy_entrypoint"]
