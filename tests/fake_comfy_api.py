"""A minimal stand-in for ``comfy_api.latest`` (V3 node API) so node glue is tested without ComfyUI.

It records what schemas declare; the integration tests check the same nodes against the real API.
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from typing import Any


class _Socket:
    def __init__(self, io_type: str, id: str | None = None, **options: Any):
        self.io_type, self.id, self.options = io_type, id, options
        self.tooltip = options.get("tooltip")
        self.optional = options.get("optional", False)


def _socket_type(io_type: str) -> type:
    class Input(_Socket):
        def __init__(self, id: str, **options: Any):
            super().__init__(io_type, id, **options)

    class Output(_Socket):
        def __init__(self, id: str | None = None, **options: Any):
            super().__init__(io_type, id, **options)

    return type(io_type, (), {"Input": Input, "Output": Output, "io_type": io_type})


@dataclass
class Schema:
    node_id: str
    display_name: str = ""
    category: str = ""
    description: str = ""
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)


class NodeOutput:
    def __init__(self, *values: Any, ui: Any = None):
        self.result, self.ui = values, ui


class ComfyNode:
    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError


class ComfyExtension:
    async def get_node_list(self) -> list:
        raise NotImplementedError


def build_module() -> types.ModuleType:
    io = types.SimpleNamespace(
        Schema=Schema, NodeOutput=NodeOutput, ComfyNode=ComfyNode, Custom=_socket_type,
        **{name: _socket_type(name.upper()) for name in
           ("Model", "Clip", "Latent", "Image", "Mask", "Conditioning", "String", "Int", "Float", "Boolean", "Combo", "Vae")},
    )
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, ComfyExtension
    return latest
