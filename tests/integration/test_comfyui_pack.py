"""SegDrop inside a real ComfyUI, in-process: pack loading, node definitions and graphs through the executor.

Needs ``COMFYUI_PATH`` (see conftest.py); everything here is skipped without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.comfyui

CAPTURE = "SegDrop_AttentionCapture"
PACK_DIR = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------------
# Graph builders (API format)


def core_graph(checkpoint: str, *, width: int = 64, height: int = 64) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a red square"}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}},
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": width, "height": height, "batch_size": 1},
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": 0,
                "steps": 1,
                "cfg": 7.0,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }


def capture_graph(checkpoint: str, image: str, **capture_inputs) -> dict:
    inputs = {
        "model": ["1", 0],
        "clip": ["1", 1],
        "latent": ["3", 0],
        "prompt": "a red square",
        "preset": "concept distillation",
        "seed": 0,
        "t0": 2,
        "timesteps": "300, 500",
        "add_noise": True,
        "preview_word": "square",
        "max_batch": 4,
    }
    inputs.update(capture_inputs)
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoadImage", "inputs": {"image": image}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": CAPTURE, "inputs": inputs},
        "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 1]}},
    }


def require_capture(comfyui) -> None:
    if not comfyui.has_node(CAPTURE):
        detail = (
            f" (pack load errors: {comfyui.pack_error.strip()[:2000]})" if comfyui.pack_error.strip() else ""
        )
        pytest.skip(f"{CAPTURE} is not registered yet{detail}")


# ---------------------------------------------------------------------------------------------------------------
# The pack inside ComfyUI


def test_pack_loads_and_registers_prefixed_nodes(comfyui):
    assert comfyui.pack_loaded, f"ComfyUI could not load the pack at {PACK_DIR}:\n{comfyui.pack_error}"
    assert comfyui.pack_node_ids, "the pack loaded but registered no nodes"
    unprefixed = [node_id for node_id in comfyui.pack_node_ids if not node_id.startswith("SegDrop_")]
    assert not unprefixed, f"node ids without the SegDrop_ prefix: {unprefixed}"
    # The pack never shadows ComfyUI's own top-level modules.
    assert Path(sys.modules["nodes"].__file__).resolve() == comfyui.root / "nodes.py"
    for node_id in comfyui.pack_node_ids:
        module = comfyui.node_class(node_id).__module__
        assert module.startswith(str(PACK_DIR)), f"{node_id} comes from {module}, not from the pack"


def test_every_input_and_output_has_a_tooltip(comfyui):
    if not comfyui.pack_node_ids:
        pytest.skip("the pack registered no nodes (see test_pack_loads_and_registers_prefixed_nodes)")
    missing = []
    for node_id in comfyui.pack_node_ids:
        info = comfyui.node_info(node_id)
        json.dumps(info)  # /object_info must be able to serialise it
        assert info.get("description"), f"{node_id} has no description"
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not options.get("tooltip"):
                    missing.append(f"{node_id} input {name!r}")
        for index, (name, tooltip) in enumerate(zip(info["output_name"], info["output_tooltips"])):
            if not tooltip:
                missing.append(f"{node_id} output {index} {name!r}")
    assert not missing, "no tooltip on: " + ", ".join(missing)


# ---------------------------------------------------------------------------------------------------------------
# The harness itself


def test_tiny_checkpoint_loads_as_sd15(comfyui, tiny_checkpoint):
    import comfy.supported_models

    model, clip, vae = comfyui.load_checkpoint(tiny_checkpoint)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    assert model.model.model_config.unet_config["model_channels"] == 320
    assert "taesd_decoder" in dict(vae.first_stage_model.named_children())


def test_core_txt2img_graph_runs_through_the_executor(run_prompt, tiny_checkpoint):
    result = run_prompt(core_graph(tiny_checkpoint))
    image = result["6"][0]
    assert tuple(image.shape) == (1, 64, 64, 3)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert result.ui["7"]["images"][0]["type"] == "temp"
    events = [event for event, _ in result.messages]
    assert events[0] == "execution_start" and events[-1] == "execution_success"


def test_invalid_graph_is_rejected_with_node_errors(comfyui, tiny_checkpoint):
    graph = core_graph(tiny_checkpoint)
    graph["5"]["inputs"]["sampler_name"] = "no_such_sampler"
    with pytest.raises(comfyui.PromptValidationError) as caught:
        comfyui.run_prompt(graph)
    assert "5" in caught.value.node_errors
    assert "no_such_sampler" in str(caught.value)


def test_api_workflow_loader_substitutes_checkpoint_and_image(comfyui, tmp_path, tiny_checkpoint, test_image):
    graph = capture_graph("some_model.safetensors", "photo.png")
    path = tmp_path / "capture.api.json"
    path.write_text(json.dumps(graph))
    loaded = comfyui.api_from_workflow_file(
        path, checkpoint=tiny_checkpoint, image=test_image, overrides={"4": {"t0": 3}}
    )
    assert loaded["1"]["inputs"]["ckpt_name"] == tiny_checkpoint
    assert loaded["2"]["inputs"]["image"] == test_image
    assert loaded["4"]["inputs"]["t0"] == 3
    assert loaded["4"]["inputs"]["model"] == ["1", 0]
    ui_format = tmp_path / "ui.json"
    ui_format.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(ValueError, match="Export \\(API\\)"):
        comfyui.api_from_workflow_file(ui_format)


SHIPPED_WORKFLOWS = sorted(p.name for p in (PACK_DIR / "workflows" / "api").glob("*.api.json"))
LORA_WORKFLOWS = {"object_removal.api.json", "foreground_refine.api.json", "distillation_guidance.api.json"}
OWN_MODEL_WORKFLOWS = {"object_insertion.api.json"}
SEGMENTATION_WORKFLOWS = [w for w in SHIPPED_WORKFLOWS if w not in LORA_WORKFLOWS | OWN_MODEL_WORKFLOWS]
"""The segmentation graphs run on the 4-channel tiny checkpoint; object_removal needs the inpainting one and a
LoRA, and runs in test_comfy_objectdrop.py; foreground_refine and distillation_guidance need the background LoRA
m′, and run in test_comfy_refine.py; object_insertion needs an insertion UNet (Load Diffusion Model), made by the
insertion recipe in test_comfy_object_insertion.py."""


def shipped_graph(comfyui, workflow: str, checkpoint: str, image: str) -> dict:
    """A shipped API workflow with the tiny checkpoint and test image substituted; every node must exist."""
    graph = comfyui.api_from_workflow_file(PACK_DIR / "workflows" / "api" / workflow, checkpoint=checkpoint, image=image)
    missing = sorted({node["class_type"] for node in graph.values() if not comfyui.has_node(node["class_type"])})
    assert not missing, f"{workflow} uses unknown nodes: {missing}"
    return graph


def test_workflows_are_shipped():
    assert SHIPPED_WORKFLOWS == ["distillation_guidance.api.json", "foreground_mask.api.json",
                                 "foreground_refine.api.json", "object_insertion.api.json", "object_removal.api.json",
                                 "zero_shot_segmentation.api.json"]


@pytest.mark.parametrize("workflow", SEGMENTATION_WORKFLOWS)
def test_shipped_api_workflows_validate(comfyui, tiny_checkpoint, test_image, workflow):
    graph = shipped_graph(comfyui, workflow, tiny_checkpoint, test_image)
    assert comfyui.validate(graph), f"{workflow} has no valid output"


@pytest.mark.parametrize("workflow", SEGMENTATION_WORKFLOWS)
def test_shipped_api_workflows_run_on_the_tiny_checkpoint(comfyui, run_prompt, tiny_checkpoint, test_image, workflow):
    """Every shipped API workflow runs end to end (tiny checkpoint, 128x128 image, 2 capture timesteps)."""
    graph = shipped_graph(comfyui, workflow, tiny_checkpoint, test_image)
    for node in graph.values():
        if node["class_type"] == CAPTURE:
            node["inputs"]["t0"] = min(int(node["inputs"].get("t0", 2)), 2)
    result = run_prompt(graph)
    shown = [node_id for node_id, node in graph.items() if node["class_type"] == "PreviewImage"]
    assert shown and all(result.ui.get(node_id, {}).get("images") for node_id in shown), result.ui
    for node_id in shown:
        image = result[graph[node_id]["inputs"]["images"][0]][graph[node_id]["inputs"]["images"][1]]
        assert image.ndim == 4 and image.shape[-1] == 3 and torch_isfinite(image), (
            node_id,
            tuple(image.shape),
        )


# ---------------------------------------------------------------------------------------------------------------
# AttentionCapture through the executor


# preset -> (extra inputs, number of timesteps averaged, self maps kept, cross maps kept)
PRESETS = {
    "concept distillation": ({"t0": 2}, 2, False, True),
    "DiffSeg": ({}, 1, True, True),
    "custom": ({"timesteps": "300, 500", "add_noise": True}, 2, True, True),
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_attention_capture_through_the_executor(
    comfyui, run_prompt, tiny_checkpoint, make_image, attention_resolutions, attention_layers, preset
):
    require_capture(comfyui)
    extra, steps, keeps_self, keeps_cross = PRESETS[preset]
    image = make_image(64)
    result = run_prompt(capture_graph(tiny_checkpoint, image, preset=preset, **extra))

    attention, preview = result["4"][0], result["4"][1]
    # ComfyUI imports the pack under its folder path ('/work/main...'), so the ATTENTION object is an instance
    # of that copy of attention_patch.maps.AttentionMaps, not of segdrop.attention_patch.maps.AttentionMaps.
    assert type(attention).__name__ == "AttentionMaps"
    assert type(attention).__module__.endswith("attention_patch.maps")
    assert tuple(attention.image_size) == (64, 64)
    expected = attention_resolutions(64, 64)
    layers = attention_layers(64, 64)
    if keeps_cross:
        assert set(attention.cross_attn) == expected, (sorted(attention.cross_attn), sorted(expected))
        assert attention.cross_counts == {hw: n * steps for hw, n in layers.items()}
    else:
        assert not attention.cross_attn
    if keeps_self:
        assert set(attention.self_attn) == expected, (sorted(attention.self_attn), sorted(expected))
        assert attention.self_counts == {hw: n * steps for hw, n in layers.items()}
    else:
        assert not attention.self_attn
    for (h, w), maps in attention.cross_attn.items():
        assert tuple(maps.shape) == (1, h * w, 77), ((h, w), tuple(maps.shape))
        assert torch_isfinite(maps)
        sums = maps.double().sum(-1)
        assert float((sums - 1).abs().max()) < 1e-3, f"cross rows at {(h, w)} do not sum to 1"
    for (h, w), maps in attention.self_attn.items():
        assert tuple(maps.shape) == (1, h * w, h * w), ((h, w), tuple(maps.shape))
        assert torch_isfinite(maps)
        assert float((maps.double().sum(-1) - 1).abs().max()) < 1e-3, f"self rows at {(h, w)} do not sum to 1"
    assert attention.words() == ["a", "red", "square"]
    assert attention.meta.get("preset") == preset

    assert preview.ndim == 4 and preview.shape[0] == 1 and preview.shape[-1] == 3, tuple(preview.shape)
    assert tuple(preview.shape[1:3]) == (64, 64)
    assert float(preview.min()) >= 0.0 and float(preview.max()) <= 1.0
    assert result.ui["5"]["images"], "PreviewImage showed nothing"


def torch_isfinite(tensor) -> bool:
    import torch

    return bool(torch.isfinite(tensor).all())


def test_attention_capture_unknown_preview_word_is_a_clear_error(
    comfyui, run_prompt, tiny_checkpoint, make_image
):
    require_capture(comfyui)
    graph = capture_graph(tiny_checkpoint, make_image(64), t0=2, preview_word="giraffe")
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(graph)
    error = caught.value
    assert error.node_id == "4" and error.node_type == CAPTURE
    assert "giraffe" in error.exception_message, error.exception_message
    for word in ("red", "square"):
        assert word in error.exception_message, (
            f"the error does not list the prompt's words: {error.exception_message}"
        )


def test_cancel_stops_attention_capture_within_one_attention_layer(
    comfyui, run_prompt, tiny_checkpoint, make_image, monkeypatch
):
    """ComfyUI's Cancel (interrupt_current_processing) set in the middle of a batched UNet call stops the capture
    at the next attention layer, not after the call (or the rest of the schedule) has run."""
    require_capture(comfyui)
    import comfy.ldm.modules.attention as attention
    import comfy.model_management

    original, calls = attention.optimized_attention, []

    def cancel_on_third_call(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the middle block's self-attention, halfway through the first UNet call
            comfy.model_management.interrupt_current_processing(True)
        return original(*args, **kwargs)

    # The capture's fallback for layers it does not keep (concept distillation: every attn1) is this function.
    monkeypatch.setattr(attention, "optimized_attention", cancel_on_third_call)
    graph = capture_graph(tiny_checkpoint, make_image(64), t0=16, max_batch=8)  # 2 batched calls of 8 timesteps
    try:
        with pytest.raises(comfyui.PromptExecutionError) as caught:
            run_prompt(graph)
    finally:
        comfy.model_management.interrupt_current_processing(False)
    assert caught.value.exception_type == "Interrupted", caught.value
    # The middle block's attn2 raised: the 4 self-attention layers left in that call never ran.
    assert len(calls) == 3


def test_capture_that_would_keep_nothing_is_refused_before_sampling(
    comfyui, run_prompt, tiny_checkpoint, make_image, monkeypatch
):
    require_capture(comfyui)
    import comfy.sample

    original, sampled = comfy.sample.sample_custom, []

    def counting_sample_custom(*args, **kwargs):
        sampled.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(comfy.sample, "sample_custom", counting_sample_custom)
    graph = capture_graph(tiny_checkpoint, make_image(64), prompt="", preview_word="", t0=40)
    with pytest.raises(comfyui.PromptExecutionError) as caught:
        run_prompt(graph)
    error = caught.value
    assert error.node_id == "4" and error.exception_type.endswith("ValueError"), error
    assert "keeps only cross-attention" in error.exception_message
    assert "prompt '' has no words" in error.exception_message and "DiffSeg" in error.exception_message
    assert sampled == []  # refused before the first of the 40 timesteps
