"""Checks of the shipped workflows' builder (``workflows/build_workflows.py``) against a real ComfyUI, shared by
the integration tests: the builder writes the UI workflows by hand, so its socket and widget lists for core nodes
must be ComfyUI's own or the frontend misplaces widget values."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any

PACK_DIR = Path(__file__).resolve().parents[1]
WIDGET_KINDS = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def load_build_workflows() -> ModuleType:
    """``workflows/build_workflows.py`` as a module (the workflows folder is not a package)."""
    spec = importlib.util.spec_from_file_location("segdrop_build_workflows", PACK_DIR / "workflows" / "build_workflows.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_core_nodes_match(comfyui: Any, build: ModuleType, node_types: Iterable[str]) -> None:
    """For each core node type: the builder's sockets are ComfyUI's non-widget inputs in ``/object_info``'s
    input_order, its widgets the widget inputs in that order with the frontend's extras (``control_after_generate``
    after a seed, ``upload`` after Load Image's image), and its output kinds ComfyUI's outputs."""
    for node_type in sorted(node_types):
        info = comfyui.node_info(node_type)
        specs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])

        def is_widget(name: str) -> bool:
            kind = specs[name][0]
            return isinstance(kind, list) or kind in WIDGET_KINDS

        expected = []
        for name in order:
            if is_widget(name):
                expected.append(name)
                options = specs[name][1] if len(specs[name]) > 1 else {}
                if options.get("control_after_generate"):
                    expected.append("control_after_generate")
                if options.get("image_upload"):
                    expected.append("upload")
        sockets, widgets, outputs = build.NODE_TYPES[node_type]
        assert widgets == expected, node_type
        assert [name for name, _ in sockets] == [name for name in order if not is_widget(name)], node_type
        assert [kind for _, kind in outputs] == list(info["output"]), node_type
