"""A model bundle: UNet + text encoder + tokenizer + scheduler + codec, loaded and saved as one folder.

Two on-disk forms load through :func:`load_bundle`:

* a SegDrop folder (``segdrop_model.json`` present), written by ``python -m segdrop.training scratch``::

      segdrop_model.json   {"codec": {"type": "pixel_unshuffle", "factor": 2}, "image_size": 64,
                            "object_prompt": "a photo of a {}", "train_command": ..., ...}
      unet/                config.json + diffusion_pytorch_model.safetensors
      text_encoder/        config.json + model.safetensors
      tokenizer/           CLIP tokenizer files
      scheduler/           scheduler_config.json (DDPM, SD's scaled_linear 0.00085 -> 0.012, 1000 steps)

* a diffusers Stable Diffusion 1.x folder (``model_index.json``, ``unet/``, ``text_encoder/``, ``tokenizer/``,
  ``vae/``, ``scheduler/``); its VAE becomes an :class:`AutoencoderKLCodec`.

Either form may also hold ``text_encoder_2/`` (a ``CLIPTextModelWithProjection``) and ``tokenizer_2/``: the SDXL
layout, whose UNet takes added conditioning (``addition_embed_type="text_time"``). Such a bundle encodes prompts as
SDXL does (the penultimate hidden states of both encoders, concatenated) and :meth:`ModelBundle.added_cond_kwargs`
gives the UNet's ``added_cond_kwargs`` (encoder 2's pooled ``text_embeds`` and the ``time_ids`` of an uncropped
``image_size`` square); for every other bundle it is ``None``.

A third form, :func:`load_single_file_bundle` (``load_bundle(file, config=folder)``): a single-file SD1.x
checkpoint ``.safetensors`` in the original LDM/CompVis layout (UNet ``model.diffusion_model.*``, VAE
``first_stage_model.*``, CLIP-L ``cond_stage_model.transformer.*``, as ComfyUI's ``models/checkpoints`` holds),
converted with diffusers' ``from_single_file``. Such a file holds weights only, so ``config`` must be a diffusers
folder of the same architecture with ``model_index.json``, ``unet/``, ``vae/`` and ``text_encoder/`` ``config.json``
files, ``tokenizer/`` and ``scheduler/`` (its weight files, if any, are not read). The result is the same
:class:`ModelBundle` the diffusers folder itself gives.

Everything loads offline (``local_files_only=True``) and from safetensors only (``use_safetensors=True``; a
single-file ``.ckpt``/``.pt`` is refused: those are pickles).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .codec import AutoencoderKLCodec, PixelUnshuffleCodec, codec_from_config
from .tokenizer import prompt_words

BUNDLE_FILE = "segdrop_model.json"
DIFFUSERS_INDEX = "model_index.json"
FORMAT_VERSION = 1


class BundleError(ValueError):
    """A folder that is not a loadable model bundle."""


@dataclass
class ModelBundle:
    unet: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    codec: Any
    image_size: int
    info: dict = field(default_factory=dict)
    text_encoder_2: Any = None  # SDXL: CLIPTextModelWithProjection (None for SD1.x and SegDrop toy models)
    tokenizer_2: Any = None

    @property
    def is_sdxl(self) -> bool:
        """True when the bundle has SDXL's second text encoder (and so the added text/time conditioning)."""
        return self.text_encoder_2 is not None

    @property
    def object_prompt(self) -> str:
        return self.info.get("object_prompt", "a photo of a {}")

    @property
    def vocabulary(self) -> list[str] | None:
        """The closed word list of a word-level model (trained by ``scratch``); None for open BPE vocabularies."""
        words = self.info.get("vocabulary")
        return list(words) if words else None

    def check_vocabulary(self, prompts: list[str]) -> None:
        """Refuse words a word-level tokenizer does not know: it would split them into letters silently."""
        known = self.vocabulary
        if known is None:
            return
        known_set = set(known)
        for prompt in prompts:
            unknown = [w for w in prompt_words(prompt) if w not in known_set]
            if unknown:
                raise ValueError(
                    f"The prompt {prompt!r} has {', '.join(map(repr, unknown))}, which this model's vocabulary "
                    f"does not hold (its tokenizer would turn it into meaningless letter or end tokens). Use only these words, "
                    f"without punctuation: {', '.join(known)}."
                )

    def token_ids(self, prompts: str | list[str]) -> torch.Tensor:
        """``(B, L)`` ids padded to the tokenizer's ``model_max_length``: the text encoder's exact input.

        A word outside a word-level model's vocabulary is a ``ValueError`` listing the vocabulary.
        """
        return self._ids(self.tokenizer, prompts)

    def _ids(self, tokenizer, prompts: str | list[str]) -> torch.Tensor:
        if isinstance(prompts, str):
            prompts = [prompts]
        self.check_vocabulary(prompts)
        return tokenizer(
            prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids

    def tokens(self, prompts: str | list[str]) -> list[list[str]]:
        """Token strings per context position, as the cross-attention columns see them."""
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in self.token_ids(prompts)]

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Token ids -> ``last_hidden_state`` (B, L, D), padded to the tokenizer's ``model_max_length``. SDXL
        bundles: both encoders' penultimate hidden states concatenated, (B, L, D1 + D2), as diffusers' SDXL
        pipelines' ``encode_prompt`` (no clip skip)."""
        if not self.is_sdxl:
            device = next(self.text_encoder.parameters()).device
            return self.text_encoder(self.token_ids(prompts).to(device))[0]
        return self._encode_sdxl(prompts)[0]

    @torch.no_grad()
    def _encode_sdxl(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden (B, L, D1 + D2), pooled ``text_embeds`` of encoder 2 (B, P))."""
        states, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            device = next(encoder.parameters()).device
            out = encoder(self._ids(tokenizer, prompts).to(device), output_hidden_states=True)
            pooled = out[0]  # the final encoder's (CLIPTextModelWithProjection's text_embeds) is kept
            states.append(out.hidden_states[-2])
        return torch.cat(states, dim=-1), pooled

    def time_ids(self, batch: int) -> torch.Tensor:
        """SDXL ``add_time_ids`` (B, 6): original size (H, W), crop (0, 0), target size (H, W) = ``image_size``."""
        s = float(self.image_size)
        return torch.tensor([[s, s, 0.0, 0.0, s, s]]).repeat(int(batch), 1)

    @torch.no_grad()
    def added_cond_kwargs(self, prompts: str | list[str]) -> dict[str, torch.Tensor] | None:
        """The UNet's ``added_cond_kwargs`` for ``prompts`` (``text_embeds`` (B, P), ``time_ids`` (B, 6)), on CPU in
        the text encoder's dtype; ``None`` for bundles without added conditioning (SD1.x, toy models)."""
        if not self.is_sdxl:
            return None
        pooled = self._encode_sdxl(prompts)[1]
        return {"text_embeds": pooled.cpu(), "time_ids": self.time_ids(pooled.shape[0]).to(pooled.dtype)}

    def added_cond_problem(self) -> str | None:
        """Why this bundle's UNet cannot be given added conditioning by :meth:`added_cond_kwargs` (None when it
        needs none, or is an SDXL text_time UNet whose ``add_embedding`` fits 6 time ids + encoder 2's projection)."""
        kind = getattr(self.unet.config, "addition_embed_type", None)
        if kind is None:
            return None if not self.is_sdxl else "it has a second text encoder but its UNet takes no added conditioning"
        if kind != "text_time":
            return f"its UNet's added conditioning {kind!r} is not SDXL's 'text_time'"
        if not self.is_sdxl:
            return "its UNet takes SDXL added conditioning ('text_time') but it has no text_encoder_2/ and tokenizer_2/"
        want = int(self.unet.add_embedding.linear_1.in_features)
        have = 6 * int(self.unet.config.addition_time_embed_dim) + int(self.text_encoder_2.config.projection_dim)
        if want != have:
            return (f"its UNet's add_embedding takes {want} features, not 6 time ids x "
                    f"{self.unet.config.addition_time_embed_dim} + {self.text_encoder_2.config.projection_dim} "
                    "(an SDXL refiner with aesthetic-score ids is not supported)")
        return None

    def to(self, *args, **kwargs) -> "ModelBundle":
        self.unet.to(*args, **kwargs)
        self.text_encoder.to(*args, **kwargs)
        if self.text_encoder_2 is not None:
            self.text_encoder_2.to(*args, **kwargs)
        self.codec.to(*args, **kwargs)
        return self


def _need(folder: Path, sub: str) -> Path:
    path = folder / sub
    if not path.is_dir():
        raise BundleError(f"{folder} has no {sub}/ folder (a model bundle needs unet/, text_encoder/, tokenizer/, scheduler/)")
    return path


def _load(cls, folder: Path, what: str, **kwargs):
    try:
        return cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, **kwargs)
    except (OSError, EnvironmentError) as error:
        raise BundleError(f"could not load the {what} from {folder} (safetensors weights are required): {error}") from error


def load_bundle(path: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                config: str | os.PathLike | None = None) -> ModelBundle:
    """Load a SegDrop model folder or a diffusers SD1.x/SDXL folder (offline, safetensors only). Models are in eval
    mode.

    ``path`` may also be a single-file SD1.x ``.safetensors`` checkpoint (LDM layout); ``config`` is then the
    diffusers folder giving its configs and tokenizer (:func:`load_single_file_bundle`). ``config`` with a folder
    ``path`` is an error (the folder has its own configs)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    folder = Path(path).expanduser()
    file_suffixes = SINGLE_FILE_SUFFIXES + PICKLE_SUFFIXES
    if folder.is_file() or (not folder.exists() and folder.suffix.lower() in file_suffixes):
        return load_single_file_bundle(folder, config, torch_dtype)
    if config is not None:
        raise BundleError(f"a config folder ({config}) is only used with a single-file .safetensors checkpoint; "
                          f"{folder} is a model folder with its own configs: drop the config folder")
    if not folder.is_dir():
        raise BundleError(f"model folder {folder} does not exist")
    dtype_kwargs = {"torch_dtype": torch_dtype} if torch_dtype is not None else {}
    if (folder / BUNDLE_FILE).is_file():
        info = json.loads((folder / BUNDLE_FILE).read_text())
        codec_cfg = info.get("codec", {"type": "pixel_unshuffle", "factor": 2})
        if codec_cfg.get("type") == AutoencoderKLCodec.type:
            vae = _load(AutoencoderKL, _need(folder, "vae"), "VAE", **dtype_kwargs).eval()
            codec = AutoencoderKLCodec(vae, codec_cfg.get("scaling_factor"))
        else:
            codec = codec_from_config(codec_cfg)
        image_size = int(info.get("image_size", 64))
    elif (folder / DIFFUSERS_INDEX).is_file():
        info = {"source": "diffusers", "model_index": json.loads((folder / DIFFUSERS_INDEX).read_text()),
                "object_prompt": "a photo of a {}"}
        vae = _load(AutoencoderKL, _need(folder, "vae"), "VAE", **dtype_kwargs).eval()
        codec = AutoencoderKLCodec(vae)
        image_size = None
    else:
        raise BundleError(
            f"no {BUNDLE_FILE} or {DIFFUSERS_INDEX} in {folder}: expected a folder written by "
            "`python -m segdrop.training` or a diffusers Stable Diffusion folder"
        )
    unet = _load(UNet2DConditionModel, _need(folder, "unet"), "UNet", **dtype_kwargs).eval()
    text_encoder = _load(CLIPTextModel, _need(folder, "text_encoder"), "text encoder", **dtype_kwargs).eval()
    try:
        tokenizer = CLIPTokenizer.from_pretrained(_need(folder, "tokenizer"), local_files_only=True)
    except (OSError, EnvironmentError, ValueError) as error:
        raise BundleError(f"could not load the tokenizer from {folder / 'tokenizer'}: {error}") from error
    text_encoder_2 = tokenizer_2 = None
    if (folder / "text_encoder_2").is_dir():  # SDXL
        text_encoder_2 = _load(CLIPTextModelWithProjection, folder / "text_encoder_2", "second text encoder",
                               **dtype_kwargs).eval()
        try:
            tokenizer_2 = CLIPTokenizer.from_pretrained(_need(folder, "tokenizer_2"), local_files_only=True)
        except (OSError, EnvironmentError, ValueError) as error:
            raise BundleError(f"could not load the tokenizer from {folder / 'tokenizer_2'}: {error}") from error
    scheduler_dir = _need(folder, "scheduler")
    scheduler_config = DDPMScheduler.load_config(scheduler_dir, local_files_only=True)
    scheduler = DDPMScheduler.from_config(scheduler_config)
    if image_size is None:
        image_size = int(unet.config.sample_size) * codec.factor
    return ModelBundle(unet, text_encoder, tokenizer, scheduler, codec, image_size, info, text_encoder_2, tokenizer_2)


SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_CLIP_PREFIX = "cond_stage_model.transformer."
LDM_UNET_CONV_IN = LDM_UNET_PREFIX + "input_blocks.0.0.weight"
CONFIG_FOLDER_HELP = (
    "a diffusers SD1.x inpainting folder with the same architecture as the checkpoint: model_index.json, "
    "unet/config.json, vae/config.json, text_encoder/config.json, tokenizer/ and scheduler/ (weights not needed; "
    "e.g. the stable-diffusion-inpainting repo downloaded without its *.safetensors/*.bin files)"
)


def _single_file_kind_problem(keys: set[str]) -> str | None:
    """Why a checkpoint's key set is not an SD1.x LDM single file (UNet + VAE + CLIP-L), or ``None``."""
    if any(k.startswith("conditioner.embedders.") for k in keys):
        return "it looks like an SDXL checkpoint (conditioner.embedders.* keys); only SD1.x single files are supported"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return ("it looks like an SD2.x checkpoint (OpenCLIP cond_stage_model.model.* keys); only SD1.x (CLIP-L) "
                "single files are supported")
    missing = [what for what, prefix in (("UNet model.diffusion_model.*", LDM_UNET_PREFIX),
                                         ("VAE first_stage_model.*", LDM_VAE_PREFIX),
                                         ("CLIP text encoder cond_stage_model.transformer.*", LDM_CLIP_PREFIX))
               if not any(k.startswith(prefix) for k in keys)]
    if missing:
        return (f"it has no {', no '.join(missing)} weights; expected a full SD1.x checkpoint in the original "
                "LDM/CompVis layout (as ComfyUI's Load Checkpoint reads)")
    if LDM_UNET_CONV_IN not in keys:
        return f"it has no {LDM_UNET_CONV_IN} (the UNet's first convolution)"
    return None


def _check_loaded(module: Any, what: str, path: Path) -> None:
    """diffusers' single-file loading leaves weights the checkpoint lacks on the meta device: refuse those."""
    missing = [n for n, t in [*module.named_parameters(), *module.named_buffers()] if t.device.type == "meta"]
    if missing:
        raise BundleError(f"the {what} weights in {path} do not match the config folder's {what} config: "
                          f"{len(missing)} tensors missing, e.g. {', '.join(missing[:3])}")


def _load_ldm_clip(cls, checkpoint: dict, config_dir: Path, path: Path, torch_dtype):
    """CLIP-L from ``cond_stage_model.transformer.*`` (strict: every weight of the config's model must be there)."""
    from transformers import CLIPTextConfig

    clip_config = CLIPTextConfig.from_pretrained(config_dir, local_files_only=True)
    model = cls(clip_config)
    state = {k[len(LDM_CLIP_PREFIX):]: v for k, v in checkpoint.items() if k.startswith(LDM_CLIP_PREFIX)}
    expected = model.state_dict()
    if not any(k.startswith("text_model.") for k in expected):  # transformers >= 5.6 flattened CLIPTextModel
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}  # a buffer some checkpoints carry
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as error:  # shape mismatches
        raise BundleError(f"the text encoder weights in {path} do not fit {config_dir}/config.json: {error}") from None
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing or result.unexpected_keys:
        raise BundleError(f"the text encoder weights in {path} do not match {config_dir}/config.json: missing "
                          f"{missing[:3]}, unexpected {result.unexpected_keys[:3]}")
    if torch_dtype is not None:
        model.to(torch_dtype)
    return model.eval()


def load_single_file_bundle(path: str | os.PathLike, config: str | os.PathLike | None,
                            torch_dtype: torch.dtype | None = None) -> ModelBundle:
    """A single-file SD1.x ``.safetensors`` checkpoint (LDM layout) + a diffusers ``config`` folder -> the
    :class:`ModelBundle` the diffusers folder would give, with the checkpoint's weights (see the module docstring).

    UNet and VAE go through diffusers' ``UNet2DConditionModel.from_single_file`` /
    ``AutoencoderKL.from_single_file`` with ``config=<folder>``, ``local_files_only=True`` (no hub access); the
    CLIP-L text encoder is the checkpoint's ``cond_stage_model.transformer.*`` loaded strictly into the folder's
    ``text_encoder/config.json`` model; tokenizer and scheduler come from the folder. Every failure is a
    :class:`BundleError` saying what to fix."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from safetensors import SafetensorError, safe_open
    from transformers import CLIPTextModel, CLIPTokenizer

    file = Path(path).expanduser()
    suffix = file.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise BundleError(f"{file} is a {suffix} (pickle) checkpoint, which SegDrop does not load (unpickling can run "
                          "code); convert it to .safetensors first (e.g. load it once in a trusted environment and "
                          "save_file its state dict) or use a .safetensors download of the same model")
    if suffix not in SINGLE_FILE_SUFFIXES:
        raise BundleError(f"{file} is not a model folder or a .safetensors single-file checkpoint")
    if not file.is_file():
        raise BundleError(f"single-file checkpoint {file} does not exist")
    if config is None:
        raise BundleError(f"{file} is a single-file checkpoint: it holds weights only, not the model configs or the "
                          f"tokenizer. Give the config folder too (--base_config DIR): {CONFIG_FOLDER_HELP}")
    config_dir = Path(config).expanduser()
    if not config_dir.is_dir():
        raise BundleError(f"config folder {config_dir} (for the single-file checkpoint {file}) does not exist; "
                          f"expected {CONFIG_FOLDER_HELP}")
    needed = [DIFFUSERS_INDEX, "unet/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer",
              "scheduler/scheduler_config.json"]
    absent = [n for n in needed if not (config_dir / n).exists()]
    if absent:
        raise BundleError(f"config folder {config_dir} has no {', '.join(absent)}; expected {CONFIG_FOLDER_HELP}")

    try:
        with safe_open(str(file), framework="pt") as handle:
            keys = set(handle.keys())
            conv_in_shape = handle.get_slice(LDM_UNET_CONV_IN).get_shape() if LDM_UNET_CONV_IN in keys else None
    except (SafetensorError, OSError) as error:
        raise BundleError(f"could not read {file} as safetensors: {error}") from None
    problem = _single_file_kind_problem(keys)
    if problem is not None:
        raise BundleError(f"{file} is not a supported single-file checkpoint: {problem}")
    unet_config = json.loads((config_dir / "unet" / "config.json").read_text())
    file_channels, config_channels = int(conv_in_shape[1]), int(unet_config.get("in_channels", 4))
    if file_channels != config_channels:
        kinds = {4: " (text-to-image)", 9: " (inpainting)"}
        raise BundleError(
            f"the UNet in {file} takes {file_channels} input channels{kinds.get(file_channels, '')} but "
            f"{config_dir}/unet/config.json says {config_channels}{kinds.get(config_channels, '')}: give a config "
            "folder of the same model type (an inpainting checkpoint needs an inpainting config folder, 9 channels)")

    from safetensors.torch import load_file

    checkpoint = load_file(str(file))
    kwargs = {"config": str(config_dir), "local_files_only": True}
    if torch_dtype is not None:
        kwargs["torch_dtype"] = torch_dtype
    loaded = {}
    for what, cls, sub in (("UNet", UNet2DConditionModel, "unet"), ("VAE", AutoencoderKL, "vae")):
        try:
            model = cls.from_single_file(checkpoint, subfolder=sub, **kwargs)
        except (OSError, ValueError, RuntimeError, KeyError) as error:
            raise BundleError(f"could not convert the {what} of {file} with the config {config_dir / sub}: "
                              f"{type(error).__name__}: {error}") from None
        _check_loaded(model, what, file)
        loaded[sub] = model.eval()
    text_encoder = _load_ldm_clip(CLIPTextModel, checkpoint, config_dir / "text_encoder", file, torch_dtype)
    del checkpoint
    try:
        tokenizer = CLIPTokenizer.from_pretrained(config_dir / "tokenizer", local_files_only=True)
    except (OSError, EnvironmentError, ValueError) as error:
        raise BundleError(f"could not load the tokenizer from {config_dir / 'tokenizer'}: {error}") from error
    scheduler = DDPMScheduler.from_config(DDPMScheduler.load_config(config_dir / "scheduler", local_files_only=True))
    codec = AutoencoderKLCodec(loaded["vae"])
    unet = loaded["unet"]
    info = {"source": "single_file", "single_file": str(file), "base_config": str(config_dir),
            "model_index": json.loads((config_dir / DIFFUSERS_INDEX).read_text()), "object_prompt": "a photo of a {}"}
    image_size = int(unet.config.sample_size) * codec.factor
    return ModelBundle(unet, text_encoder, tokenizer, scheduler, codec, image_size, info)


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the complete folder ``tmp`` to ``final``; an existing ``final`` is swapped out, then removed."""
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def save_bundle(bundle: ModelBundle, path: str | os.PathLike) -> Path:
    """Write ``bundle`` as a SegDrop model folder, atomically (into ``<path>.tmp-xxxx``, then ``os.replace``)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f"{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tmp.mkdir()
        bundle.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        bundle.text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        bundle.tokenizer.save_pretrained(tmp / "tokenizer")
        if bundle.text_encoder_2 is not None:
            bundle.text_encoder_2.save_pretrained(tmp / "text_encoder_2", safe_serialization=True)
            bundle.tokenizer_2.save_pretrained(tmp / "tokenizer_2")
        bundle.scheduler.save_pretrained(tmp / "scheduler")
        if isinstance(bundle.codec, AutoencoderKLCodec):
            bundle.codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
        info = dict(bundle.info)
        info.pop("model_index", None)
        info.update({
            "format": "segdrop_model",
            "format_version": FORMAT_VERSION,
            "codec": bundle.codec.config(),
            "image_size": int(bundle.image_size),
        })
        info.setdefault("object_prompt", "a photo of a {}")
        (tmp / BUNDLE_FILE).write_text(json.dumps(info, indent=2, sort_keys=False, default=str) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


__all__ = ["ModelBundle", "BundleError", "load_bundle", "load_single_file_bundle", "save_bundle", "PixelUnshuffleCodec", "AutoencoderKLCodec"]
