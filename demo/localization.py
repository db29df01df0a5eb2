"""Does a model's cross-attention point at the objects its caption names? A quick check of a trained model.

For every object, the cross-attention of single words of its name (through the project's capture: fresh
noise per timestep, heads, layers and steps averaged, bilinear to image size) is scored against the object's
visible mask:

* ``iou``: IoU between the top-|mask| pixels of the map and the mask;
* ``pointing``: whether the map's maximum lies inside the object (mask dilated by 1 px);
* ``chance_iou``: the IoU a map with no information gets on average (about the mask's share of the image).

Rows: ``object word`` (the name's last word, e.g. the toy world's shape word), ``first word`` (e.g. its colour
word) and ``name`` (the two maps averaged). A word that appears twice in the caption is skipped as ambiguous.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..attention_patch.diffusers_backend import capture_attention
from ..attention_patch.tokens import word_spans
from .data import LabelledImage
from .protocol import image_batch

DEFAULT_TIMESTEPS = (100, 300, 500)


@torch.no_grad()
def word_maps(bundle, image: np.ndarray, caption: str, timesteps: Sequence[int] = DEFAULT_TIMESTEPS,
              seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Cross-attention maps ``(L, H, W)`` for every context position of ``caption``, and the token strings."""
    tokens = bundle.tokens(caption)[0]
    maps = capture_attention(
        bundle.unet, bundle.codec.encode(image_batch([image])), bundle.encode_prompt(caption), list(timesteps),
        add_noise=True, alphas_cumprod=bundle.scheduler.alphas_cumprod, seed=seed, keep_self=False, tokens=tokens,
    )
    per_token = torch.stack([maps.cross_attention_for([j])[0] for j in range(len(tokens))])
    size = tuple(np.asarray(image).shape[:2])
    return F.interpolate(per_token[:, None], size=size, mode="bilinear", align_corners=False)[:, 0], tokens


def scores(attention: np.ndarray, mask: np.ndarray) -> tuple[float, bool, float]:
    """(top-k IoU, pointing hit, chance IoU) of one map against one object mask."""
    k = int(mask.sum())
    top = np.zeros(mask.size, bool)
    top[np.argsort(attention.ravel())[::-1][:k]] = True
    top = top.reshape(mask.shape)
    overlap = (top & mask).sum() / max(1, (top | mask).sum())
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    y, x = np.unravel_index(np.argmax(attention), attention.shape)
    share = k / mask.size
    chance = share / (2 - share)  # E[IoU] of a random top-k set of the same size: k² /N over (2k - k²/N)
    return float(overlap), bool(grown[y, x]), float(chance)


def localization_report(bundle, items: Sequence[LabelledImage], timesteps: Sequence[int] = DEFAULT_TIMESTEPS) -> dict:
    """Mean scores per row (see the module notes) over every unambiguous object of ``items``."""
    rows: dict[str, list] = {"object word": [], "first word": [], "name": []}
    for index, item in enumerate(items):
        maps, tokens = word_maps(bundle, item.image, item.caption, timesteps, seed=index)
        spans = word_spans(tokens)
        for name, mask in zip(item.object_names, item.object_masks):
            words = name.split()
            found = {}
            for kind, word in (("object word", words[-1]), ("first word", words[0])):
                hits = [positions for text, positions in spans if text.lower() == word.lower()]
                if len(words) < 2 and kind == "first word" or len(hits) != 1 or not mask.any():
                    continue  # the word names two objects (ambiguous), or the name has one word
                found[kind] = maps[hits[0]].sum(0)
                rows[kind].append(scores(found[kind].numpy(), mask))
            if len(found) == 2:
                rows["name"].append(scores((found["object word"] + found["first word"]).numpy() / 2, mask))
    report: dict = {}
    for kind, values in rows.items():
        if values:
            overlap, hit, chance = (np.array(v, float) for v in zip(*values))
            report[kind] = {"objects": len(values), "iou": round(float(overlap.mean()), 3),
                            "pointing": round(float(hit.mean()), 3), "chance_iou": round(float(chance.mean()), 3)}
    report["timesteps"] = list(timesteps)
    return report
