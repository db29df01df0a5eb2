"""An in-process ComfyUI for integration tests: import it, load this pack as a custom node, run API graphs.

Reusable by any test (or notebook) that needs SegDrop inside a real ComfyUI without a server:

* :func:`start_comfyui` imports ComfyUI in-process (no server, no port) the way that is known to work, loads its
  built-in and ``comfy_extras`` nodes and then this repository as a custom-node pack, exactly as ``main.py``
  would (``nodes.load_custom_node``); ComfyUI's input/output/temp folders go to a cache directory, so the
  checkout is never written.
* :class:`ComfyUI` runs API-format graphs through ComfyUI's real ``execution.PromptExecutor``
  (:meth:`ComfyUI.run_prompt`), raising :class:`PromptValidationError` / :class:`PromptExecutionError`.
* :func:`api_from_workflow_file` loads an API-format workflow file with substitutions.

ComfyUI's directories are on ``sys.path`` (and the working directory is the ComfyUI folder) only inside
:meth:`ComfyUI.activated`; ComfyUI's modules (``nodes``, ``server``, ``comfy`` ...) stay in ``sys.modules`` once
imported: a process cannot unimport them. The pack itself is never put on ``sys.path`` as its folder, so
ComfyUI's top-level ``nodes`` module is never shadowed by ``segdrop/nodes``. ComfyUI is imported only inside
functions: this module imports without it. The tiny checkpoint lives in :mod:`segdrop.testing.comfy_checkpoint`.

Environment: ``COMFYUI_PATH`` (the ComfyUI checkout; tested with v0.3.64, commit a125cd84) and
``SEGDROP_TEST_CACHE`` (cache directory, default ``/tmp/segdrop_comfy_cache``).
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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .comfy_checkpoint import TINY_CHECKPOINT

PACK_DIR = Path(__file__).resolve().parents[1]  # the repository root (the segdrop package) is the custom-node pack
SKIP_REASON = "set COMFYUI_PATH to a ComfyUI checkout to run the integration tests"
NODE_PREFIX = "SegDrop_"


def comfyui_path() -> Path | None:
    """The ComfyUI checkout named by ``COMFYUI_PATH``, or None when it is not set."""
    value = os.environ.get("COMFYUI_PATH", "").strip()
    return Path(value).expanduser().resolve() if value else None


def cache_dir() -> Path:
    """Where checkpoints and ComfyUI's input/output/temp folders go (``SEGDROP_TEST_CACHE``)."""
    return Path(os.environ.get("SEGDROP_TEST_CACHE") or "/tmp/segdrop_comfy_cache").expanduser().resolve()


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
    pack_dir: Path = PACK_DIR
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
        """Load an API-format workflow (``{node_id: {class_type, inputs}}``), optionally substituting inputs.

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


def start_comfyui(root: Path, cache: Path, pack_dir: Path = PACK_DIR) -> ComfyUI:
    """Import the ComfyUI checkout at ``root`` into this process and load ``pack_dir`` as a custom node.

    A process can import ComfyUI only once (its modules cannot be unimported): call :func:`shared_comfyui`
    to get the one instance of this process.
    """
    root, cache = Path(root).resolve(), Path(cache).resolve()
    if not (root / "nodes.py").is_file() or not (root / "comfy").is_dir():
        raise RuntimeError(
            f"COMFYUI_PATH={root} is not a ComfyUI checkout (no nodes.py / comfy/): point it at the folder that "
            "holds ComfyUI's main.py."
        )
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
        pack_dir=Path(pack_dir).resolve(),
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
        comfy.pack_loaded = asyncio.run(nodes.load_custom_node(str(comfy.pack_dir), ignore=set(before)))
    finally:
        logging.getLogger().removeHandler(handler)
    comfy.pack_module = sys.modules.get(str(comfy.pack_dir).replace(".", "_x_"))
    comfy.pack_node_ids = sorted(set(nodes.NODE_CLASS_MAPPINGS) - before)
    comfy.pack_error = "\n".join(record.getMessage() for record in records)


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



_SHARED: dict[str, Any] = {}


def shared_comfyui(root: Path | None = None, cache: Path | None = None) -> ComfyUI:
    """This process's ComfyUI (``COMFYUI_PATH`` / ``SEGDROP_TEST_CACHE`` by default), started on first use.

    A failed start is remembered and raised again (as RuntimeError with the first traceback), so every caller
    gets the same clear error instead of a second half-import.
    """
    if "error" in _SHARED:
        raise RuntimeError(_SHARED["error"])
    if "comfy" not in _SHARED:
        root = root or comfyui_path()
        if root is None:
            raise RuntimeError(f"COMFYUI_PATH is not set: {SKIP_REASON}.")
        try:
            _SHARED["comfy"] = start_comfyui(root, cache or cache_dir())
        except Exception as error:
            import traceback

            _SHARED["error"] = f"ComfyUI at {root} could not be started in-process: {error!r}\n{traceback.format_exc()}"
            raise RuntimeError(_SHARED["error"]) from error
    return _SHARED["comfy"]
