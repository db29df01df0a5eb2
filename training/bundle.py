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

Everything loads offline (``local_files_only=True``) and from safetensors only (``use_safetensors=True``).
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
        if isinstance(prompts, str):
            prompts = [prompts]
        self.check_vocabulary(prompts)
        return self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True,
            return_tensors="pt",
        ).input_ids

    def tokens(self, prompts: str | list[str]) -> list[list[str]]:
        """Token strings per context position, as the cross-attention columns see them."""
        return [self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in self.token_ids(prompts)]

    @torch.no_grad()
    def encode_prompt(self, prompts: str | list[str]) -> torch.Tensor:
        """Token ids -> ``last_hidden_state`` (B, L, D), padded to the tokenizer's ``model_max_length``."""
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(self.token_ids(prompts).to(device))[0]

    def to(self, *args, **kwargs) -> "ModelBundle":
        self.unet.to(*args, **kwargs)
        self.text_encoder.to(*args, **kwargs)
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


def load_bundle(path: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> ModelBundle:
    """Load a SegDrop model folder or a diffusers SD1.x folder (offline, safetensors only). Models are in eval mode."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = Path(path).expanduser()
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
    scheduler_dir = _need(folder, "scheduler")
    scheduler_config = DDPMScheduler.load_config(scheduler_dir, local_files_only=True)
    scheduler = DDPMScheduler.from_config(scheduler_config)
    if image_size is None:
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


__all__ = ["ModelBundle", "BundleError", "load_bundle", "save_bundle", "PixelUnshuffleCodec", "AutoencoderKLCodec"]
