"""In-process ComfyUI harness for SegDrop's integration tests.

Everything here is skipped unless ``COMFYUI_PATH`` points at a ComfyUI checkout (tested with v0.3.64,
commit a125cd84). With it set, the fixtures:

* import ComfyUI in-process (no server, no port), load its built-in and ``comfy_extras`` nodes and then this
  repository as a custom-node pack, exactly as ``main.py`` would (``nodes.load_custom_node``);
* build once, and cache, a tiny random-weight SD1.5-format checkpoint (``sd15_tiny.safetensors``: a 2-level
  320-channel UNet, the full CLIP-L text encoder, a TAESD VAE) that ``comfy.model_detection`` detects as SD15;
* run API-format graphs through ComfyUI's real ``execution.PromptExecutor`` (``run_prompt``).

ComfyUI's directories are on ``sys.path`` (and the working directory is the ComfyUI folder) only while a
test of this folder runs; both are restored after each test so that the rest of the suite is unaffected.
ComfyUI's modules (``nodes``, ``server``, ``comfy`` ...) stay in ``sys.modules`` once imported: a process
cannot unimport them. ``segdrop`` itself is never put on ``sys.path`` as its folder, so ComfyUI's top-level
``nodes`` module is never shadowed by ``segdrop/nodes``.

Environment:

* ``COMFYUI_PATH``: the ComfyUI checkout (required).
* ``SEGDROP_TEST_CACHE``: where the tiny checkpoint is cached (default ``/tmp/segdrop_comfy_cache``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

HERE = Path(__file__).resolve().parent
PACK_DIR = HERE.parents[1]  # the repository root is the custom-node pack
WORKFLOWS_DIR = PACK_DIR / "workflows"
SKIP_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run the integration tests"
TINY_CHECKPOINT = "sd15_tiny.safetensors"
TINY_CHECKPOINT_VERSION = "2"  # bump when the checkpoint recipe below changes
NODE_PREFIX = "SegDrop_"

# The tiny UNet: SD1.5's detection keys (320 channels, context 768, conv proj_in, no label_emb) with two levels,
# one res block each and one transformer per block (2 input + 1 middle + 4 output = 7 attention blocks).
# Attention resolutions for an H x W image: (H/8, W/8) (level 0) and (H/16, W/16) (level 1 and middle).
TINY_UNET_CONFIG: dict[str, Any] = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 1],  # 320 channels at both levels: ~44 M UNet parameters
    "transformer_depth": [1, 1],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 1, 1],
    "context_dim": 768,
    "num_heads": 8,
    "num_head_channels": -1,
    "use_spatial_transformer": True,
    "use_linear_in_transformer": False,
    "legacy": False,
    "adm_in_channels": None,
    "use_checkpoint": False,
    "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
TINY_UNET_DOWNSAMPLES = (8, 16)  # pixel-to-attention-grid factors of the attention blocks
# Attention blocks per grid: level 0 = input 1 + output 2, 3; level 1 = input 3 + middle + output 0, 1.
TINY_UNET_LAYERS = {8: 3, 16: 4}


def comfyui_path() -> Path | None:
    value = os.environ.get("COMFYUI_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    return Path(os.environ.get("SEGDROP_TEST_CACHE") or "/tmp/segdrop_comfy_cache").expanduser().resolve()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without COMFYUI_PATH every test of this folder is skipped (never errors)."""
    if comfyui_path() is not None:
        return
    marker = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(marker)


# --------------------------------------------------------------------------------------------------------------
# Errors raised by the harness


class PromptValidationError(AssertionError):
    """``execution.validate_prompt`` rejected the graph (what the server answers with HTTP 400)."""

    def __init__(self, error: dict, node_errors: dict):
        self.error = error
        self.node_errors = node_errors
        lines = [f"{error.get('message', error)}: {error.get('details', '')}".rstrip(": ")]
        for node_id, info in node_errors.items():
            for reason in info.get("errors", []):
                lines.append(
                    f"  node {node_id} ({info.get('class_type')}): {reason.get('message')}: {reason.get('details')}"
                )
        super().__init__("ComfyUI rejected the prompt:\n" + "\n".join(lines))


class PromptExecutionError(AssertionError):
    """A node raised while the executor ran the graph (what the server reports as ``execution_error``)."""

    def __init__(self, message: dict, status_messages: list):
        self.node_id = message.get("node_id")
        self.node_type = message.get("node_type")
        self.exception_message = message.get("exception_message", "")
        self.exception_type = message.get("exception_type", "")
        self.traceback = "".join(message.get("traceback") or [])
        self.status_messages = status_messages
        super().__init__(
            f"node {self.node_id} ({self.node_type}) failed with {self.exception_type}: "
            f"{self.exception_message.strip()}\n{self.traceback}"
        )


# --------------------------------------------------------------------------------------------------------------
# The server stand-in handed to PromptExecutor


class ServerStub:
    """What ``PromptExecutor`` and the progress handlers use of ``server.PromptServer``: messages are recorded."""

    def __init__(self) -> None:
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.messages: list[tuple[str, Any]] = []

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self.messages.append((event, data))

    def send_progress_text(self, text: str, node_id: str, sid: str | None = None) -> None:
        self.messages.append(("progress_text", {"node": node_id, "text": text}))

    def queue_updated(self) -> None:
        pass


class PromptResult(dict):
    """``{node_id: outputs}`` of one run. ``outputs[i]`` is output slot ``i`` (unwrapped from ComfyUI's per-call
    list when the node ran once); ``.ui`` is ``history_result["outputs"]`` (what ``/history`` would show),
    ``.messages`` the executor's status messages, ``.server_messages`` what would have gone to the websocket."""

    prompt_id: str
    ui: dict
    messages: list
    server_messages: list
    seconds: float


# --------------------------------------------------------------------------------------------------------------
# The harness


@dataclass
class ComfyUI:
    """A ComfyUI imported in-process. Its ``run_prompt`` executes API-format graphs with the real executor."""

    root: Path
    cache: Path
    nodes: Any
    execution: Any
    folder_paths: Any
    added_sys_path: list[str]
    pack_module: Any = None
    pack_loaded: bool = False
    pack_node_ids: list[str] = field(default_factory=list)
    pack_error: str = ""
    server: ServerStub = field(default_factory=ServerStub)
    _executor: Any = None

    PromptValidationError = PromptValidationError
    PromptExecutionError = PromptExecutionError

    # ---- environment

    @contextlib.contextmanager
    def activated(self) -> Iterator[ComfyUI]:
        """ComfyUI's folders on sys.path and ComfyUI as the working directory, restored on exit."""
        with _comfy_environment(self.root, self.added_sys_path):
            yield self

    # ---- node definitions

    def node_class(self, node_id: str) -> type:
        return self.nodes.NODE_CLASS_MAPPINGS[node_id]

    def node_info(self, node_id: str) -> dict:
        """The node's ``/object_info`` entry (V3 classes serialise themselves with ``GET_NODE_INFO_V1``)."""
        from comfy_api.internal import _ComfyNodeInternal

        cls = self.node_class(node_id)
        if issubclass(cls, _ComfyNodeInternal):
            return cls.GET_NODE_INFO_V1()
        inputs = cls.INPUT_TYPES()
        outputs = list(cls.RETURN_TYPES)
        return {
            "input": inputs,
            "input_order": {section: list(values) for section, values in inputs.items()},
            "output": outputs,
            "output_name": list(getattr(cls, "RETURN_NAMES", outputs)),
            "output_tooltips": list(getattr(cls, "OUTPUT_TOOLTIPS", [None] * len(outputs))),
            "name": node_id,
            "description": getattr(cls, "DESCRIPTION", ""),
            "category": getattr(cls, "CATEGORY", ""),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }

    def has_node(self, node_id: str) -> bool:
        return node_id in self.nodes.NODE_CLASS_MAPPINGS

    # ---- execution

    @property
    def executor(self) -> Any:
        if self._executor is None:
            self._executor = self.execution.PromptExecutor(
                self.server, cache_type=self.execution.CacheType.CLASSIC, cache_size=None
            )
        return self._executor

    def validate(self, api_prompt: dict, prompt_id: str | None = None) -> list[str]:
        """Run ``execution.validate_prompt``; returns the output node ids to execute or raises PromptValidationError."""
        prompt_id = prompt_id or str(uuid.uuid4())
        valid, error, good_outputs, node_errors = asyncio.run(
            self.execution.validate_prompt(prompt_id, api_prompt, None)
        )
        if not valid or node_errors:
            raise PromptValidationError(error or {"message": "Some outputs failed validation"}, node_errors)
        return list(good_outputs)

    def run_prompt(
        self, api_prompt: dict, *, fresh_cache: bool = False, extra_data: dict | None = None
    ) -> PromptResult:
        """Validate and execute an API-format graph as the server's prompt worker does; returns every node's outputs.

        The executor (and its classic cache) is shared across calls like in the server, so an unchanged
        CheckpointLoaderSimple is not reloaded; ``fresh_cache=True`` starts from an empty cache.
        """
        prompt_id = str(uuid.uuid4())
        api_prompt = json.loads(json.dumps(api_prompt))  # the executor must not see the caller's objects
        execute_outputs = self.validate(api_prompt, prompt_id)
        if fresh_cache:
            self._executor = None
        executor = self.executor
        self.server.messages = []
        self.server.last_prompt_id = prompt_id
        start = time.perf_counter()
        with self.activated():
            executor.execute(api_prompt, prompt_id, dict(extra_data or {}), execute_outputs)
        seconds = time.perf_counter() - start
        for event, data in executor.status_messages:
            if event == "execution_error":
                raise PromptExecutionError(data, executor.status_messages)
            if event == "execution_interrupted":
                raise PromptExecutionError(
                    {**data, "exception_type": "Interrupted", "exception_message": "execution interrupted"},
                    executor.status_messages,
                )
        if not executor.success:
            raise PromptExecutionError(
                {"exception_message": "executor reported failure"}, executor.status_messages
            )

        result = PromptResult()
        for node_id in api_prompt:
            cached = executor.caches.outputs.get(node_id)
            if cached is None:
                continue
            is_list = self._output_is_list(api_prompt[node_id]["class_type"])
            result[node_id] = [
                values[0]
                if isinstance(values, list) and len(values) == 1 and not is_list.get(slot)
                else values
                for slot, values in enumerate(cached)
            ]
        result.prompt_id = prompt_id
        result.ui = dict(executor.history_result.get("outputs", {}))
        result.messages = list(executor.status_messages)
        result.server_messages = list(self.server.messages)
        result.seconds = seconds
        return result

    def _output_is_list(self, class_type: str) -> dict[int, bool]:
        try:
            flags = self.node_info(class_type).get("output_is_list") or []
        except Exception:
            flags = []
        return {i: bool(flag) for i, flag in enumerate(flags)}

    # ---- workflows

    def api_from_workflow_file(
        self,
        path: str | os.PathLike,
        *,
        checkpoint: str | None = None,
        image: str | None = None,
        overrides: dict[str, dict[str, Any]] | None = None,
    ) -> dict:
        """Load an API-format workflow (``workflows/*.api.json``), optionally substituting inputs.

        ``checkpoint`` replaces every literal ``ckpt_name``; ``image`` every literal ``image`` input of a
        LoadImage-like node; ``overrides`` is ``{node_id: {input_name: value}}`` applied last.
        """
        return api_from_workflow_file(path, checkpoint=checkpoint, image=image, overrides=overrides)

    # ---- models

    def load_checkpoint(self, name: str = TINY_CHECKPOINT) -> tuple:
        import torch

        with self.activated(), torch.inference_mode():
            return self.nodes.CheckpointLoaderSimple().load_checkpoint(name)[:3]


def api_from_workflow_file(
    path: str | os.PathLike,
    *,
    checkpoint: str | None = None,
    image: str | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> dict:
    """See ``ComfyUI.api_from_workflow_file``; usable without ComfyUI imported."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and "prompt" in data and isinstance(data["prompt"], dict):
        data = data["prompt"]  # a saved POST /prompt body
    if (
        not isinstance(data, dict)
        or "nodes" in data
        or not all(isinstance(node, dict) and "class_type" in node for node in data.values())
    ):
        raise ValueError(
            f"{path} is not an API-format workflow ({{node_id: {{class_type, inputs}}}}); UI-format files "
            "(with 'nodes' and 'links') must be exported with 'Export (API)' from the ComfyUI frontend."
        )
    for node in data.values():
        inputs = node.setdefault("inputs", {})
        if checkpoint is not None and isinstance(inputs.get("ckpt_name"), str):
            inputs["ckpt_name"] = checkpoint
        if image is not None and isinstance(inputs.get("image"), str):
            inputs["image"] = image
    for node_id, values in (overrides or {}).items():
        if node_id not in data:
            raise KeyError(
                f"override for node {node_id!r}, which is not in {path.name} (nodes: {sorted(data)})"
            )
        data[node_id]["inputs"].update(values)
    return data


# --------------------------------------------------------------------------------------------------------------
# Setting ComfyUI up


@contextlib.contextmanager
def _comfy_environment(root: Path, paths: list[str]) -> Iterator[None]:
    saved_path = list(sys.path)
    saved_cwd = os.getcwd()
    for entry in reversed(paths):
        if entry in sys.path:
            sys.path.remove(entry)
        sys.path.insert(0, entry)
    os.chdir(root)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path


def _start_comfyui(root: Path, cache: Path) -> ComfyUI:
    if not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        raise RuntimeError(f"COMFYUI_PATH={root} is not a ComfyUI checkout (no nodes.py / comfy/)")
    existing = sys.modules.get("nodes")
    if existing is not None and Path(getattr(existing, "__file__", "") or "").resolve() != root / "nodes.py":
        raise RuntimeError(
            f"a module called 'nodes' is already imported from {getattr(existing, '__file__', existing)}; "
            "it would shadow ComfyUI's nodes.py"
        )

    saved_path = list(sys.path)
    saved_cwd = os.getcwd()
    sys.path.insert(0, str(root))
    os.chdir(root)
    try:
        import comfy.options

        comfy.options.enable_args_parsing(False)
        import comfy.cli_args

        comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
        comfy.cli_args.args.use_pytorch_cross_attention = True  # SDPA: ~3.5x faster than sub-quadratic on CPU
        comfy.cli_args.args.disable_api_nodes = True
        # The order matters (an import sorter must not reorder it, hence import_module): 'utils' and 'server'
        # before 'nodes', because nodes.py puts ComfyUI/comfy first on sys.path, after which 'utils' would
        # resolve to comfy/utils.py; 'execution' imports 'nodes'.
        for name in ("torch", "utils.install_util", "server", "nodes", "execution", "folder_paths"):
            importlib.import_module(name)
        server, nodes = sys.modules["server"], sys.modules["nodes"]
        execution, folder_paths = sys.modules["execution"], sys.modules["folder_paths"]

        if Path(nodes.__file__).resolve() != root / "nodes.py":
            raise RuntimeError(f"'import nodes' found {nodes.__file__}, not ComfyUI's nodes.py")

        shutil.rmtree(cache / "dirs" / "temp", ignore_errors=True)  # PreviewImage files of earlier sessions
        for kind in ("input", "output", "temp"):
            (cache / "dirs" / kind).mkdir(parents=True, exist_ok=True)
        folder_paths.set_input_directory(str(cache / "dirs" / "input"))
        folder_paths.set_output_directory(str(cache / "dirs" / "output"))
        folder_paths.set_temp_directory(str(cache / "dirs" / "temp"))
        (cache / "checkpoints").mkdir(parents=True, exist_ok=True)
        folder_paths.add_model_folder_path("checkpoints", str(cache / "checkpoints"), is_default=True)
        if not hasattr(server.PromptServer, "instance"):
            # a few nodes call PromptServer.instance.send_progress_text
            server.PromptServer.instance = ServerStub()

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        added = [entry for entry in sys.path if entry not in saved_path]
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path

    comfy = ComfyUI(
        root=root,
        cache=cache,
        nodes=nodes,
        execution=execution,
        folder_paths=folder_paths,
        added_sys_path=added,
    )
    with comfy.activated():
        _load_pack(comfy)
    return comfy


def _load_pack(comfy: ComfyUI) -> None:
    """Load this repository as ComfyUI loads a folder in custom_nodes/ (its errors are logged, not raised)."""
    nodes = comfy.nodes
    before = set(nodes.NODE_CLASS_MAPPINGS)
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(level=logging.WARNING)
    logging.getLogger().addHandler(handler)
    try:
        comfy.pack_loaded = asyncio.run(nodes.load_custom_node(str(PACK_DIR), ignore=set(before)))
    finally:
        logging.getLogger().removeHandler(handler)
    comfy.pack_module = sys.modules.get(str(PACK_DIR).replace(".", "_x_"))
    comfy.pack_node_ids = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    comfy.pack_error = "\n".join(record.getMessage() for record in records)


# --------------------------------------------------------------------------------------------------------------
# The tiny checkpoint


def _init_(tensor, name: str, generator) -> None:
    import torch

    if tensor.ndim == 0:
        tensor.fill_(1.0 if name.endswith("scale") else 0.0)
    elif name.endswith("bias") or name.endswith("vae_shift"):
        tensor.zero_()
    elif tensor.ndim == 1:  # norm weights
        tensor.fill_(1.0)
    elif "embedding" in name:
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    else:
        bound = 1.0 / max(1, tensor[0].numel()) ** 0.5
        tensor.copy_((torch.rand(tensor.shape, generator=generator) * 2 - 1) * bound)


def _random_state_dict(module, prefix: str, generator, dtype) -> dict:
    """Fresh random values for every floating tensor of ``module`` (built on the meta device: shapes only)."""
    import torch

    out = {}
    for name, tensor in module.state_dict().items():
        if not tensor.is_floating_point():
            raise RuntimeError(f"unexpected non-float tensor {prefix}{name} ({tensor.dtype})")
        value = torch.empty(tensor.shape, dtype=torch.float32)
        _init_(value, name, generator)
        out[prefix + name] = value.to(dtype).contiguous()
    return out


def build_tiny_checkpoint(path: Path) -> None:
    """Random-weight SD1.5-format checkpoint built from ComfyUI's own module classes."""
    import comfy.clip_model
    import comfy.ops
    import comfy.taesd.taesd
    import safetensors.torch
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    generator = torch.Generator().manual_seed(0)
    dtype = torch.float16
    state: dict[str, torch.Tensor] = {}
    with torch.device("meta"):
        unet = UNetModel(**TINY_UNET_CONFIG, dtype=torch.float32, operations=comfy.ops.disable_weight_init)
    state.update(_random_state_dict(unet, "model.diffusion_model.", generator, dtype))
    del unet

    config_path = Path(comfy.clip_model.__file__).with_name("sd1_clip_config.json")
    clip_config = json.loads(config_path.read_text())
    with torch.device("meta"):
        clip = comfy.clip_model.CLIPTextModel(
            clip_config, torch.float32, "meta", comfy.ops.disable_weight_init
        )
    state.update(_random_state_dict(clip, "cond_stage_model.transformer.", generator, dtype))
    del clip

    with torch.device("meta"):
        taesd = comfy.taesd.taesd.TAESD(latent_channels=4)
    state.update(_random_state_dict(taesd, "first_stage_model.", generator, dtype))
    del taesd

    for name, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise RuntimeError(f"non-finite values in {name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    safetensors.torch.save_file(
        state, str(partial), metadata={"segdrop_tiny_version": TINY_CHECKPOINT_VERSION, "format": "pt"}
    )
    os.replace(partial, path)


def _checkpoint_is_current(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("segdrop_tiny_version") == TINY_CHECKPOINT_VERSION
    except Exception:
        return False


def make_test_image(directory: Path, name: str, size: int = 128) -> str:
    """A grey square with a centred red square (half the side), saved as PNG; returns the file name."""
    from PIL import Image, ImageDraw

    path = directory / name
    if not path.is_file():
        image = Image.new("RGB", (size, size), (128, 128, 128))
        quarter = size // 4
        ImageDraw.Draw(image).rectangle(
            [quarter, quarter, size - quarter - 1, size - quarter - 1], fill=(220, 30, 30)
        )
        image.save(path)
    return name


# --------------------------------------------------------------------------------------------------------------
# Fixtures

_STATE: dict[str, Any] = {}


@pytest.fixture(scope="session")
def comfyui_session() -> Iterator[ComfyUI]:
    """ComfyUI imported once per session, with comfy_extras and this pack loaded (not activated: see ``comfyui``)."""
    root = comfyui_path()
    if root is None:
        pytest.skip(SKIP_REASON)
    if "error" in _STATE:
        pytest.fail(_STATE["error"])
    if "comfy" not in _STATE:
        try:
            _STATE["comfy"] = _start_comfyui(root, cache_dir())
        except Exception as error:  # report once, clearly, for every test
            import traceback

            _STATE["error"] = (
                f"ComfyUI at {root} could not be started in-process: {error!r}\n{traceback.format_exc()}"
            )
            pytest.fail(_STATE["error"])
    yield _STATE["comfy"]


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
    harness = comfyui_session
    path = harness.cache / "checkpoints" / TINY_CHECKPOINT
    with harness.activated():
        if not _checkpoint_is_current(path):
            build_tiny_checkpoint(path)
        if harness.folder_paths.get_full_path("checkpoints", TINY_CHECKPOINT) is None:
            harness.folder_paths.add_model_folder_path("checkpoints", str(path.parent), is_default=True)
        found = harness.folder_paths.get_full_path("checkpoints", TINY_CHECKPOINT)
        assert found and Path(found).resolve() == path, (
            f"ComfyUI resolves {TINY_CHECKPOINT} to {found}, not {path}"
        )
        import comfy.supported_models

        model, clip, vae = harness.load_checkpoint(TINY_CHECKPOINT)
        assert type(model.model.model_config) is comfy.supported_models.SD15, type(model.model.model_config)
        assert clip is not None and vae is not None
        del model, clip, vae
    return TINY_CHECKPOINT


@pytest.fixture(scope="session")
def test_image(comfyui_session: ComfyUI) -> str:
    """File name, in ComfyUI's input folder, of a 128x128 PNG: grey with a red 64x64 square in the middle."""
    return make_test_image(
        Path(comfyui_session.folder_paths.get_input_directory()), "segdrop_red_square_128.png"
    )


@pytest.fixture(scope="session")
def make_image(comfyui_session: ComfyUI) -> Callable[..., str]:
    """``make_image(size=64)`` -> file name in ComfyUI's input folder of a red-square-on-grey PNG of that size."""
    directory = Path(comfyui_session.folder_paths.get_input_directory())

    def make(size: int = 128) -> str:
        return make_test_image(directory, f"segdrop_red_square_{size}.png", size)

    return make


@pytest.fixture
def run_prompt(comfyui: ComfyUI) -> Callable[..., PromptResult]:
    """``run_prompt(api_prompt, fresh_cache=False) -> {node_id: [output slot values]}`` through the real executor."""
    return comfyui.run_prompt


@pytest.fixture
def load_workflow(comfyui: ComfyUI) -> Callable[..., dict]:
    """``load_workflow(path, checkpoint=..., image=..., overrides=...) -> API-format dict``."""
    return comfyui.api_from_workflow_file


def tiny_attention_resolutions(height: int, width: int) -> set[tuple[int, int]]:
    """The (h, w) grids of the tiny UNet's attention layers for an image of height x width pixels."""
    return {(height // factor, width // factor) for factor in TINY_UNET_DOWNSAMPLES}


def tiny_attention_layers(height: int, width: int) -> dict[tuple[int, int], int]:
    """How many attn1 (and attn2) layers of the tiny UNet run at each grid for a height x width image."""
    return {(height // factor, width // factor): TINY_UNET_LAYERS[factor] for factor in TINY_UNET_DOWNSAMPLES}


@pytest.fixture(scope="session")
def attention_resolutions() -> Callable[[int, int], set[tuple[int, int]]]:
    """``attention_resolutions(H, W)`` -> the (h, w) attention grids of the tiny UNet for an H x W image."""
    return tiny_attention_resolutions


@pytest.fixture(scope="session")
def attention_layers() -> Callable[[int, int], dict[tuple[int, int], int]]:
    """``attention_layers(H, W)`` -> {(h, w): number of attention layers at that grid} of the tiny UNet."""
    return tiny_attention_layers
