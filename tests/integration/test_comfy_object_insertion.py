"""The shipped ``object_insertion`` workflow inside a real ComfyUI, through the executor, on an insertion model made
here by the `insertion` recipe: a diffusers SD1.x TEXT-TO-IMAGE folder around the diffusers twin of the tiny random
4-channel SD1.5 checkpoint (``segdrop.testing.comfy_checkpoint.diffusers_text_to_image_folder``) is widened to 9 input
channels and trained for 2 steps on 3 generated toy-world pairs (``--generate 3``); its ``unet_ldm.safetensors``
goes into ComfyUI's ``diffusion_models`` folder and is loaded by the core UNETLoader ("Load Diffusion Model"), CLIP
and VAE by CheckpointLoaderSimple from ``sd15_tiny``, as the workflow does (random weights: the output is noise, so
these tests check plumbing, shapes, the untouched background and the model detection, not insertion quality).

The object is fed as the workflow does: a cut-out PNG (alpha 255 on the object, 0 around it) through Load Image,
its MASK inverted by the core InvertMask.
"""

from __future__ import annotations

import shutil
import time
import uuid
from pathlib import Path

import pytest

from segdrop.testing.comfy_lora_checks import (
    captured_warnings,
    comfy_unet_forward,
    sample_inputs,
    twin_forward,
)
from segdrop.testing.workflow_checks import assert_core_nodes_match, load_build_workflows

pytestmark = pytest.mark.comfyui

PACK_DIR = Path(__file__).resolve().parents[2]
WORKFLOW = PACK_DIR / "workflows" / "api" / "object_insertion.api.json"
INSERT = "SegDrop_ObjectDropInsert"
FAST = {"steps": 2, "resolution": 64, "context": 0.5, "x": 16, "y": 8, "scale": 1.0}
TRAIN = ["--generate", "3", "--steps", "2", "--batch_size", "2", "--warmup_steps", "0", "--checkpointing_steps",
         "100", "--lr", "1e-4", "--num_threads", "1", "--save_dtype", "float32"]


@pytest.fixture(scope="module")
def trained(comfyui_session, tmp_path_factory) -> dict:
    """The insertion recipe (stage 1, full fine-tune) on a diffusers SD1.x text-to-image folder: 2 steps."""
    from segdrop.testing.comfy_checkpoint import diffusers_text_to_image_folder, tiny_diffusers_twin
    from segdrop.training import train_insertion

    with comfyui_session.activated():
        twin = tiny_diffusers_twin(comfyui_session, inpainting=False)
    root = tmp_path_factory.mktemp("insertion")
    base = diffusers_text_to_image_folder(root / "sd15", twin, ("a", "photo", "of"), 64)  # the empty prompt only
    out = root / "run"
    started = time.time()
    assert train_insertion.main(["--base", str(base), "--output_dir", str(out), *TRAIN]) == 0
    single = out / "unet_ldm.safetensors"
    assert single.is_file() and (out / "model" / "unet").is_dir()
    return {"out": out, "single": single, "twin": twin, "seconds": time.time() - started}


@pytest.fixture
def unet_name(comfyui, trained):
    """The trained ``unet_ldm.safetensors`` copied into a ComfyUI ``diffusion_models`` folder (removed after)."""
    folder = comfyui.cache / "diffusion_models"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"segdrop_insertion_unet_{uuid.uuid4().hex[:8]}.safetensors"
    shutil.copy2(trained["single"], folder / name)
    comfyui.folder_paths.add_model_folder_path("diffusion_models", str(folder))
    assert comfyui.folder_paths.get_full_path("diffusion_models", name) is not None
    yield name
    (folder / name).unlink(missing_ok=True)


def shipped_graph(comfyui, unet_name: str, pictures: dict[str, str]) -> tuple[dict, dict[str, str]]:
    """The shipped API workflow with the trained UNet, the tiny checkpoint, the pictures and fast sampling settings
    substituted; also ``{role: node_id}``."""
    from segdrop.testing.comfy_checkpoint import TINY_CHECKPOINT

    graph = comfyui.api_from_workflow_file(WORKFLOW, checkpoint=TINY_CHECKPOINT)
    missing = sorted({node["class_type"] for node in graph.values() if not comfyui.has_node(node["class_type"])})
    assert not missing, f"object_insertion uses unknown nodes: {missing}"
    by_type = {node["class_type"]: node_id for node_id, node in graph.items()}
    insert = by_type[INSERT]
    inputs = graph[insert]["inputs"]
    ids = {"insert": insert, "unet": by_type["UNETLoader"], "checkpoint": by_type["CheckpointLoaderSimple"],
           "background": inputs["background"][0], "object": inputs["object_image"][0],
           "invert": inputs["object_mask"][0]}
    graph[ids["unet"]]["inputs"]["unet_name"] = unet_name
    graph[ids["background"]]["inputs"]["image"] = pictures["background"]
    graph[ids["object"]]["inputs"]["image"] = pictures["object"]
    inputs.update(FAST)
    return graph, ids


def test_shipped_object_insertion_workflow_runs_on_the_recipes_model(comfyui, run_prompt, trained, unet_name, insert_pictures,
                                                                    check_insert_result):
    import comfy.supported_models
    from diffusers import UNet2DConditionModel
    from safetensors import safe_open

    if not comfyui.has_node(INSERT):
        pytest.fail(f"{INSERT} not registered (pack load errors: {comfyui.pack_error.strip()[:2000]})")
    with safe_open(str(trained["single"]), framework="pt") as handle:
        metadata = handle.metadata() or {}
        conv_in = handle.get_tensor("input_blocks.0.0.weight")
    assert metadata.get("recipe") == "insertion" and metadata.get("in_channels") == "9", metadata
    assert tuple(conv_in.shape[:2]) == (320, 9)

    graph, ids = shipped_graph(comfyui, unet_name, insert_pictures)
    assert graph[ids["invert"]]["class_type"] == "InvertMask" and graph[ids["invert"]]["inputs"]["mask"] == [ids["object"], 1]
    started = time.time()
    with captured_warnings() as warnings:
        result = run_prompt(graph, fresh_cache=True)
    seconds = time.time() - started

    # ComfyUI detected the recipe's UNet as SD1.5 in the SD-inpainting layout (9 input channels), with every key used
    model = result[ids["unet"]][0]
    config = model.model.model_config
    assert type(config) is comfy.supported_models.SD15
    assert config.unet_config["in_channels"] == 9 and config.inpaint_model()
    assert [w for w in warnings if w.startswith(("unet missing", "unet unexpected"))] == []

    background = result[ids["background"]][0]
    check_insert_result(background, *result[ids["insert"]])
    previews = [node_id for node_id, node in graph.items() if node["class_type"] == "PreviewImage"]
    assert len(previews) == 3 and all(result.ui.get(node_id, {}).get("images") for node_id in previews), result.ui

    # ... and it is the recipe's trained UNet: the same output as model/unet on a 9-channel input
    tuned = UNet2DConditionModel.from_pretrained(trained["out"] / "model" / "unet", local_files_only=True,
                                                 use_safetensors=True).float().eval()
    assert tuned.config.in_channels == 9
    x, t, ctx = sample_inputs(9)
    got = comfy_unet_forward(model, x, t, ctx)
    want = twin_forward(tuned, x, t, ctx)
    delta = (got - want).abs().max().item()
    print(f"\ninsertion recipe: 2 steps in {trained['seconds']:.1f} s; shipped workflow in {seconds:.1f} s; "
          f"UNETLoader vs model/unet {delta:.2e}")
    assert delta <= 1e-3


def test_core_nodes_of_the_insertion_workflow_match_comfyui(comfyui):
    """build_workflows' socket and widget lists for the core nodes object_insertion uses are ComfyUI's own
    (``/object_info``'s input_order; Load Image's upload button after its image widget)."""
    build = load_build_workflows()
    used = {node_type for node_type, _, _ in build.WORKFLOWS["object_insertion"].values()
            if not node_type.startswith("SegDrop_")}
    assert used == {"UNETLoader", "CheckpointLoaderSimple", "LoadImage", "InvertMask", "PreviewImage", "MaskToImage"}
    assert_core_nodes_match(comfyui, build, used)
    for node_type in sorted(used):
        assert build.DISPLAY_NAMES[node_type] == comfyui.nodes.NODE_DISPLAY_NAME_MAPPINGS.get(node_type, node_type)
