"""Socket types shared by the pack's nodes."""

from comfy_api.latest import io

Attention = io.Custom("SEGDROP_ATTENTION")
"""An ``AttentionMaps`` (attention_patch/maps.py): averaged self- and cross-attention of one capture."""

CATEGORY = "SegDrop"
