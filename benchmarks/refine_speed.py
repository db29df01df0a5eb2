"""Cost of Background Inpaint Refine's re-noising DDIM next to a plain DDIM sample, side by side in one run.

On the tiny random 4-channel SD1.5 checkpoint (``segdrop.testing.comfy_checkpoint``; built once into
``$SEGDROP_TEST_CACHE``, default ``/tmp/segdrop_comfy_cache``), at --size px (latent --size/8), --steps steps,
cfg 1, same seed. Needs ``COMFYUI_PATH``.

1. Sampling, the goal: the node's inpainting (``nodes.refine.inpaint_background``: ComfyUI's ``sample_custom`` with
   the ``KSAMPLER`` around ``distill.renoise_sampler.ddim_renoise``, which draws fresh noise and blends the
   background before every step) vs KSampler's own ``ddim`` sampler on the ``ddim_uniform`` scheduler at cfg 1
   (``comfy.sample.sample``, what the KSampler node runs), on an all-zero latent of the same size. Both take one
   conditional UNet call per step on the same sigmas; the difference is the per-step noise draw and blend.
2. Whole node, for reference: ``SegDrop_BackgroundInpaintRefine`` (prompt encode, VAE encode, the sampling, VAE
   decode, the GMM refinement of |x - x̂|) vs the stock chain CLIPTextEncode + VAEEncode -> KSampler (ddim,
   ddim_uniform, cfg 1, the encoded latent at denoise 1.0) -> VAEDecode: the same text and codec work; the node
   also fits the 2-component GMM on D, whose time is printed separately.

The node classes and functions are called directly, inside the harness's activated ComfyUI and
``torch.inference_mode()`` as the executor does, with model/CLIP/VAE loaded once. Rounds alternate the variants,
with a new seed each round; medians are reported.

    python benchmarks/refine_speed.py [--threads 1] [--rounds 3] [--steps 50] [--size 128]

Goal: re-noising DDIM / plain DDIM <= 1.1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

REFINE = "SegDrop_BackgroundInpaintRefine"
PROMPT = "a photo of a background"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def test_picture(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, S, S, 3) grey with a red square (S/4 .. 3S/4) and a (1, S, S) preliminary mask over-covering it."""
    image = torch.full((1, size, size, 3), 0.5)
    image[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = torch.tensor([0.86, 0.12, 0.12])
    mask = torch.zeros(1, size, size)
    mask[:, 3 * size // 16: 13 * size // 16, 3 * size // 16: 13 * size // 16] = 1.0
    return image, mask


def report(title: str, times: dict[str, list[float]], baseline: str) -> None:
    base = statistics.median(times[baseline])
    print(title)
    print(f"{'variant':30s} {'median s':>9s} {'min s':>8s} {'ratio':>7s}  rounds (s)")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:30s} {median:9.3f} {min(values):8.3f} {median / base:7.3f}  " + " ".join(f"{t:.3f}" for t in values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=128, help="image side (px), a multiple of 8")
    parser.add_argument("--skip_node", action="store_true", help="only the sampling comparison")
    args = parser.parse_args(argv)

    from segdrop.testing.comfy_harness import comfyui_path, shared_comfyui

    if comfyui_path() is None:
        print("skipped: set COMFYUI_PATH to a ComfyUI checkout, e.g. COMFYUI_PATH=/path/to/ComfyUI")
        return
    from segdrop.testing.comfy_checkpoint import ensure_tiny_checkpoint

    harness = shared_comfyui()
    checkpoint = ensure_tiny_checkpoint(harness)
    torch.set_num_threads(args.threads)  # after ComfyUI's start, in case it changed the thread count
    image, mask = test_picture(args.size)
    with harness.activated(), torch.inference_mode():
        import comfy.sample

        nodes = harness.nodes
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint)[:3]
        refine_cls = nodes.NODE_CLASS_MAPPINGS[REFINE]
        refine = sys.modules[refine_cls.__module__]  # the pack as ComfyUI imported it
        positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
        latent = vae.encode(image)
        cells = refine.preliminary_cells(image, mask, 8)
        keep = (~cells[0]).float()[None, None]
        sigmas = refine.ddim_sigmas(model, args.steps)
        empty = torch.zeros_like(latent)

        def renoise(seed: int):
            return refine.inpaint_background(model, positive, latent, keep, sigmas, seed, 0.0, None)

        def plain(seed: int):
            noise = comfy.sample.prepare_noise(empty, seed)
            return comfy.sample.sample(model, noise, args.steps, 1.0, "ddim", "ddim_uniform", positive, positive,
                                       empty, denoise=1.0, seed=seed, disable_pbar=True)

        def node(seed: int):
            return refine_cls.execute(model=model, clip=clip, vae=vae, image=image, mask=mask, prompt=PROMPT,
                                      seed=seed, steps=args.steps, eta=0.0, postprocess=False).result

        def stock(seed: int):
            cond = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
            encoded = nodes.VAEEncode().encode(vae, image)[0]
            samples = nodes.KSampler().sample(model, seed, args.steps, 1.0, "ddim", "ddim_uniform", cond, cond,
                                              encoded, denoise=1.0)[0]
            return nodes.VAEDecode().decode(vae, samples)[0]

        sampling = {"re-noising DDIM (the node's)": renoise, "KSampler ddim/ddim_uniform": plain}
        whole = {"Background Inpaint Refine": node, "VAEEncode+KSampler+VAEDecode": stock}
        variants = {**sampling, **({} if args.skip_node else whole)}
        for fn in variants.values():  # warm-up: model load onto the device, first-call allocations
            fn(0)
        assert renoise(0).shape == plain(0).shape
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(timed(lambda: fn(1000 + r))[0])
        if not args.skip_node:
            from segdrop.segment.refine import refine_mask

            painted = vae.decode(renoise(0))[..., :3].float().clamp(0, 1)
            gmm_s = statistics.median(
                timed(lambda: refine_mask(image[0].numpy(), painted[0].numpy(), cells[0].numpy()))[0] for _ in range(3))

    h, w = latent.shape[-2:]
    print(f"tiny SD1.5 checkpoint, {args.size}x{args.size} image, latent {h}x{w}, {len(sigmas) - 1} steps "
          f"(ddim_uniform), cfg 1.0, {torch.get_num_threads()} threads, {args.rounds} rounds")
    report("\nsampling", {n: times[n] for n in sampling}, "KSampler ddim/ddim_uniform")
    if not args.skip_node:
        report("\nwhole node", {n: times[n] for n in whole}, "VAEEncode+KSampler+VAEDecode")
        print(f"(the GMM refinement of one image, included in the node: {gmm_s:.3f} s)")
    ratio = statistics.median(times["re-noising DDIM (the node's)"]) / statistics.median(times["KSampler ddim/ddim_uniform"])
    print(f"\nsummary: re-noising DDIM / plain DDIM = {ratio:.3f} (goal <= 1.1)")


if __name__ == "__main__":
    main()
