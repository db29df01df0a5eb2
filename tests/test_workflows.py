"""The shipped workflows are current, well-linked, laid out without overlaps, use the nodes' real widget order,
and only UI-format files (each with a thumbnail) sit where ComfyUI's template browser looks."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

import segdrop

FOLDER = Path(segdrop.__file__).parent / "workflows"
_spec = importlib.util.spec_from_file_location("segdrop_build_workflows", FOLDER / "build_workflows.py")
build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(build)
WIDGET_TYPES = {"STRING", "INT", "FLOAT", "BOOLEAN", "COMBO"}


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_files_are_generated_from_the_description(name, tmp_path):
    build.write_all(tmp_path)
    for path in (build.ui_path, build.api_path):
        assert json.loads(path(name, tmp_path).read_text()) == json.loads(path(name, FOLDER).read_text())


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_links_point_at_existing_nodes_and_slots(name):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    nodes = {node["id"]: node for node in ui["nodes"]}
    assert ui["version"] == 0.4
    for link_id, source, slot, target, target_slot, kind in ui["links"]:
        assert nodes[source]["outputs"][slot]["type"] == kind
        assert nodes[target]["inputs"][target_slot]["type"] == kind
        assert nodes[target]["inputs"][target_slot]["link"] == link_id


def test_pack_node_widgets_match_the_schemas(nodes):
    from segdrop.nodes import node_list

    for cls in node_list():
        schema = cls.define_schema()
        sockets, widgets, outputs = build.NODE_TYPES[schema.node_id]
        assert widgets == [s.id for s in schema.inputs if s.io_type in WIDGET_TYPES]
        assert [name for name, _ in sockets] == [s.id for s in schema.inputs if s.io_type not in WIDGET_TYPES]
        assert [kind for _, kind in outputs] == [s.io_type for s in schema.outputs]


def is_api_format(data) -> bool:
    return isinstance(data, dict) and bool(data) and all(
        isinstance(node, dict) and "class_type" in node for node in data.values()
    )


def test_template_browser_folder_holds_only_ui_workflows_with_thumbnails():
    """ComfyUI lists every ``<pack>/workflows/*.json`` as a template (not subfolders) and shows ``<name>.jpg``."""
    listed = sorted(FOLDER.glob("*.json"))
    assert [path.stem for path in listed] == sorted(build.WORKFLOWS)
    for path in listed:
        data = json.loads(path.read_text())
        assert not is_api_format(data), f"{path.name} is API format: it belongs in workflows/{build.API_FOLDER}/"
        assert data["version"] == 0.4 and data["nodes"], path.name
        thumbnail = path.with_suffix(".jpg")
        assert thumbnail.is_file(), f"{path.name} has no thumbnail {thumbnail.name}"
        assert thumbnail.stat().st_size < 50_000
        assert thumbnail.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG
    for name in build.WORKFLOWS:
        assert is_api_format(json.loads(build.api_path(name, FOLDER).read_text()))


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_nodes_are_at_least_as_large_as_the_frontend_draws_them(name):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    for node in ui["nodes"]:
        width, height = build.estimate_size(node["type"])
        assert node["size"][0] >= width and node["size"][1] >= height, (node["id"], node["type"], node["size"])
        # The estimate counts every slot row and widget the node has in the file.
        sockets, widgets, outputs = build.NODE_TYPES[node["type"]]
        assert len(node["widgets_values"]) == len(widgets)
        rows = max(len(node["inputs"]), len(node["outputs"]), 1)
        assert height >= rows * build.SLOT_HEIGHT + len(widgets) * build.WIDGET_HEIGHT + build.NODE_MARGIN


def test_the_size_estimate_matches_the_frontend_for_attention_capture():
    """Measured in ComfyUI frontend 1.27.10: a loaded Attention Capture node is 316 px tall."""
    assert build.estimate_size("SegDrop_AttentionCapture")[1] == 316


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_no_two_nodes_overlap(name):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    boxes = {node["id"]: build.bounding_box(node) for node in ui["nodes"]}
    assert all(top >= 0 and left >= 0 for left, top, _, _ in boxes.values())
    for first in boxes:
        for second in boxes:
            if first < second:
                (l1, t1, r1, b1), (l2, t2, r2, b2) = boxes[first], boxes[second]
                apart = r1 + 20 <= l2 or r2 + 20 <= l1 or b1 + 20 <= t2 or b2 + 20 <= t1
                assert apart, f"{name}: nodes {first} and {second} overlap (or are under 20 px apart)"


@pytest.mark.parametrize("name", sorted(build.WORKFLOWS))
def test_links_run_left_to_right(name):
    ui = json.loads((FOLDER / f"{name}.json").read_text())
    nodes = {node["id"]: node for node in ui["nodes"]}
    for _, source, _, target, _, _ in ui["links"]:
        assert nodes[source]["pos"][0] + nodes[source]["size"][0] < nodes[target]["pos"][0], (source, target)


def test_object_removal_workflow_wiring():
    """Load Checkpoint (inpainting) -> Load LoRA -> ObjectDrop Remove <- Load Image (IMAGE and its alpha MASK);
    the result is saved, the crop preview and the effect mask are previewed."""
    api = json.loads(build.api_path("object_removal", FOLDER).read_text())
    by_type = {node["class_type"]: node_id for node_id, node in api.items()}
    remove = api[by_type["SegDrop_ObjectDropRemove"]]["inputs"]
    lora, loader, image = by_type["LoraLoader"], by_type["CheckpointLoaderSimple"], by_type["LoadImage"]
    assert api[lora]["inputs"]["model"] == [loader, 0] and api[lora]["inputs"]["clip"] == [loader, 1]
    assert remove["model"] == [lora, 0] and remove["clip"] == [lora, 1] and remove["vae"] == [loader, 2]
    assert remove["image"] == [image, 0] and remove["mask"] == [image, 1]
    assert remove["steps"] == 50 and remove["cfg"] == 1.0 and remove["resolution"] == 512
    assert api[by_type["SaveImage"]]["inputs"]["images"] == [by_type["SegDrop_ObjectDropRemove"], 0]
    mask_image = by_type["MaskToImage"]
    assert api[mask_image]["inputs"]["mask"] == [by_type["SegDrop_ObjectDropRemove"], 1]
    previewed = {tuple(node["inputs"]["images"]) for node in api.values() if node["class_type"] == "PreviewImage"}
    assert previewed == {(by_type["SegDrop_ObjectDropRemove"], 2), (mask_image, 0)}


def test_foreground_refine_workflow_wiring():
    """M_pre from the pretrained checkpoint's attention (Attention Capture -> GMM Binarize, as the paper), then m′
    (the checkpoint through Load LoRA) repaints it in Background Inpaint Refine; its outputs are previewed."""
    api = json.loads(build.api_path("foreground_refine", FOLDER).read_text())
    by_type = {node["class_type"]: node_id for node_id, node in api.items()}
    loader, lora, image = by_type["CheckpointLoaderSimple"], by_type["LoraLoader"], by_type["LoadImage"]
    capture, gmm = by_type["SegDrop_AttentionCapture"], by_type["SegDrop_GMMBinarize"]
    refine = by_type["SegDrop_BackgroundInpaintRefine"]
    assert api[capture]["inputs"]["model"] == [loader, 0] and api[capture]["inputs"]["preset"] == "concept distillation"
    assert api[gmm]["inputs"]["attention"] == [capture, 0]
    assert api[lora]["inputs"]["model"] == [loader, 0] and api[lora]["inputs"]["clip"] == [loader, 1]
    inputs = api[refine]["inputs"]
    assert inputs["model"] == [lora, 0] and inputs["clip"] == [lora, 1] and inputs["vae"] == [loader, 2]
    assert inputs["image"] == [image, 0] and inputs["mask"] == [gmm, 0]
    assert inputs["prompt"] == "a photo of a background" and inputs["steps"] == 50 and inputs["eta"] == 0.0
    previewed = {tuple(node["inputs"]["images"]) for node in api.values() if node["class_type"] == "PreviewImage"}
    mask_image = by_type["MaskToImage"]
    assert api[mask_image]["inputs"]["mask"] == [refine, 0]
    assert previewed == {(gmm, 2), (mask_image, 0), (refine, 1), (refine, 2)}


def test_distillation_guidance_workflow_is_core_ksampler_cfg_between_the_two_prompts():
    """ε̂ = ε(y_b) + s·(ε(y_f) − ε(y_b)): y_f positive, y_b negative, cfg = s, the paper's DDIM (50, uniform grid)."""
    api = json.loads(build.api_path("distillation_guidance", FOLDER).read_text())
    assert all(not node["class_type"].startswith("SegDrop_") for node in api.values())
    by_type = {node["class_type"]: node_id for node_id, node in api.items()}
    sampler = api[by_type["KSampler"]]["inputs"]
    texts = {node_id: node["inputs"]["text"] for node_id, node in api.items() if node["class_type"] == "CLIPTextEncode"}
    assert texts[sampler["positive"][0]] == "a photo of a bird"
    assert texts[sampler["negative"][0]] == "a photo of a background"
    assert sampler["model"] == [by_type["LoraLoader"], 0] and sampler["cfg"] == build.GUIDANCE_SCALE
    assert (sampler["sampler_name"], sampler["scheduler"], sampler["steps"]) == ("ddim", "ddim_uniform", 50)
    assert "control_after_generate" not in sampler  # a UI-only value (after the seed widget), never sent
    ui = json.loads((FOLDER / "distillation_guidance.json").read_text())
    ksampler = next(node for node in ui["nodes"] if node["type"] == "KSampler")
    assert ksampler["widgets_values"][:3] == [0, "fixed", 50]  # seed, control_after_generate, steps


def test_object_insertion_workflow_wiring():
    """Load Diffusion Model (the insertion UNet) + Load Checkpoint (CLIP, VAE) -> ObjectDrop Insert <- Load Image
    (background) and Load Image (cut-out, its alpha MASK through InvertMask); image, composite and the effect mask
    are previewed; the paper's sampling (50 steps, cfg 1, 512 px)."""
    api = json.loads(build.api_path("object_insertion", FOLDER).read_text())
    by_type = {node["class_type"]: node_id for node_id, node in api.items()}
    insert_id = by_type["SegDrop_ObjectDropInsert"]
    insert = api[insert_id]["inputs"]
    unet, loader, invert = by_type["UNETLoader"], by_type["CheckpointLoaderSimple"], by_type["InvertMask"]
    assert api[unet]["inputs"] == {"unet_name": build.INSERTION_UNET, "weight_dtype": "default"}
    assert insert["model"] == [unet, 0] and insert["clip"] == [loader, 1] and insert["vae"] == [loader, 2]
    images = {node["inputs"]["image"]: node_id for node_id, node in api.items() if node["class_type"] == "LoadImage"}
    background, cutout = images[build.INSERTION_BACKGROUND], images[build.INSERTION_OBJECT]
    assert background != cutout and "upload" not in api[background]["inputs"]
    assert insert["background"] == [background, 0] and insert["object_image"] == [cutout, 0]
    assert insert["object_mask"] == [invert, 0] and api[invert]["inputs"] == {"mask": [cutout, 1]}
    assert "placement_mask" not in insert
    assert insert["steps"] == 50 and insert["cfg"] == 1.0 and insert["resolution"] == 512 and insert["mask_grow"] == 0
    mask_image = by_type["MaskToImage"]
    assert api[mask_image]["inputs"]["mask"] == [insert_id, 2]
    previewed = {tuple(node["inputs"]["images"]) for node in api.values() if node["class_type"] == "PreviewImage"}
    assert previewed == {(insert_id, 0), (insert_id, 1), (mask_image, 0)}
    ui = json.loads((FOLDER / "object_insertion.json").read_text())
    unet_node = next(node for node in ui["nodes"] if node["type"] == "UNETLoader")
    assert unet_node["widgets_values"] == [build.INSERTION_UNET, "default"]
