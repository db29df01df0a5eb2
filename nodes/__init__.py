"""ComfyUI glue (V3 node API). Imported only inside ComfyUI: the algorithms live in ComfyUI-free modules."""

from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from .capture import AttentionCapture
from .objectdrop import ObjectDropConditioning, ObjectDropRemove
from .objectdrop_insert import ObjectDropInsert
from .refine import BackgroundInpaintRefine
from .segment import GMMBinarize, KLMergeSegment
from .segmenter import SegmenterApply


def node_list() -> list[type[io.ComfyNode]]:
    return [AttentionCapture, GMMBinarize, KLMergeSegment, ObjectDropConditioning, ObjectDropRemove,
            ObjectDropInsert, BackgroundInpaintRefine, SegmenterApply]


class SegDropExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return node_list()


async def comfy_entrypoint() -> SegDropExtension:
    return SegDropExtension()
