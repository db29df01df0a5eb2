"""Writes the example workflows from one description: UI format (``workflows/<name>.json``, drag into ComfyUI or
open from the template browser) and API format (``workflows/api/<name>.api.json``, for ``POST /prompt``).

Run ``python workflows/build_workflows.py`` after changing a node's widgets or a graph; tests check the files are
current. The API copies live in a subfolder because ComfyUI's template browser lists every ``*.json`` directly in
a custom node's ``workflows/`` folder (``app/custom_node_manager.py`` globs ``<pack>/workflows/*.json``, not
recursively), and an API-format file opened there gives an empty canvas.

Layout: a node's column is its depth in the data flow (longest chain of links from a loader), so links run left
to right; nodes in a column are stacked in id order. Each node's size is the frontend's own minimum for its
slots, widgets and image preview (``estimate_size``, the rule of litegraph's ``LGraphNode.computeSize``) plus
slack, so the frontend never has to grow a node on load (growing is what made nodes cover their neighbours).
Rows and columns are separated by gaps that also leave room for the title bar, which sits above ``pos``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
API_FOLDER = "api"
"""API-format copies go in ``workflows/api/``: the template browser does not scan subfolders."""

# node type -> (input sockets [(name, type)], widget names in order, output sockets [(name, type)])
NODE_TYPES: dict[str, tuple[list, list, list]] = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "UNETLoader": ([], ["unet_name", "weight_dtype"], [("MODEL", "MODEL")]),
    "LoadImage": ([], ["image", "upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "MaskToImage": ([("mask", "MASK")], [], [("IMAGE", "IMAGE")]),
    "InvertMask": ([("mask", "MASK")], [], [("MASK", "MASK")]),
    "LoraLoader": ([("model", "MODEL"), ("clip", "CLIP")], ["lora_name", "strength_model", "strength_clip"],
                   [("MODEL", "MODEL"), ("CLIP", "CLIP")]),
    "SaveImage": ([("images", "IMAGE")], ["filename_prefix"], []),
    "SegDrop_AttentionCapture": (
        [("model", "MODEL"), ("clip", "CLIP"), ("latent", "LATENT"), ("conditioning", "CONDITIONING")],
        ["prompt", "preset", "seed", "t0", "timesteps", "add_noise", "preview_word", "max_batch"],
        [("attention", "SEGDROP_ATTENTION"), ("preview", "IMAGE")],
    ),
    "SegDrop_GMMBinarize": (
        [("attention", "SEGDROP_ATTENTION"), ("image", "IMAGE"), ("ignore_mask", "MASK")],
        ["words", "majority_filter", "min_area", "threshold_shift"],
        [("mask", "MASK"), ("soft", "MASK"), ("preview", "IMAGE")],
    ),
    "SegDrop_KLMergeSegment": (
        [("attention", "SEGDROP_ATTENTION"), ("image", "IMAGE")],
        ["tau", "tau_mode", "grid", "iterations", "max_segments"],
        [("masks", "MASK"), ("labels", "MASK"), ("overlay", "IMAGE"), ("count", "INT"), ("names", "STRING")],
    ),
    "SegDrop_ObjectDropConditioning": (
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("vae", "VAE"), ("pixels", "IMAGE"), ("mask", "MASK")],
        [],
        [("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent", "LATENT")],
    ),
    "SegDrop_ObjectDropRemove": (
        [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE"), ("mask", "MASK")],
        ["seed", "steps", "cfg", "sampler_name", "scheduler", "mask_grow", "context", "resolution", "effect_threshold"],
        [("image", "IMAGE"), ("effect_mask", "MASK"), ("crop_preview", "IMAGE")],
    ),
    "SegDrop_ObjectDropInsert": (
        [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("background", "IMAGE"), ("object_image", "IMAGE"),
         ("object_mask", "MASK"), ("placement_mask", "MASK")],
        ["x", "y", "scale", "seed", "steps", "cfg", "sampler_name", "scheduler", "mask_grow", "context", "resolution",
         "effect_threshold"],
        [("image", "IMAGE"), ("composite", "IMAGE"), ("effect_mask", "MASK")],
    ),
    "SegDrop_BackgroundInpaintRefine": (
        [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("image", "IMAGE"), ("mask", "MASK")],
        ["prompt", "seed", "steps", "eta", "postprocess"],
        [("mask", "MASK"), ("background", "IMAGE"), ("difference", "IMAGE")],
    ),
    "SegDrop_SegmenterApply": ([("image", "IMAGE")], ["segmenter", "threshold", "postprocess"], [("mask", "MASK")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "KSampler": (
        [("model", "MODEL"), ("positive", "CONDITIONING"), ("negative", "CONDITIONING"), ("latent_image", "LATENT")],
        ["seed", "control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        [("LATENT", "LATENT")],
    ),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
}

# What the frontend draws besides slots and one-line widgets (ComfyUI frontend 1.27, litegraph LGraphNode.computeSize):
MULTILINE_WIDGETS = {("SegDrop_AttentionCapture", "prompt"), ("CLIPTextEncode", "text")}
"""Text areas: a DOM widget of at least 50 px."""
IMAGE_PREVIEW_NODES = {"LoadImage", "PreviewImage", "SaveImage"}
"""Nodes that show an image below their widgets (the frontend's image preview widget: at least 220 px)."""
DISPLAY_NAMES = {
    "CheckpointLoaderSimple": "Load Checkpoint",
    "UNETLoader": "Load Diffusion Model",
    "LoadImage": "Load Image",
    "VAEEncode": "VAE Encode",
    "PreviewImage": "Preview Image",
    "MaskToImage": "Convert Mask to Image",
    "InvertMask": "InvertMask",
    "SegDrop_AttentionCapture": "Attention Capture",
    "SegDrop_GMMBinarize": "GMM Binarize (concept distillation)",
    "SegDrop_KLMergeSegment": "KL Merge Segment (DiffSeg)",
    "LoraLoader": "Load LoRA",
    "SaveImage": "Save Image",
    "SegDrop_ObjectDropConditioning": "ObjectDrop Conditioning",
    "SegDrop_ObjectDropRemove": "ObjectDrop Remove",
    "SegDrop_ObjectDropInsert": "ObjectDrop Insert",
    "SegDrop_BackgroundInpaintRefine": "Background Inpaint Refine (concept distillation)",
    "SegDrop_SegmenterApply": "Segmenter Apply (concept distillation)",
    "CLIPTextEncode": "CLIP Text Encode (Prompt)",
    "EmptyLatentImage": "Empty Latent Image",
    "KSampler": "KSampler",
    "VAEDecode": "VAE Decode",
}
UI_ONLY_WIDGETS = {"upload", "control_after_generate"}
"""Widgets the frontend saves in ``widgets_values`` but does not send: LoadImage's upload button, and the
``control_after_generate`` value ("fixed", "randomize", ...) that follows a core seed widget."""

TITLE_HEIGHT = 30  # LiteGraph.NODE_TITLE_HEIGHT; drawn above a node's pos, not counted in its size
SLOT_HEIGHT = 20  # LiteGraph.NODE_SLOT_HEIGHT, one row per input/output socket pair
WIDGET_HEIGHT = 20 + 4  # LiteGraph.NODE_WIDGET_HEIGHT + spacing
MULTILINE_HEIGHT = 50 + 4
IMAGE_PREVIEW_HEIGHT = 220 + 4
WIDGETS_PADDING = 8  # added once below the widgets
NODE_MARGIN = 6  # added once at the bottom
NODE_MIN_WIDTH = 140  # LiteGraph.NODE_WIDTH; x1.5 with widgets
CHAR_WIDTH = 8.4  # 14 px font, 0.6 em per character (litegraph's fallback text measure)
WIDGET_PADDING = 42 + 2 * (15 + 6 + 10)  # a widget's value and arrows beside its label

HEIGHT_SLACK = 40  # each node is this much taller than the frontend's minimum (rounded up to 10 px)
WIDTH_SLACK = 40
MIN_WIDTH = 320  # nodes with widgets or an image: roomier than the minimum, so values and pictures are not cramped
COLUMN_GAP = 70  # between columns: room for the links (the whole graph stays narrow enough that the frontend's
# fit-to-view on a 1920 px window zooms no lower than its 0.57 level-of-detail threshold, so titles stay readable)
ROW_GAP = 50  # between a node's bottom and the next node's title bar
ORIGIN = (40, 80)


def estimate_size(node_type: str) -> tuple[int, int]:
    """The smallest size ``[width, height]`` the frontend gives a node of this type (title bar not included)."""
    sockets, widgets, outputs = NODE_TYPES[node_type]
    height = max(len(sockets), len(outputs), 1) * SLOT_HEIGHT
    if widgets or node_type in IMAGE_PREVIEW_NODES:
        height += sum(MULTILINE_HEIGHT if (node_type, name) in MULTILINE_WIDGETS else WIDGET_HEIGHT for name in widgets)
        height += IMAGE_PREVIEW_HEIGHT if node_type in IMAGE_PREVIEW_NODES else 0
        height += WIDGETS_PADDING
    height += NODE_MARGIN
    slot_text = max((len(n) for n, _ in sockets), default=0) + max((len(n) for n, _ in outputs), default=0)
    width = max(
        NODE_MIN_WIDTH * (1.5 if widgets else 1),
        TITLE_HEIGHT * 1.33 + CHAR_WIDTH * len(DISPLAY_NAMES[node_type]),
        CHAR_WIDTH * slot_text + 2 * SLOT_HEIGHT + 5,
        CHAR_WIDTH * max((len(n) for n in widgets), default=0) + WIDGET_PADDING,
    )
    return math.ceil(width), math.ceil(height)


def node_size(node_type: str) -> list[int]:
    """The size written to the UI file: the estimate plus slack, rounded up to 10 px."""
    width, height = estimate_size(node_type)
    roomy = bool(NODE_TYPES[node_type][1]) or node_type in IMAGE_PREVIEW_NODES
    width = max(MIN_WIDTH if roomy else 0, 10 * math.ceil((width + WIDTH_SLACK) / 10))
    return [width, 10 * math.ceil((height + HEIGHT_SLACK) / 10)]


def bounding_box(node: dict) -> tuple[float, float, float, float]:
    """``(left, top, right, bottom)`` of a UI node as drawn, title bar included."""
    (x, y), (width, height) = node["pos"], node["size"]
    return x, y - TITLE_HEIGHT, x + width, y + height


def depths(graph: dict) -> dict[int, int]:
    """Each node's column: the longest chain of links from a node without inputs."""
    depth: dict[int, int] = {}

    def visit(node_id: int) -> int:
        if node_id not in depth:
            sources = [source for source, _ in graph[node_id][2].values()]
            depth[node_id] = 1 + max((visit(source) for source in sources), default=-1)
        return depth[node_id]

    for node_id in graph:
        visit(node_id)
    return depth


def layout(graph: dict) -> dict[int, tuple[list[int], list[int]]]:
    """``{node_id: (pos, size)}``: columns by data-flow depth, left to right; nodes stacked in id order."""
    depth = depths(graph)
    columns = [sorted(n for n in graph if depth[n] == column) for column in range(max(depth.values()) + 1)]
    placed = {}
    x = ORIGIN[0]
    for column in columns:
        sizes = {node_id: node_size(graph[node_id][0]) for node_id in column}
        y = ORIGIN[1]
        for node_id in column:
            placed[node_id] = ([x, y], sizes[node_id])
            y += sizes[node_id][1] + ROW_GAP + TITLE_HEIGHT
        x += max(width for width, _ in sizes.values()) + COLUMN_GAP
    return placed


CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
IMAGE = "example.png"
INPAINTING_CHECKPOINT = "sd-v1-5-inpainting.ckpt"
"""ObjectDrop removal runs on an SD inpainting model (9 UNet input channels) plus the removal LoRA."""
REMOVAL_LORA = "objectdrop_removal_sd15.safetensors"
REMOVAL_IMAGE = "example_with_alpha_mask.png"
"""Load Image's MASK is the PNG's alpha (paint the object in ComfyUI's mask editor)."""
INSERTION_UNET = "objectdrop_insertion_sd15.safetensors"
"""The ObjectDrop insertion model in ``models/diffusion_models``: an SD1.5 text-to-image UNet widened to the
SD-inpainting input layout (9 channels: latent, mask, composite latent) and trained by ``python -m segdrop.training
insertion --base <SD1.5 diffusers folder> ...``; its ``unet_ldm.safetensors`` (ComfyUI/LDM key layout) is this file.
Load Diffusion Model detects it as SD1.5 with 9 input channels; CLIP and VAE come from the SD1.5 checkpoint it was
widened from (``CHECKPOINT``: the insertion recipe freezes the text encoder and never touches the VAE)."""
INSERTION_BACKGROUND = "example.png"
INSERTION_OBJECT = "example_object_cutout.png"
"""A cut-out PNG: alpha 255 on the object, 0 around it. Load Image's MASK is 1 - alpha (1 AROUND the object), so an
InvertMask turns it into the object mask ObjectDrop Insert wants."""
INSERTION_POSITION = {"x": 128, "y": 192, "scale": 1.0}
"""Where the trimmed cut-out's top-left corner goes in the background (pixels), and its resize factor."""


BACKGROUND_LORA = "concept_distillation_background_sd15.safetensors"
"""m′ of concept distillation as a LoRA over the base checkpoint (``python -m segdrop.training background
--lora_rank R`` exports one for SD-layout UNets; the paper fine-tunes the whole UNet: then load that checkpoint)."""
FOREGROUND_PROMPT, BACKGROUND_PROMPT = "a photo of a bird", "a photo of a background"
GUIDANCE_SCALE = 3.0
"""Concept distillation guidance s (the paper: FID 9.8 at s = 1, 11.3 at s = 3, 22.3 at s = 7.5 on CUB).

ε̂ = ε(y_b) + s·(ε(y_f) − ε(y_b)) is exactly KSampler's CFG with y_f as positive, y_b as negative and cfg = s.
KSampler's cfg goes from 0 to 100: s = 0 samples y_b alone (a background); s = 1 is y_f alone (ComfyUI then
skips the negative pass); s > 1 pushes away from the background. A negative s (bird-free backgrounds in the
paper) is the same formula with the prompts swapped: ε̂ = ε(y_f) + (1 − s)·(ε(y_b) − ε(y_f)), i.e. y_b as positive,
y_f as negative and cfg = 1 − s."""


def loader_nodes() -> dict:
    return {
        1: ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, {}),
        2: ("LoadImage", {"image": IMAGE, "upload": "image"}, {}),
        3: ("VAEEncode", {}, {"pixels": (2, 0), "vae": (1, 2)}),
    }


WORKFLOWS: dict[str, dict] = {
    "foreground_mask": {
        **loader_nodes(),
        4: ("SegDrop_AttentionCapture", {"prompt": "a photo of a bird", "preset": "concept distillation", "seed": 52,
                                         "t0": 40, "timesteps": "300", "add_noise": False, "preview_word": "bird",
                                         "max_batch": 8},
            {"model": (1, 0), "clip": (1, 1), "latent": (3, 0)}),
        5: ("SegDrop_GMMBinarize", {"words": "bird", "majority_filter": True, "min_area": 0, "threshold_shift": 0.0},
            {"attention": (4, 0), "image": (2, 0)}),
        6: ("PreviewImage", {}, {"images": (4, 1)}),
        7: ("PreviewImage", {}, {"images": (5, 2)}),
        8: ("MaskToImage", {}, {"mask": (5, 0)}),
        9: ("PreviewImage", {}, {"images": (8, 0)}),
    },
    "zero_shot_segmentation": {
        **loader_nodes(),
        4: ("SegDrop_AttentionCapture", {"prompt": "", "preset": "DiffSeg", "seed": 0, "t0": 40, "timesteps": "300",
                                         "add_noise": False, "preview_word": "", "max_batch": 8},
            {"model": (1, 0), "clip": (1, 1), "latent": (3, 0)}),
        5: ("SegDrop_KLMergeSegment", {"tau": 1.1, "tau_mode": "raw", "grid": 16, "iterations": 3, "max_segments": 0},
            {"attention": (4, 0), "image": (2, 0)}),
        6: ("PreviewImage", {}, {"images": (4, 1)}),
        7: ("PreviewImage", {}, {"images": (5, 2)}),
    },
    "object_removal": {
        1: ("CheckpointLoaderSimple", {"ckpt_name": INPAINTING_CHECKPOINT}, {}),
        2: ("LoraLoader", {"lora_name": REMOVAL_LORA, "strength_model": 1.0, "strength_clip": 1.0},
            {"model": (1, 0), "clip": (1, 1)}),
        3: ("LoadImage", {"image": REMOVAL_IMAGE, "upload": "image"}, {}),
        4: ("SegDrop_ObjectDropRemove", {"seed": 0, "steps": 50, "cfg": 1.0, "sampler_name": "euler",
                                         "scheduler": "normal", "mask_grow": 8, "context": 1.0, "resolution": 512,
                                         "effect_threshold": 0.08},
            {"model": (2, 0), "clip": (2, 1), "vae": (1, 2), "image": (3, 0), "mask": (3, 1)}),
        5: ("SaveImage", {"filename_prefix": "objectdrop"}, {"images": (4, 0)}),
        6: ("PreviewImage", {}, {"images": (4, 2)}),
        7: ("MaskToImage", {}, {"mask": (4, 1)}),
        8: ("PreviewImage", {}, {"images": (7, 0)}),
    },
    # ObjectDrop insertion (the paper's bootstrapped insertion model): the cut-out is pasted at (x, y), the insertion
    # UNet (Load Diffusion Model) samples the crop from the naive composite and the object mask with the empty prompt
    # (50 steps, cfg 1, as the paper), and the result is stitched back inside the effect-aware mask.
    "object_insertion": {
        1: ("UNETLoader", {"unet_name": INSERTION_UNET, "weight_dtype": "default"}, {}),
        2: ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, {}),
        3: ("LoadImage", {"image": INSERTION_BACKGROUND, "upload": "image"}, {}),
        4: ("LoadImage", {"image": INSERTION_OBJECT, "upload": "image"}, {}),
        5: ("InvertMask", {}, {"mask": (4, 1)}),
        6: ("SegDrop_ObjectDropInsert", {**INSERTION_POSITION, "seed": 0, "steps": 50, "cfg": 1.0,
                                         "sampler_name": "euler", "scheduler": "normal", "mask_grow": 0,
                                         "context": 1.0, "resolution": 512, "effect_threshold": 0.08},
            {"model": (1, 0), "clip": (2, 1), "vae": (2, 2), "background": (3, 0), "object_image": (4, 0),
             "object_mask": (5, 0)}),
        7: ("PreviewImage", {}, {"images": (6, 0)}),
        8: ("PreviewImage", {}, {"images": (6, 1)}),
        9: ("MaskToImage", {}, {"mask": (6, 2)}),
        10: ("PreviewImage", {}, {"images": (9, 0)}),
    },
    # Concept distillation end to end: M_pre from the pretrained model's attention (as the paper, not from m′), then
    # m′ (the base + its background LoRA) repaints M_pre and the refined mask keeps what changed.
    "foreground_refine": {
        **loader_nodes(),
        4: ("SegDrop_AttentionCapture", {"prompt": FOREGROUND_PROMPT, "preset": "concept distillation", "seed": 52,
                                         "t0": 40, "timesteps": "300", "add_noise": False, "preview_word": "bird",
                                         "max_batch": 8},
            {"model": (1, 0), "clip": (1, 1), "latent": (3, 0)}),
        5: ("SegDrop_GMMBinarize", {"words": "bird", "majority_filter": True, "min_area": 0, "threshold_shift": 0.0},
            {"attention": (4, 0), "image": (2, 0)}),
        6: ("LoraLoader", {"lora_name": BACKGROUND_LORA, "strength_model": 1.0, "strength_clip": 1.0},
            {"model": (1, 0), "clip": (1, 1)}),
        7: ("SegDrop_BackgroundInpaintRefine", {"prompt": BACKGROUND_PROMPT, "seed": 0, "steps": 50, "eta": 0.0,
                                                "postprocess": False},
            {"model": (6, 0), "clip": (6, 1), "vae": (1, 2), "image": (2, 0), "mask": (5, 0)}),
        8: ("PreviewImage", {}, {"images": (5, 2)}),
        9: ("MaskToImage", {}, {"mask": (7, 0)}),
        10: ("PreviewImage", {}, {"images": (9, 0)}),
        11: ("PreviewImage", {}, {"images": (7, 1)}),
        12: ("PreviewImage", {}, {"images": (7, 2)}),
    },
    # Concept distillation guidance with core nodes only (see GUIDANCE_SCALE): m′ samples y_f guided away from y_b,
    # with the paper's DDIM (ComfyUI's ddim sampler on the ddim_uniform grid, 50 steps).
    "distillation_guidance": {
        1: ("CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, {}),
        2: ("LoraLoader", {"lora_name": BACKGROUND_LORA, "strength_model": 1.0, "strength_clip": 1.0},
            {"model": (1, 0), "clip": (1, 1)}),
        3: ("CLIPTextEncode", {"text": FOREGROUND_PROMPT}, {"clip": (2, 1)}),
        4: ("CLIPTextEncode", {"text": BACKGROUND_PROMPT}, {"clip": (2, 1)}),
        5: ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, {}),
        6: ("KSampler", {"seed": 0, "control_after_generate": "fixed", "steps": 50, "cfg": GUIDANCE_SCALE,
                         "sampler_name": "ddim", "scheduler": "ddim_uniform", "denoise": 1.0},
            {"model": (2, 0), "positive": (3, 0), "negative": (4, 0), "latent_image": (5, 0)}),
        7: ("VAEDecode", {}, {"samples": (6, 0), "vae": (1, 2)}),
        8: ("SaveImage", {"filename_prefix": "distillation_guidance"}, {"images": (7, 0)}),
    },
}


def api_format(graph: dict) -> dict:
    prompt = {}
    for node_id, (node_type, widgets, links) in graph.items():
        inputs = {name: value for name, value in widgets.items() if name not in UI_ONLY_WIDGETS}
        inputs.update({name: [str(source), slot] for name, (source, slot) in links.items()})
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs, "_meta": {"title": node_type}}
    return prompt


def ui_format(graph: dict) -> dict:
    links, nodes = [], []
    placed = layout(graph)
    outgoing: dict[tuple[int, int], list[int]] = {}
    for target, (_, _, node_links) in graph.items():
        for name, (source, slot) in node_links.items():
            links.append([len(links) + 1, source, slot, target, name])
            outgoing.setdefault((source, slot), []).append(len(links))
    for position, (node_id, (node_type, widgets, node_links)) in enumerate(graph.items()):
        sockets, widget_names, outputs = NODE_TYPES[node_type]
        link_of = {link[4]: link[0] for link in links if link[3] == node_id}
        node = {
            "id": node_id,
            "type": node_type,
            "pos": placed[node_id][0],
            "size": placed[node_id][1],
            "flags": {},
            "order": position,
            "mode": 0,
            "inputs": [{"name": name, "type": kind, "link": link_of.get(name)} for name, kind in sockets],
            "outputs": [{"name": name, "type": kind, "links": outgoing.get((node_id, slot), []), "slot_index": slot}
                        for slot, (name, kind) in enumerate(outputs)],
            "properties": {"Node name for S&R": node_type},
            "widgets_values": [widgets[name] for name in widget_names],
        }
        nodes.append(node)
    types = {node_id: NODE_TYPES[node_type] for node_id, (node_type, _, _) in graph.items()}
    ui_links = []
    for link_id, source, slot, target, name in links:
        names = [n for n, _ in types[target][0]]
        ui_links.append([link_id, source, slot, target, names.index(name), types[source][2][slot][1]])
    return {"last_node_id": max(graph), "last_link_id": len(links), "nodes": nodes, "links": ui_links,
            "groups": [], "config": {}, "extra": {}, "version": 0.4}


def ui_path(name: str, folder: Path = HERE) -> Path:
    return folder / f"{name}.json"


def api_path(name: str, folder: Path = HERE) -> Path:
    return folder / API_FOLDER / f"{name}.api.json"


def write_all(folder: Path = HERE) -> list[Path]:
    written = []
    for name, graph in WORKFLOWS.items():
        for path, data in ((ui_path(name, folder), ui_format(graph)), (api_path(name, folder), api_format(graph))):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written




def write_object_removal_thumbnail(folder: Path = HERE) -> Path:
    """``object_removal.jpg``: real output of the committed toy ObjectDrop model (``models/toy_removal``) on a
    held-out removal scene with a shadow and a reflection: input | object mask | removal | true counterfactual.
    Drawn by ``build_thumbnails.write_object_removal`` (see ``removal_tiles`` there), with the other cards."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("segdrop_build_thumbnails", HERE / "build_thumbnails.py")
    thumbs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(thumbs)
    return thumbs.write_object_removal(folder)


if __name__ == "__main__":
    for path in write_all():
        print(path)
