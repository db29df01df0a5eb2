"""SegDrop_SegmenterApply in real ComfyUI: the pack registers the ``segdrop`` models folder, a tiny segmenter saved
there appears in the node's drop-down and runs through the executor (LoadImage -> SegmenterApply -> MaskToImage ->
PreviewImage) with the masks ``predict_masks`` gives outside ComfyUI; a LoRA in the folder is refused clearly."""

from __future__ import annotations

import os
import uuid

import numpy as np
import pytest

pytestmark = pytest.mark.comfyui
NODE = "SegDrop_SegmenterApply"


def apply_graph(segmenter: str, image: str, threshold: float = 0.5) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": NODE, "inputs": {"segmenter": segmenter, "image": ["1", 0], "threshold": threshold,
                                             "postprocess": True}},
        "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }


@pytest.fixture(scope="module")
def segdrop_folder(comfyui_session):
    """The cache's segdrop folder, added to ComfyUI's ``segdrop`` models folder (registered by the pack); the
    files the tests write there are removed afterwards."""
    fp = comfyui_session.folder_paths
    assert "segdrop" in fp.folder_names_and_paths, "the pack did not register the segdrop models folder"
    paths, extensions = fp.folder_names_and_paths["segdrop"]
    assert os.path.join(fp.models_dir, "segdrop") in paths and ".safetensors" in extensions
    folder = comfyui_session.cache / "segdrop"
    folder.mkdir(parents=True, exist_ok=True)
    fp.add_model_folder_path("segdrop", str(folder))
    before = set(folder.iterdir())
    yield folder
    for path in set(folder.iterdir()) - before:
        path.unlink(missing_ok=True)


def test_segmenter_apply_runs_through_the_executor(comfyui, run_prompt, segdrop_folder, test_image):
    import torch
    from PIL import Image

    from segdrop.segment.segmenter import SegmentationUNet, load_segmenter, predict_masks, save_segmenter

    torch.manual_seed(0)
    name = f"segdrop_test_{uuid.uuid4().hex[:8]}.safetensors"
    save_segmenter(SegmentationUNet(base_width=4, depth=2, input_size=32), segdrop_folder / name,
                   {"training": {"recipe": "integration-test"}})
    assert name in comfyui.folder_paths.get_filename_list("segdrop")
    kind, options = comfyui.node_info(NODE)["input"]["required"]["segmenter"][:2]
    assert kind == "COMBO" and name in options["options"]

    result = run_prompt(apply_graph(name, test_image))
    mask = result["2"][0]
    assert mask.shape == (1, 128, 128) and set(mask.unique().tolist()) <= {0.0, 1.0}
    pixels = np.asarray(Image.open(comfyui.folder_paths.get_annotated_filepath(test_image)).convert("RGB"))
    want = predict_masks(load_segmenter(segdrop_folder / name), pixels[None].astype(np.float32) / 255.0)
    assert torch.equal(mask.bool().cpu(), want)


def test_segmenter_apply_refuses_a_lora(comfyui, run_prompt, segdrop_folder, test_image):
    import torch
    from safetensors.torch import save_file

    name = f"segdrop_lora_{uuid.uuid4().hex[:8]}.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(2, 2)}, str(segdrop_folder / name))
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(apply_graph(name, test_image))
    message = caught.value.exception_message
    assert "a LoRA" in message and "not a segmenter" in message and "python -m segdrop.training segmenter" in message
