"""Fixtures for SegDrop's integration tests inside a real, in-process ComfyUI.

Everything in this folder is skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout (tested with v0.3.64,
commit a125cd84). The harness itself (ComfyUI import, ``run_prompt`` through the real executor, errors) is
``segdrop.testing.comfy_harness``; the tiny SD1.5 checkpoint is ``segdrop.testing.comfy_checkpoint``. Both are
importable without ComfyUI, so other test folders and notebooks can reuse them.

ComfyUI's folders are on ``sys.path`` (and the working directory is the ComfyUI folder) only during each test of
this folder (the ``comfyui`` fixture), so the rest of the suite runs unaffected, in any order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from segdrop.testing.comfy_checkpoint import (
    ensure_tiny_checkpoint,
    tiny_attention_layers,
    tiny_attention_resolutions,
)
from segdrop.testing.comfy_harness import (
    SKIP_REASON,
    ComfyUI,
    PromptResult,
    comfyui_path,
    make_test_image,
    shared_comfyui,
)

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without COMFYUI_PATH every test of this folder is skipped (never errors)."""
    if comfyui_path() is not None:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(marker)


@pytest.fixture(scope="session")
def comfyui_session() -> ComfyUI:
    """ComfyUI imported once per process, with comfy_extras and this pack loaded (not activated: see ``comfyui``)."""
    if comfyui_path() is None:
        pytest.skip(SKIP_REASON)
    try:
        return shared_comfyui()
    except RuntimeError as error:  # the same clear failure for every test, not a second half-import
        pytest.fail(str(error))


@pytest.fixture
def comfyui(comfyui_session: ComfyUI) -> Iterator[ComfyUI]:
    """The in-process ComfyUI, activated (ComfyUI's folders on sys.path, ComfyUI as cwd) for one test.

    Activation is per test (it costs a list copy and a chdir), so sys.path and the working directory are back
    to what they were after every test, whatever order pytest runs this folder and the rest of the suite in.
    """
    with comfyui_session.activated():
        yield comfyui_session


@pytest.fixture(scope="session")
def tiny_checkpoint(comfyui_session: ComfyUI) -> str:
    """Name (for CheckpointLoaderSimple's ckpt_name) of the cached tiny SD1.5 checkpoint, verified to load as SD15."""
    return ensure_tiny_checkpoint(comfyui_session)


@pytest.fixture(scope="session")
def test_image(comfyui_session: ComfyUI) -> str:
    """File name, in ComfyUI's input folder, of a 128x128 PNG: grey with a red 64x64 square in the middle."""
    return make_test_image(Path(comfyui_session.folder_paths.get_input_directory()), "segdrop_red_square_128.png")


@pytest.fixture(scope="session")
def make_image(comfyui_session: ComfyUI) -> Callable[..., str]:
    """``make_image(size=64)`` -> file name in ComfyUI's input folder of a red-square-on-grey PNG of that size."""
    directory = Path(comfyui_session.folder_paths.get_input_directory())

    def make(size: int = 128) -> str:
        return make_test_image(directory, f"segdrop_red_square_{size}.png", size)

    return make


@pytest.fixture(scope="session")
def insert_pictures(comfyui_session: ComfyUI) -> dict[str, str]:
    """ObjectDrop Insert's inputs as a user has them, in ComfyUI's input folder: a 128x128 gradient background and a
    40x40 cut-out PNG (a 24x24 red square, alpha 255, in a transparent border). ``{"background", "object"}`` ->
    file name."""
    from PIL import Image, ImageDraw

    directory = Path(comfyui_session.folder_paths.get_input_directory())
    names = {"background": "segdrop_insert_background.png", "object": "segdrop_insert_object.png"}
    if not (directory / names["background"]).is_file():
        background = Image.new("RGB", (128, 128))
        background.putdata([(64 + x // 2, 96 + y // 4, 128) for y in range(128) for x in range(128)])
        background.save(directory / names["background"])
    if not (directory / names["object"]).is_file():
        cut = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
        ImageDraw.Draw(cut).rectangle([8, 8, 31, 31], fill=(220, 30, 30, 255))
        cut.save(directory / names["object"])
    return names


@pytest.fixture(scope="session")
def check_insert_result() -> Callable[..., None]:
    """``check(background, out, composite, effect)``: ObjectDrop Insert's outputs for ``insert_pictures`` placed at
    x=16, y=8, scale 1 on the 128x128 background: shapes and range; the trimmed 24x24 red square exactly at
    rows 8:32, columns 16:40 of the composite, the background elsewhere; the effect mask 1 on the object and 0 in
    the far corner; the output exactly the background wherever the effect mask is 0."""

    def check(background, out, composite, effect) -> None:
        import torch

        assert tuple(out.shape) == (1, 128, 128, 3) and tuple(composite.shape) == (1, 128, 128, 3)
        assert tuple(effect.shape) == (1, 128, 128)
        assert bool(torch.isfinite(out).all()) and float(out.min()) >= 0 and float(out.max()) <= 1
        red = torch.tensor([220, 30, 30]) / 255
        assert torch.allclose(composite[0, 8:32, 16:40], red.expand(24, 24, 3), atol=1e-6)  # trimmed cut-out at (16, 8)
        placed = torch.zeros(128, 128, dtype=torch.bool)
        placed[8:32, 16:40] = True
        assert torch.equal(composite[0][~placed], background[0][~placed])
        assert bool((effect[0][placed] == 1).all())
        outside = effect == 0
        assert bool(outside[0, 96:, 96:].all()), "the far corner is inside the effect mask: the crop context is too large"
        assert torch.equal(out[outside], background[outside])  # the background is untouched outside the effect mask

    return check


@pytest.fixture
def run_prompt(comfyui: ComfyUI) -> Callable[..., PromptResult]:
    """``run_prompt(api_prompt, fresh_cache=False) -> {node_id: [output slot values]}`` through the real executor."""
    return comfyui.run_prompt


@pytest.fixture
def load_workflow(comfyui: ComfyUI) -> Callable[..., dict]:
    """``load_workflow(path, checkpoint=..., image=..., overrides=...) -> API-format dict``."""
    return comfyui.api_from_workflow_file


@pytest.fixture(scope="session")
def attention_resolutions() -> Callable[[int, int], set[tuple[int, int]]]:
    """``attention_resolutions(H, W)`` -> the (h, w) attention grids of the tiny UNet for an H x W image."""
    return tiny_attention_resolutions


@pytest.fixture(scope="session")
def attention_layers() -> Callable[[int, int], dict[tuple[int, int], int]]:
    """``attention_layers(H, W)`` -> {(h, w): number of attention layers at that grid} of the tiny UNet."""
    return tiny_attention_layers
