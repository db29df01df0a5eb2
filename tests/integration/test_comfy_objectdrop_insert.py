"""SegDrop_ObjectDropInsert inside a real ComfyUI, through the executor, on the tiny 9-channel (SD-inpainting layout)
checkpoint (random weights: the output is noise, so these tests check plumbing, shapes, the untouched background
and the error messages, not insertion quality).

The object is fed the way a user would: a cut-out PNG whose alpha is 255 on the object and 0 around it, loaded with
Load Image, its MASK (1 - alpha, so 1 around the object) inverted with the core Invert Mask node.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.comfyui

INSERT = "SegDrop_ObjectDropInsert"
FAST = {"seed": 0, "steps": 2, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal", "mask_grow": 0,
        "context": 0.5, "resolution": 64, "effect_threshold": 0.08}


@pytest.fixture(scope="session")
def inpaint_checkpoint(comfyui_session) -> str:
    from segdrop.testing.comfy_checkpoint import ensure_tiny_checkpoint

    return ensure_tiny_checkpoint(comfyui_session, inpainting=True)


def insert_graph(checkpoint: str, pictures: dict[str, str], x: int = 16, y: int = 8, scale: float = 1.0) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": pictures["background"]}},
        "3": {"class_type": "LoadImage", "inputs": {"image": pictures["object"]}},
        "4": {"class_type": "InvertMask", "inputs": {"mask": ["3", 1]}},
        "5": {"class_type": INSERT, "inputs": {"model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2],
                                               "background": ["2", 0], "object_image": ["3", 0],
                                               "object_mask": ["4", 0], "x": x, "y": y, "scale": scale, **FAST}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
    }


def require_node(comfyui) -> None:
    if not comfyui.has_node(INSERT):
        pytest.fail(f"{INSERT} not registered (pack load errors: {comfyui.pack_error.strip()[:2000]})")


def test_insert_runs_and_keeps_the_background_far_from_the_object(comfyui, run_prompt, inpaint_checkpoint, insert_pictures,
                                                                   check_insert_result):
    require_node(comfyui)
    result = run_prompt(insert_graph(inpaint_checkpoint, insert_pictures, x=16, y=8))
    background = result["2"][0]
    check_insert_result(background, *result["5"])
    assert result.ui["6"]["images"] and result.ui["7"]["images"]


def test_object_outside_the_background_is_refused(comfyui, run_prompt, inpaint_checkpoint, insert_pictures):
    require_node(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(insert_graph(inpaint_checkpoint, insert_pictures, x=120, y=8))
    error = caught.value
    assert error.node_id == "5" and error.node_type == INSERT
    message = error.exception_message
    assert "lies partly outside the 128x128 background" in message and "x must be 0..104" in message, message


def test_text_to_image_checkpoint_is_refused(comfyui, run_prompt, tiny_checkpoint, insert_pictures):
    require_node(comfyui)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(insert_graph(tiny_checkpoint, insert_pictures))
    assert "4 input channels" in caught.value.exception_message
    assert "insertion checkpoint" in caught.value.exception_message
