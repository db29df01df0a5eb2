"""Concept-distillation dataset builders: mask folders (``distill/dataset.py``) with M_pre, the refined mask M, and
synthetic images (paper notes §1.5, §1.6).

    python -m segdrop.training prelim-masks --data_dir IMAGES --out MASKS            # M_pre from attention
    python -m segdrop.training refine-masks --data_dir MASKS --model M_PRIME         # M from m′'s inpainting
    python -m segdrop.training synthesize --model M_PRIME --objects bird --count 1000 --out SYN
    python -m segdrop.training synthesize --config training/configs/toy_distill_data.toml --model out/toy_bg/model
    python -m segdrop.training refine-masks ... --model models/default --lora models/toy_background_lora  # a toy LoRA m′

``prelim-masks``: the source is a mask folder (``metadata.jsonl`` with "image" and "caption"; a toy-world dataset
is one) or a folder of images with captions (``<name>.txt`` next to ``<name>.png``, or ``--caption`` for all).
The caption is the capture prompt y_f; the attention words default to every caption word except a/photo/of/and
(``--words`` picks them). The capture model defaults to the pack's ``models/default``. Adds "prelim" (latent grid).
``refine-masks``: a mask folder with "prelim" + m′ -> adds "inpainted", "difference", "refined" (DDIM 50, eta 0,
CFG 1, y_b = ``--prompt``, default "a photo of a background"; the toy vocabulary has no "background", so toy
runs use ``--prompt ""``). ``--postprocess``: closing + hole filling of M (the paper's label option).
``synthesize``: m′ samples N images from y_f (``--prompts``, ``--objects`` with ``--object_prompt``,
``--captions_from`` a mask folder, or ``--generate N`` toy captions), optionally with concept-distillation guidance
(``--guidance s --negative_prompt y_b``), then runs prelim + refine on them.

Without ``--out`` the first two write into ``--data_dir``; with it, the records' files are copied into the new folder.
Every command is resumable (finished ids, i.e. those whose record and output files exist, are skipped: delete an
output file to recompute that item), sharded under ``accelerate launch`` (process k takes items k::N and appends to
its own ``metadata.part-<k>.jsonl``; the main process merges them into ``metadata.jsonl``), and deterministic per
item (every random draw is seeded from ``--seed`` and the item's id, so a resumed or resharded run writes the same
files). The effective settings are written to ``<out>/<command>.toml``.

A TOML ``--config`` may hold flat keys (used by every command that knows them) and ``[prelim-masks]``,
``[refine-masks]``, ``[synthesize]`` tables (used by that command only); flags win.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tomllib

from .loop import ConfigError, setup_logging
from .settings import coerce, dump_toml, recipe_parser

logger = logging.getLogger("segdrop.training.distill_data")

DEFAULT_CAPTURE_MODEL = Path(__file__).resolve().parents[1] / "models" / "default"
"""The pack's toy model: the capture model unless ``--capture_model`` names another."""
PAPER_BACKGROUND_PROMPT = "a photo of a background"
PAPER_OBJECT_PROMPT = "a photo of a {}"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")


# ----------------------------------------------------------------------------------------------- settings


@dataclass
class PrelimConfig:
    data_dir: str = ""
    out: str = ""
    capture_model: str = ""
    caption: str = ""
    words: str = ""
    t0: int = 40
    seed: int = 0
    max_batch: int = 40


@dataclass
class RefineConfig:
    data_dir: str = ""
    out: str = ""
    model: str = ""
    lora: str = ""
    prompt: str = PAPER_BACKGROUND_PROMPT
    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    postprocess: bool = False
    batch_size: int = 8


@dataclass
class SynthesizeConfig:
    out: str = ""
    model: str = ""
    lora: str = ""
    capture_model: str = ""
    prompts: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    object_prompt: str = PAPER_OBJECT_PROMPT
    captions_from: str = ""
    generate: int = 0
    count: int = 0
    guidance: float = 1.0
    negative_prompt: str = PAPER_BACKGROUND_PROMPT
    background_prompt: str = PAPER_BACKGROUND_PROMPT
    words: str = ""
    steps: int = 50
    eta: float = 0.0
    seed: int = 0
    t0: int = 40
    postprocess: bool = False
    batch_size: int = 8
    max_batch: int = 40


HELPS = {
    "data_dir": "source folder: a mask folder (metadata.jsonl) or, for prelim-masks, images with <name>.txt captions",
    "out": "mask folder to write (default: write into --data_dir)",
    "capture_model": "model whose cross-attention gives M_pre (default: the pack's models/default)",
    "model": "the fine-tuned background model m′ (a text-to-image bundle from `python -m segdrop.training background`)",
    "lora": "a peft LoRA adapter folder (`background --lora_rank R` on a toy model writes one as lora/) merged over "
            "--model, its base, before use; SD LoRAs: pass the recipe's merged model/ as --model instead",
    "caption": "caption (capture prompt y_f) for every image, overriding the records' and .txt captions",
    "words": "comma-separated attention words for every image (default: every caption word except a/photo/of/and)",
    "t0": "noised DDIM timesteps of the attention capture (paper: 40)",
    "seed": "base seed; each item's draws are seeded from it and the item's id",
    "max_batch": "UNet rows per call in the attention capture",
    "prompt": "background prompt y_b of the inpainting (toy models: \"\", their vocabulary has no 'background')",
    "background_prompt": "background prompt y_b of the inpainting (toy models: \"\")",
    "steps": "DDIM steps (paper: 50)",
    "eta": "DDIM eta (paper: 0)",
    "postprocess": "close and hole-fill the refined masks (the paper's option for training labels)",
    "batch_size": "images per sampler call",
    "prompts": "captions y_f to sample, used as they are (cycled up to --count)",
    "objects": "object names; y_f = --object_prompt with the name (cycled up to --count)",
    "object_prompt": "template of y_f for --objects ({} is the object)",
    "captions_from": "a mask folder whose captions are the prompts y_f",
    "generate": "sample this many toy-world captions as prompts (needs a toy-vocabulary model)",
    "count": "images to synthesize (default: one per prompt)",
    "guidance": "concept-distillation guidance s: eps(y_b) + s (eps(y_f) - eps(y_b)); 1 = plain sampling (paper)",
    "negative_prompt": "the counter-prompt y_b of the guidance (used only when --guidance != 1)",
}


def _helps(cls: type) -> dict[str, str]:
    helps = {f.name: HELPS.get(f.name, "") for f in dataclasses.fields(cls)}
    if cls is SynthesizeConfig:
        helps["out"] = "mask folder to write (required; resumable)"
        helps["words"] = "comma-separated attention words for every image (default: every prompt word except a/photo/of/and)"
    return helps


COMMANDS: dict[str, tuple[type, str]] = {
    "prelim-masks": (PrelimConfig, "M_pre: attention + GMM on a folder of captioned images -> a mask folder with 'prelim'"),
    "refine-masks": (RefineConfig, "refined masks: m′ background inpainting of M_pre -> 'inpainted', 'difference', 'refined'"),
    "synthesize": (SynthesizeConfig, "synthetic images from m′ (optionally guided), then prelim + refine -> a mask folder"),
}


def resolve(command: str, args: argparse.Namespace) -> Any:
    """Defaults < the TOML's flat keys < its ``[command]`` table < flags. Flat keys another command uses are
    ignored; a key no command knows is an error."""
    cls = COMMANDS[command][0]
    names = {f.name for f in dataclasses.fields(cls)}
    known = {f.name for c, _ in COMMANDS.values() for f in dataclasses.fields(c)}
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ConfigError(f"config file {path} is not valid TOML: {error}") from None
        flat = {k: v for k, v in data.items() if k not in COMMANDS}
        table = data.get(command, {})
        if not isinstance(table, dict):
            raise ConfigError(f"config file {path}: [{command}] must be a table")
        unknown = sorted((set(flat) - known) | (set(table) - names))
        if unknown:
            raise ConfigError(f"unknown config key(s) {', '.join(map(repr, unknown))} in {path}; {command} knows: "
                              f"{', '.join(sorted(names))}")
        merged = {**{k: v for k, v in flat.items() if k in names}, **table}
        values.update({k: coerce(cls, k, v, str(path)) for k, v in merged.items()})
    values.update({k: coerce(cls, k, v, "command line") for k, v in vars(args).items() if k in names})
    return cls(**values)


# ----------------------------------------------------------------------------------------------- shared pieces


def item_seed(seed: int, item_id: str, salt: str) -> int:
    """A 63-bit seed from (base seed, item id, stage): items and stages get independent, reproducible draws."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, zlib.crc32(item_id.encode()), zlib.crc32(salt.encode())])
    return int(state.generate_state(1, dtype=np.uint64)[0]) >> 1


def load_model(path: str, what: str, device=None, lora: str = ""):
    """The bundle at ``path``, with the peft adapter folder ``lora`` merged into its UNet when given."""
    from .bundle import BundleError, load_bundle
    from .lora_adapter import load_lora_fallback

    if not path:
        raise ConfigError(f"give the {what} folder")
    try:
        bundle = load_bundle(path)
    except BundleError as error:
        raise ConfigError(f"the {what} could not be loaded: {error}") from None
    if lora:
        bundle = load_lora_fallback(bundle, lora)
    return bundle.to(device) if device is not None else bundle


def check_prompts(bundle, prompts: Sequence[str], what: str, hint: str = "") -> None:
    """Unknown words of a closed-vocabulary model are a ConfigError before any work is done."""
    try:
        bundle.check_vocabulary(list(dict.fromkeys(prompts)))
    except ValueError as error:
        raise ConfigError(f"{what}: {error}{hint}") from None


def check_words(bundle, captions: Sequence[str], words: str, ids: Sequence[str]) -> None:
    """Every image's attention words must be in its caption (checked on the tokens, before any capture)."""
    from ..attention_patch.tokens import find_word_positions
    from ..distill.pipeline import object_words

    for item_id, caption in zip(ids, captions):
        try:
            find_word_positions(bundle.tokens([caption])[0], words or object_words(caption))
        except ValueError as error:
            raise ConfigError(f"item {item_id!r} (caption {caption!r}): {error}") from None


def default_state():
    """accelerate's process state; ``ACCELERATE_USE_CPU=1`` (a multi-process CPU launch) is honoured, as the
    ``Accelerator`` of the training recipes honours it."""
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def progress_bar(total: int, state, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not state.is_main_process or total == 0)


def batches(items: Sequence, size: int):
    for start in range(0, len(items), max(1, int(size))):
        yield items[start:start + max(1, int(size))]


def same_size_groups(images: Sequence[np.ndarray]) -> list[list[int]]:
    """Indices grouped by image size, first-seen order (a sampler call needs one size)."""
    groups: dict[tuple, list[int]] = {}
    for index, image in enumerate(images):
        groups.setdefault(image.shape, []).append(index)
    return list(groups.values())


def write_settings(root: Path, command: str, config: Any, argv: Sequence[str]) -> None:
    from .loop import write_text_atomic

    header = f"# written by: python -m segdrop.training {command} {shlex.join(list(argv))}\n"
    write_text_atomic(root / f"{command}.toml", header + dump_toml(config))


def run_sharded(command: str, root: Path, items: list[dict], outputs: Sequence[str], state,
                work: Callable[[list[dict]], list[tuple[dict, dict]]], batch_size: int, config, argv) -> Path:
    """Process this process's share (``items[k::N]``) that is not finished, in batches, then merge on main.

    ``work(batch)`` returns ``(record, arrays)`` per item, which the writer saves (files first, record last).
    """
    from ..distill.dataset import MaskFolderWriter

    writer = MaskFolderWriter(root, state.process_index)
    done = writer.finished(outputs)
    mine = [item for item in items[state.process_index::state.num_processes] if item["id"] not in done]
    logger.info("%s: %d item(s), %d finished, process %d/%d takes %d", command, len(items),
                len(done & {i["id"] for i in items}), state.process_index, state.num_processes, len(mine))
    bar = progress_bar(len(mine), state, command)
    for batch in batches(mine, batch_size):
        for record, arrays in work(batch):
            writer.add(record, arrays)
        bar.update(len(batch))
    bar.close()
    state.wait_for_everyone()
    meta = root / "metadata.jsonl"
    if state.is_main_process:
        meta = writer.merge([item["id"] for item in items])
        write_settings(root, command, config, argv)
        missing = sorted({i["id"] for i in items} - writer.finished(outputs))
        if missing:
            raise ConfigError(f"{len(missing)} item(s) are not finished: {missing[:10]}; rerun the same command")
        logger.info("wrote %s (%d items)", meta, len(items))
    state.wait_for_everyone()
    return meta


def check_out(root: Path, source: Path | None = None) -> None:
    """Refuse to write into a non-empty folder that is not a mask folder (a typo must not litter a folder)."""
    if root == source or not root.is_dir() or not any(root.iterdir()):
        return
    if not (root / "metadata.jsonl").exists() and not any(root.glob("metadata.part-*.jsonl")):
        raise ConfigError(f"--out {root} is a non-empty folder that is not a mask folder; choose a new folder")


def output_root(data_dir: str, out: str) -> Path:
    if not data_dir:
        raise ConfigError("give --data_dir FOLDER")
    source = Path(data_dir).expanduser().resolve()
    if not source.is_dir():
        raise ConfigError(f"source folder {source} does not exist")
    return Path(out).expanduser().resolve() if out else source


# ----------------------------------------------------------------------------------------------- sources


def list_captioned_images(folder: Path, caption: str = "") -> list[dict]:
    """Records ``{"id", "image" (absolute), "caption", ...}`` of a mask folder or a folder of images with captions."""
    from ..distill.dataset import check_ids, read_mask_folder

    if (folder / "metadata.jsonl").is_file():
        records = read_mask_folder(folder, require=("image",))
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.name.startswith("."))
        if not files:
            raise ConfigError(f"{folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}) and no metadata.jsonl")
        records = []
        for path in files:
            text = path.with_suffix(".txt")
            record = {"id": path.stem, "image": str(path)}
            if text.is_file():
                record["caption"] = text.read_text(encoding="utf-8").strip()
            records.append(record)
        check_ids([r["id"] for r in records], str(folder))
    if caption:
        records = [{**r, "caption": caption} for r in records]
    lacking = [r["id"] for r in records if not isinstance(r.get("caption"), str)]
    if lacking:
        raise ConfigError(f"{len(lacking)} image(s) have no caption ({lacking[:10]}): add \"caption\" to their "
                          "records, a <name>.txt next to each image, or give --caption TEXT for all")
    return records


def synthesis_prompts(config: SynthesizeConfig) -> list[str]:
    """The y_f of every image to synthesize (exactly one prompt source; cycled up to ``count``)."""
    sources = [bool(config.prompts), bool(config.objects), bool(config.captions_from), config.generate > 0]
    if sum(sources) != 1:
        raise ConfigError("give exactly one prompt source: --prompts, --objects, --captions_from or --generate N")
    if config.generate > 0:
        if config.count and config.count != config.generate:
            raise ConfigError("--generate N already sets the number of images; drop --count")
        from ..toyworld.dataset import scene_seed
        from ..toyworld.scene import sample_layout
        from ..toyworld.vocab import make_caption, object_name

        captions = []
        for index in range(config.generate):
            layout = sample_layout(np.random.default_rng(scene_seed(config.seed, "synthetic", index)))
            captions.append(make_caption([object_name(o.color, o.shape) for o in layout.objects]))
        return captions
    if config.objects:
        if "{}" not in config.object_prompt:
            raise ConfigError(f"--object_prompt {config.object_prompt!r} has no {{}} for the object name")
        base = [config.object_prompt.format(name) for name in config.objects]
    elif config.prompts:
        base = list(config.prompts)
    else:
        from ..distill.dataset import read_mask_folder

        base = [r["caption"] for r in read_mask_folder(config.captions_from, require=("caption",))]
    count = config.count or len(base)
    if count < 1:
        raise ConfigError("--count must be >= 1")
    return [base[i % len(base)] for i in range(count)]


# ----------------------------------------------------------------------------------------------- commands


def _capture_settings(t0: int, max_batch: int):
    from ..demo.protocol import EvalSettings

    if max_batch < 1:
        raise ConfigError("--max_batch must be >= 1")
    return EvalSettings(t0=t0, max_batch=max_batch)


def build_prelim(config: PrelimConfig, state=None, argv: Sequence[str] = ()) -> Path:
    """``prelim-masks``: M_pre for every captioned image (one capture per image, seeded by its id)."""
    from ..distill.dataset import MaskFolderWriter, load_image
    from ..distill.pipeline import preliminary_masks

    root = output_root(config.data_dir, config.out)
    source = Path(config.data_dir).expanduser().resolve()
    items = list_captioned_images(source, config.caption)
    state = state or default_state()
    capture = load_model(config.capture_model or str(DEFAULT_CAPTURE_MODEL), "capture model", state.device)
    settings = _capture_settings(config.t0, config.max_batch)
    captions = [r["caption"] for r in items]
    check_prompts(capture, captions, "a caption does not suit the capture model")
    check_words(capture, captions, config.words, [r["id"] for r in items])
    check_out(root, source)
    writer = MaskFolderWriter(root, state.process_index)

    def work(batch: list[dict]) -> list[tuple[dict, dict]]:
        out = []
        for record in batch:
            image = load_image(record["image"])
            prelim = preliminary_masks(capture, image[None], [record["caption"]], words=config.words or None,
                                       settings=settings, seeds=[item_seed(config.seed, record["id"], "prelim")])
            out.append((writer.adopt(record), {"prelim": prelim[0]}))
        return out

    return run_sharded("prelim-masks", root, items, ("image", "prelim"), state, work, 1, config, argv)


def build_refined(config: RefineConfig, state=None, argv: Sequence[str] = ()) -> Path:
    """``refine-masks``: inpaint M_pre with m′ and y_b, then M = up(M_pre) AND g(D) for every record."""
    from ..distill.dataset import MaskFolderWriter, load_image, load_mask, read_mask_folder
    from ..distill.pipeline import refine
    from ..distill.sampling import check_text_to_image

    root = output_root(config.data_dir, config.out)
    source = Path(config.data_dir).expanduser().resolve()
    items = read_mask_folder(source, require=("image", "prelim"))
    check_out(root, source)
    state = state or default_state()
    model = load_model(config.model, "background model m′ (--model)", state.device, config.lora)
    try:
        check_text_to_image(model)
    except ValueError as error:
        raise ConfigError(f"--model {config.model}: {error}") from None
    check_prompts(model, [config.prompt], f"--prompt {config.prompt!r}",
                  " (toy models know no 'background': use --prompt \"\")")
    writer = MaskFolderWriter(root, state.process_index)

    def work(batch: list[dict]) -> list[tuple[dict, dict]]:
        images = [load_image(r["image"]) for r in batch]
        out = []
        for group in same_size_groups(images):
            records = [batch[i] for i in group]
            prelim = np.stack([load_mask(r["prelim"]) for r in records])
            refined, inpainted, difference = refine(
                model, np.stack([images[i] for i in group]), prelim, prompt=config.prompt, steps=config.steps,
                eta=config.eta, seed=[item_seed(config.seed, r["id"], "inpaint") for r in records],
                postprocess=config.postprocess)
            for k, record in enumerate(records):
                out.append((writer.adopt(record), {"inpainted": inpainted[k], "difference": difference[k],
                                                   "refined": refined[k]}))
        return out

    return run_sharded("refine-masks", root, items, ("image", "prelim", "inpainted", "difference", "refined"), state,
                       work, config.batch_size, config, argv)


def build_synthetic(config: SynthesizeConfig, state=None, argv: Sequence[str] = ()) -> Path:
    """``synthesize``: m′ samples y_f (optionally guided against y_b), then prelim + refine on the samples."""
    from ..distill.pipeline import preliminary_masks, refine
    from ..distill.sampling import check_text_to_image, distillation_sample

    if not config.out:
        raise ConfigError("give --out FOLDER")
    captions = synthesis_prompts(config)
    ids = [f"syn_{i:05d}" for i in range(len(captions))]
    state = state or default_state()
    model = load_model(config.model, "background model m′ (--model)", state.device, config.lora)
    try:
        check_text_to_image(model)
    except ValueError as error:
        raise ConfigError(f"--model {config.model}: {error}") from None
    capture = load_model(config.capture_model or str(DEFAULT_CAPTURE_MODEL), "capture model", state.device)
    hint = " (toy models know no 'background': set it to \"\")"
    check_prompts(model, captions, "a prompt y_f does not suit m′")
    check_prompts(model, [config.background_prompt], f"--background_prompt {config.background_prompt!r}", hint)
    if config.guidance != 1.0:
        check_prompts(model, [config.negative_prompt], f"--negative_prompt {config.negative_prompt!r}", hint)
    check_prompts(capture, captions, "a prompt y_f does not suit the capture model")
    check_words(capture, captions, config.words, ids)
    settings = _capture_settings(config.t0, config.max_batch)
    items = [{"id": i, "caption": c} for i, c in zip(ids, captions)]

    def work(batch: list[dict]) -> list[tuple[dict, dict]]:
        prompts = [r["caption"] for r in batch]
        images = distillation_sample(model, prompts, negative_prompt=config.negative_prompt, guidance=config.guidance,
                                     steps=config.steps, eta=config.eta,
                                     seed=[item_seed(config.seed, r["id"], "sample") for r in batch])
        prelim = preliminary_masks(capture, images, prompts, words=config.words or None, settings=settings,
                                   seeds=[item_seed(config.seed, r["id"], "prelim") for r in batch])
        refined, inpainted, difference = refine(
            model, images, prelim, prompt=config.background_prompt, steps=config.steps, eta=config.eta,
            seed=[item_seed(config.seed, r["id"], "inpaint") for r in batch], postprocess=config.postprocess)
        out = []
        for k, record in enumerate(batch):
            info = {**record, "guidance": config.guidance}
            if config.guidance != 1.0:
                info["negative_prompt"] = config.negative_prompt
            out.append((info, {"image": images[k], "prelim": prelim[k], "inpainted": inpainted[k],
                               "difference": difference[k], "refined": refined[k]}))
        return out

    root = Path(config.out).expanduser().resolve()
    check_out(root)
    return run_sharded("synthesize", root, items, ("image", "prelim", "inpainted", "difference", "refined"), state,
                       work, config.batch_size, config, argv)


BUILDERS: dict[str, Callable] = {"prelim-masks": build_prelim, "refine-masks": build_refined,
                                 "synthesize": build_synthetic}


# ----------------------------------------------------------------------------------------------- CLI


def register(sub) -> None:
    """Add the three commands to ``python -m segdrop.training``'s sub-parsers."""
    for name, (cls, text) in COMMANDS.items():
        recipe_parser(name, cls, __doc__, _helps(cls), sub.add_parser(name, help=text, description=text))


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Run the command ``args.recipe``; a ``ConfigError`` or a bad input (``ValueError``) is ``error: ...``, exit 2."""
    command = args.recipe
    try:
        BUILDERS[command](resolve(command, args), argv=list(argv))
    except (ConfigError, ValueError) as error:
        logger.debug("%s failed", command, exc_info=True)
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """``main(["prelim-masks", "--data_dir", ...])``: the same as ``python -m segdrop.training prelim-masks ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m segdrop.training", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="recipe", required=True, metavar="COMMAND")
    register(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging()
    return run(args, argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
