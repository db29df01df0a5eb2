"""Cost of SegDrop's object-removal code next to the stock way of doing the same work, side by side in one run.

1. ComfyUI: ``SegDrop_ObjectDropRemove`` vs the stock chain CLIPTextEncode("") -> InpaintModelConditioning ->
   KSampler -> VAEDecode -> ImageCompositeMasked (same mask), on the tiny random 9-channel SD1.5-inpainting
   checkpoint (``segdrop.testing.comfy_checkpoint``; built once into ``$SEGDROP_TEST_CACHE``, default
   ``/tmp/segdrop_comfy_cache``), same steps, sampler, scheduler, cfg, seed. Needs ``COMFYUI_PATH``.

   Same work: the node crops around the mask (grown by ``context``) and resizes the crop so its long side is
   ``resolution``. Here the image is --size px square, ``resolution`` = --size and ``context`` = 10 (the mask's
   box grown 10x, clamped to the image), so the crop IS the whole image, no resize happens and both sample the
   same --size/8 latent; ``mask_grow`` = 0 so both use the identical mask. (Cropping the stock chain instead
   would add crop/resize nodes to it and measure something else.) Remaining differences are the jobs themselves:
   the node also computes its effect mask, stitch and preview strip; the stock chain uses
   InpaintModelConditioning's default noise mask, and InpaintModelConditioning VAE-encodes the image twice
   (grayed for the concat latent, as is for the latent) where the node encodes it once (ObjectDrop needs no
   grayed copy and samples from an all-zero latent); the time of one encode is printed so this can be read off.

   The node classes are called directly, inside the harness's activated ComfyUI and ``torch.inference_mode()``
   as the executor does, with model/CLIP/VAE loaded once: this times the work, not the executor's cache (through
   ``run_prompt`` a seed change would re-run only KSampler onward in the stock chain, but all of the node). The
   seed changes every round anyway. Rounds alternate the variants; medians are reported.

2. Training throughput of the ``removal`` recipe (``training/train_removal.py``, its ``train()`` and
   ``train_conditioned.train_loop`` unchanged) vs a plain diffusers loop on the same UNet weights, batch size
   and the very same batch tensors: codec encode of target and conditioning, noise, ``scheduler.add_noise``,
   concat (noise | mask | image latent), UNet forward, MSE, backward, grad clipping (the recipe's
   ``max_grad_norm``, 1.0 by default; 0 turns it off in both), AdamW step.

   Steady-state step time of the recipe: ``train_loop`` is wrapped so the recipe's ``draw`` (per-step batch
   sampling + mask augmentation) records when each step starts and how long it took, and keeps the batch. A
   step's time is the gap between consecutive ``draw`` starts minus that ``draw``: everything the loop does per
   step (encode, forward/backward, optimizer, lr scheduler, loss log line) except sampling the batch, which the
   plain loop does not do (it is fed the recorded batches). Model loading, data loading, the final checkpoint
   and the export fall outside (the first --warmup steps are dropped; the last step, which checkpoints, is
   never measured). The recipe's own log (``... s/step``) averages from the first step, warm-up included, so it
   is not used. The model: a toy-layout bundle (PixelUnshuffleCodec(2): 12-channel latents, a 25 = 2x12+1 input
   channel diffusers UNet2DConditionModel, toy word tokenizer + 1-layer CLIP text encoder), built in a temp
   folder, on a --train_size px toy-world triplet set (rendered once, before any timing).

    python benchmarks/removal_speed.py [--threads 1] [--rounds 3] [--steps 4] [--size 256]
                                       [--train_steps 30] [--warmup 5] [--batch 8] [--train_size 32]
                                       [--widths 32,64] [--skip_comfy] [--skip_train]

Goals: ObjectDropRemove / stock chain <= 1.05; recipe images/s / plain loop images/s >= 0.95.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REMOVE = "SegDrop_ObjectDropRemove"


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


# ----------------------------------------------------------------------------------------------- ComfyUI


def test_picture(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, S, S, 3) grey with a red square (S/4 .. 3S/4) and a (1, S, S) mask on its centre (3S/8 .. 5S/8)."""
    image = torch.full((1, size, size, 3), 0.5)
    image[:, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = torch.tensor([0.86, 0.12, 0.12])
    mask = torch.zeros(1, size, size)
    mask[:, 3 * size // 8: 5 * size // 8, 3 * size // 8: 5 * size // 8] = 1.0
    return image, mask


def bench_comfy(args) -> dict | None:
    from segdrop.testing.comfy_harness import comfyui_path, shared_comfyui

    if comfyui_path() is None:
        print("ComfyUI: skipped (set COMFYUI_PATH to a ComfyUI checkout, e.g. COMFYUI_PATH=/path/to/ComfyUI)")
        return None
    from segdrop.testing.comfy_checkpoint import ensure_tiny_checkpoint

    comfy = shared_comfyui()
    checkpoint = ensure_tiny_checkpoint(comfy, inpainting=True)
    torch.set_num_threads(args.threads)  # after ComfyUI's start, in case it changed the thread count
    image, mask = test_picture(args.size)
    common = dict(steps=args.steps, cfg=1.0, sampler_name=args.sampler, scheduler=args.scheduler)
    with comfy.activated(), torch.inference_mode():
        nodes = comfy.nodes
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(checkpoint)[:3]
        remove_cls = nodes.NODE_CLASS_MAPPINGS[REMOVE]
        composite_cls = nodes.NODE_CLASS_MAPPINGS["ImageCompositeMasked"]

        def ours(seed: int):
            out = remove_cls.execute(model=model, clip=clip, vae=vae, image=image, mask=mask, seed=seed,
                                     mask_grow=0, context=10.0, resolution=args.size, effect_threshold=0.08, **common)
            return out.result if hasattr(out, "result") else out

        def stock(seed: int):
            cond = nodes.CLIPTextEncode().encode(clip, "")[0]
            positive, negative, latent = nodes.InpaintModelConditioning().encode(cond, cond, image, vae, mask)
            samples = nodes.KSampler().sample(model, seed, positive=positive, negative=negative, latent_image=latent,
                                              denoise=1.0, **common)[0]
            decoded = nodes.VAEDecode().decode(vae, samples)[0]
            return composite_cls().composite(image, decoded, 0, 0, False, mask), samples

        variants = {"ObjectDropRemove": ours, "stock inpaint chain": stock}
        # warm-up (model load onto the device, first-call allocations) and a same-work check
        _, first = timed(lambda: ours(0))
        _, (_, stock_latent) = timed(lambda: stock(0))
        preview = first[2]
        assert tuple(first[0].shape) == tuple(image.shape), first[0].shape
        assert tuple(preview.shape[1:3]) == (args.size, 3 * args.size), (
            f"ObjectDropRemove worked at {tuple(preview.shape[1:3])} (crop | output | mask strip), not the whole "
            f"{args.size}x{args.size} image")
        latent_hw = tuple(stock_latent["samples"].shape[-2:])
        times: dict[str, list[float]] = {name: [] for name in variants}
        for r in range(args.rounds):
            for name, fn in variants.items():
                times[name].append(timed(lambda: fn(1000 + r))[0])
        encode_s = statistics.median(timed(lambda: vae.encode(image))[0] for _ in range(3))
    ours_s, stock_s = (statistics.median(times[n]) for n in variants)
    print(f"ComfyUI: tiny 9-channel SD1.5-inpainting checkpoint, {args.size}x{args.size} image, latent "
          f"{latent_hw[0]}x{latent_hw[1]} (both), {args.steps} steps {args.sampler}/{args.scheduler} cfg 1.0, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'variant':24s} {'median s':>9s} {'min s':>8s} {'ratio':>7s}  rounds (s)")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:24s} {median:9.3f} {min(times[name]):8.3f} {median / stock_s:7.3f}  "
              + " ".join(f"{t:.3f}" for t in times[name]))
    print(f"(one VAE encode of the image: {encode_s:.3f} s; InpaintModelConditioning does two, the node one)")
    return {"ours": ours_s, "stock": stock_s, "ratio": ours_s / stock_s}


# ----------------------------------------------------------------------------------------------- training


def build_toy_inpaint_bundle(folder: Path, size: int, widths: tuple[int, ...]) -> Path:
    """A random toy-layout inpainting bundle: PixelUnshuffleCodec(2) (12-channel latents), a 25-channel-input UNet."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from segdrop.toyworld import vocabulary
    from segdrop.training.bundle import ModelBundle, save_bundle
    from segdrop.training.codec import PixelUnshuffleCodec
    from segdrop.training.conditioned_unet import inpaint_in_channels
    from segdrop.training.tokenizer import write_word_tokenizer
    from segdrop.training.train_scratch import make_scheduler

    words = sorted({w.lower() for w in vocabulary()} | {"a", "photo", "of", "and"})
    write_word_tokenizer(words, folder / "tok", max_length=16)
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok", local_files_only=True)
    torch.manual_seed(0)
    dim = 32
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim,
                                      num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id))
    codec = PixelUnshuffleCodec(2)
    c = codec.latent_channels
    n = len(widths)
    unet = UNet2DConditionModel(sample_size=size // 2, in_channels=inpaint_in_channels(c), out_channels=c,
                                block_out_channels=widths, layers_per_block=1,
                                down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
                                up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
                                attention_head_dim=tuple(max(1, w // 32) for w in widths), norm_num_groups=8,
                                cross_attention_dim=dim)
    bundle = ModelBundle(unet, te, tokenizer, make_scheduler(), codec, size,
                         {"vocabulary": words, "recipe": "inpaint", "max_length": 16})
    return save_bundle(bundle, folder / "inpaint_model")


def recipe_round(args, base: Path, data: Path, out: Path) -> tuple[list[float], list]:
    """Run the removal recipe; returns (steady-state step seconds without batch sampling, the drawn batches)."""
    from segdrop.training import train_removal

    starts, draw_s, batches = [], [], []
    original = train_removal.train_loop

    def instrumented(config, command, accelerator, bundle, recipe, started):
        draw = recipe.draw

        def timed_draw(g, b):
            t0 = time.perf_counter()
            batch = draw(g, b)
            starts.append(t0)
            draw_s.append(time.perf_counter() - t0)
            batches.append(batch)
            return batch

        recipe.draw = timed_draw
        return original(config, command, accelerator, bundle, recipe, started)

    argv = ["--base", str(base), "--data_dir", str(data), "--output_dir", str(out), "--batch_size", str(args.batch),
            "--steps", str(args.warmup + args.train_steps + 1), "--checkpointing_steps", "1000000",
            "--num_threads", str(args.threads), "--max_grad_norm", str(args.max_grad_norm)]
    config = train_removal.resolve(train_removal.build_parser().parse_args(argv))
    train_removal.train_loop = instrumented
    try:
        train_removal.train(config, "python -m segdrop.training removal " + " ".join(argv))
    finally:
        train_removal.train_loop = original
    steps = [starts[k + 1] - starts[k] - draw_s[k] for k in range(args.warmup, args.warmup + args.train_steps)]
    return steps, batches


def plain_round(args, base: Path, batches: list) -> list[float]:
    """A plain diffusers epsilon-loss loop over the recipe's recorded batches; returns per-step seconds."""
    from segdrop.training.train_conditioned import load_base

    bundle = load_base(str(base))
    unet, scheduler, codec = bundle.unet, bundle.scheduler, bundle.codec
    with torch.no_grad():
        hidden = bundle.encode_prompt([""]).float()
    unet.requires_grad_(True)
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.01)
    f = codec.factor
    seconds = []
    for i, batch in enumerate(batches[: args.warmup + args.train_steps]):
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(i)
        b = batch.target.shape[0]
        with torch.no_grad():
            latents = codec.encode(batch.target)
            cond = codec.encode(batch.cond)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=g)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        mask = F.max_pool2d(batch.mask.float(), f, f)
        pred = unet(torch.cat([noisy, mask, cond], 1), timesteps, hidden.expand(b, -1, -1)).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        seconds.append(time.perf_counter() - t0)
    return seconds[args.warmup:]


def bench_train(args) -> dict:
    from segdrop.toyworld import write_dataset

    widths = tuple(int(w) for w in args.widths.split(","))
    with tempfile.TemporaryDirectory(prefix="segdrop_removal_speed_") as tmp:
        tmp = Path(tmp)
        base = build_toy_inpaint_bundle(tmp / "base", args.train_size, widths)
        data = write_dataset(tmp / "data", args.triplets, size=args.train_size, seed=0)
        torch.set_num_threads(args.threads)
        recipe_steps, plain_steps = [], []
        for r in range(args.rounds):
            steps, batches = recipe_round(args, base, data, tmp / f"run{r}")
            recipe_steps.append(statistics.median(steps))
            plain_steps.append(statistics.median(plain_round(args, base, batches)))
    recipe_s, plain_s = statistics.median(recipe_steps), statistics.median(plain_steps)
    print(f"Training: toy-layout inpainting UNet widths {widths} (25 input channels, 12x{args.train_size // 2}x"
          f"{args.train_size // 2} latents), batch {args.batch}, {args.train_steps} steps after {args.warmup} "
          f"warm-up, max_grad_norm {args.max_grad_norm}, {torch.get_num_threads()} threads, {args.rounds} rounds")
    print(f"{'variant':24s} {'s/step':>9s} {'images/s':>9s} {'ratio':>7s}")
    for name, s in (("removal recipe", recipe_s), ("plain diffusers loop", plain_s)):
        print(f"{name:24s} {s:9.4f} {args.batch / s:9.1f} {plain_s / s:7.3f}")
    return {"recipe": args.batch / recipe_s, "plain": args.batch / plain_s, "ratio": plain_s / recipe_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="ComfyUI sampling steps")
    parser.add_argument("--size", type=int, default=256, help="ComfyUI image side (px)")
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--scheduler", default="normal")
    parser.add_argument("--train_steps", type=int, default=30, help="measured training steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="training steps dropped per round")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train_size", type=int, default=32, help="training image side (px)")
    parser.add_argument("--triplets", type=int, default=16, help="toy-world triplets rendered for training")
    parser.add_argument("--widths", default="32,64", help="toy UNet block widths")
    parser.add_argument("--max_grad_norm", type=float, default=1.0, help="the recipe's default; 0 = no clipping")
    parser.add_argument("--skip_comfy", action="store_true")
    parser.add_argument("--skip_train", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    comfy = None if args.skip_comfy else bench_comfy(args)
    if not args.skip_comfy:
        print()
    train = None if args.skip_train else bench_train(args)
    print("\nsummary")
    print(f"{'measurement':38s} {'SegDrop':>12s} {'stock':>12s} {'ratio':>7s} {'goal':>8s}")
    if comfy:
        print(f"{'ComfyUI removal, median s':38s} {comfy['ours']:12.3f} {comfy['stock']:12.3f} {comfy['ratio']:7.3f} "
              f"{'<= 1.05':>8s}")
    else:
        print(f"{'ComfyUI removal':38s} {'skipped':>12s}")
    if train:
        print(f"{'removal training, images/s':38s} {train['recipe']:12.1f} {train['plain']:12.1f} "
              f"{train['ratio']:7.3f} {'>= 0.95':>8s}")


if __name__ == "__main__":
    main()
