"""Writes the example workflows in both formats from one description: UI (drag into ComfyUI) and API (POST /prompt).

Run ``python workflows/build_workflows.py`` after changing a node's widgets; tests check the files are current.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

# node type -> (input sockets [(name, type)], widget names in order, output sockets [(name, type)])
NODE_TYPES: dict[str, tuple[list, list, list]] = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "LoadImage": ([], ["image", "upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "MaskToImage": ([("mask", "MASK")], [], [("IMAGE", "IMAGE")]),
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
}

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
IMAGE = "example.png"


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
}


def api_format(graph: dict) -> dict:
    prompt = {}
    for node_id, (node_type, widgets, links) in graph.items():
        inputs = {name: value for name, value in widgets.items() if name != "upload"}
        inputs.update({name: [str(source), slot] for name, (source, slot) in links.items()})
        prompt[str(node_id)] = {"class_type": node_type, "inputs": inputs, "_meta": {"title": node_type}}
    return prompt


def ui_format(graph: dict) -> dict:
    links, nodes = [], []
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
            "pos": [40 + 360 * (position // 3), 60 + 260 * (position % 3)],
            "size": [320, 200],
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


def write_all(folder: Path = HERE) -> list[Path]:
    written = []
    for name, graph in WORKFLOWS.items():
        for path, data in ((folder / f"{name}.json", ui_format(graph)), (folder / f"{name}.api.json", api_format(graph))):
            path.write_text(json.dumps(data, indent=2) + "\n")
            written.append(path)
    return written


if __name__ == "__main__":
    for path in write_all():
        print(path)
