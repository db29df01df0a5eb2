"""Quick check that a trained model's cross-attention localizes the objects its caption names.

    python -m segdrop.training.evaluate models/default --scenes 24

For held-out toy-world scenes (seeds the training set does not use), the project's attention capture noises the
clean image at each timestep t, runs the UNet once with the scene's caption, and averages the word's
cross-attention over heads, layers and timesteps; the map is upsampled bilinearly to image size.
Scores per object word (shape word, colour word, and ``name``: both maps averaged):

* ``iou``: IoU between the top-|mask| pixels of the map and the object's visible mask;
* ``pointing``: whether the map's maximum lies inside the object (mask dilated by 1 px);
* ``chance_iou``: the IoU a map with no information gets on average (about the mask's share of the image).

This is a sanity check of a trained model, with simpler scores than the demo's GMM masks.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch
import torch.nn.functional as F


@torch.no_grad()
def word_maps(bundle, image: np.ndarray, caption: str, timesteps=(100, 300, 500), seed: int = 0) -> tuple[torch.Tensor, list[str]]:
    """Cross-attention maps (L, H, W) for every token of ``caption``, and the token strings.

    Uses the project's capture (fresh noise per timestep, heads/layers/steps averaged), bilinear to image size.
    """
    from ..attention_patch.diffusers_backend import capture_attention

    tokens = bundle.tokens(caption)[0]
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    maps = capture_attention(
        bundle.unet, bundle.codec.encode(x), bundle.encode_prompt(caption), list(timesteps), add_noise=True,
        alphas_cumprod=bundle.scheduler.alphas_cumprod, seed=seed, keep_self=False, tokens=tokens,
    )
    per_token = torch.stack([maps.cross_attention_for([j])[0] for j in range(len(tokens))])
    size = image.shape[0]
    return F.interpolate(per_token[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0], tokens


def _scores(amap: np.ndarray, mask: np.ndarray) -> tuple[float, bool, float]:
    k = int(mask.sum())
    top = np.zeros(mask.size, bool)
    top[np.argsort(amap.ravel())[::-1][:k]] = True
    top = top.reshape(mask.shape)
    iou = (top & mask).sum() / max(1, (top | mask).sum())
    grown = mask.copy()
    grown[1:] |= mask[:-1]
    grown[:-1] |= mask[1:]
    grown[:, 1:] |= mask[:, :-1]
    grown[:, :-1] |= mask[:, 1:]
    y, x = np.unravel_index(np.argmax(amap), amap.shape)
    frac = k / mask.size
    chance = frac / (2 - frac)  # E[IoU] of a random top-k set of the same size: k² /N over (2k - k²/N)
    return float(iou), bool(grown[y, x]), float(chance)


def localization_report(bundle, scenes: int = 24, first_seed: int = 900_000, timesteps=(100, 300, 500)) -> dict:
    from ..toyworld import make_scene

    rows = {"shape": [], "color": [], "name": []}
    for i in range(scenes):
        scene = make_scene(first_seed + i, size=bundle.image_size, n_objects=1 + i % 2)
        maps, tokens = word_maps(bundle, scene.image, scene.caption, timesteps, seed=i)
        for obj in scene.objects:
            found = {}
            for kind, word in (("shape", obj.shape), ("color", obj.color)):
                positions = [j for j, tok in enumerate(tokens) if tok == word + "</w>"]
                if len(positions) != 1 or not obj.mask.any():
                    continue  # the word names two objects: ambiguous
                found[kind] = maps[positions[0]]
                rows[kind].append(_scores(found[kind].numpy(), obj.mask))
            if len(found) == 2:  # the object's name ("red circle"): both words' maps averaged
                rows["name"].append(_scores((found["shape"] + found["color"]).numpy() / 2, obj.mask))
    report = {}
    for kind, values in rows.items():
        if values:
            iou, hit, chance = (np.array(v, float) for v in zip(*values))
            report[kind] = {"objects": len(values), "iou": round(float(iou.mean()), 3),
                            "pointing": round(float(hit.mean()), 3), "chance_iou": round(float(chance.mean()), 3)}
    report["timesteps"] = list(timesteps)
    report["scenes"] = scenes
    return report


@torch.no_grad()
def sample(bundle, prompts: list[str], steps: int = 30, guidance: float = 3.0, seed: int = 0) -> np.ndarray:
    """DDIM samples with classifier-free guidance (the empty prompt is the unconditional branch): (N, H, W, 3)."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(bundle.scheduler.config, clip_sample=False, set_alpha_to_one=False)
    scheduler.set_timesteps(steps)
    cond, uncond = bundle.encode_prompt(prompts), bundle.encode_prompt([""] * len(prompts))
    side = bundle.image_size // bundle.codec.factor
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), bundle.unet.config.in_channels, side, side, generator=g)
    for t in scheduler.timesteps:
        eps = bundle.unet(torch.cat([x, x]), t, torch.cat([cond, uncond])).sample
        eps_c, eps_u = eps.chunk(2)
        x = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return bundle.codec.decode(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def main(argv: list[str] | None = None) -> int:
    from .bundle import load_bundle

    parser = argparse.ArgumentParser(prog="python -m segdrop.training.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--scenes", type=int, default=24)
    parser.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500])
    parser.add_argument("--samples", help="also write a PNG grid of DDIM samples for a few toy prompts here")
    args = parser.parse_args(argv)
    bundle = load_bundle(args.model)
    if args.samples:
        from PIL import Image

        prompts = ["a photo of a red circle", "a photo of a blue square", "a photo of a green triangle",
                   "a photo of a yellow cross", "a photo of a purple diamond", "a photo of a white circle and a red square"]
        images = sample(bundle, prompts)
        grid = (np.concatenate(list(images), axis=1) * 255).round().astype(np.uint8)
        Image.fromarray(grid).save(args.samples)
    report = localization_report(bundle, args.scenes, timesteps=tuple(args.timesteps))
    json.dump(report, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
