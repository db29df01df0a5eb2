"""Cost of attention capture: patched vs unpatched UNet forward, measured side by side in one run.

SD1.5-shaped attention at 512x512 (latent 64x64: 4096/1024/256/64 tokens, 8 heads, 77 context tokens) on
UNets of SD1.5's block layout with reduced depth. Rounds alternate between the variants so machine noise hits
all of them alike; medians are reported.

    python benchmarks/capture_overhead.py [--widths 320,640,1280,1280] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from segdrop.attention_patch.diffusers_backend import patched
from segdrop.attention_patch.store import AttentionStore
from segdrop.testing.tiny_models import tiny_sd15_unet


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", default="32,64,64,64", help="block widths; SD1.5 is 320,640,1280,1280")
    parser.add_argument("--layers", type=int, default=2, help="resnet/transformer layers per block (SD1.5: 2)")
    parser.add_argument("--latent", type=int, default=64, help="latent side (64 = 512x512 image)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    widths = tuple(int(w) for w in args.widths.split(","))
    unet = tiny_sd15_unet(widths=widths, cross_attention_dim=768 if widths[0] >= 320 else 64, layers_per_block=args.layers)
    context = torch.randn(1, 77, unet.config.cross_attention_dim)
    latent = torch.randn(1, 4, args.latent, args.latent)
    t = torch.tensor([300])

    variants = {
        "unpatched": None,
        "concept distillation (cross only)": dict(keep_self=False, keep_cross=True),
        "DiffSeg (self + cross)": dict(keep_self=True, keep_cross=True),
    }
    stores: dict[str, AttentionStore] = {}

    def run(name: str) -> float:
        options = variants[name]
        with torch.no_grad():
            if options is None:
                return timed(lambda: unet(latent, t, context))
            store = AttentionStore(images=1, latent_hw=(args.latent, args.latent), **options)
            with patched(unet, store):
                seconds = timed(lambda: unet(latent, t, context))
            stores[name] = store
            return seconds

    for name in variants:  # warm-up
        run(name)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name in variants:
            times[name].append(run(name))

    base = statistics.median(times["unpatched"])
    print(f"UNet widths {widths}, {args.layers} layers per block, latent {args.latent}x{args.latent}, "
          f"{args.threads} threads, {args.rounds} rounds")
    print(f"{'variant':36s} {'median s':>9s} {'ratio':>7s} {'store MiB':>10s}")
    for name, values in times.items():
        median = statistics.median(values)
        size = stores[name].nbytes() / 2**20 if name in stores else 0.0
        print(f"{name:36s} {median:9.3f} {median / base:7.3f} {size:10.2f}")
    diffseg = stores["DiffSeg (self + cross)"]
    print("DiffSeg store by resolution (MiB): " + ", ".join(
        f"{kind} {hw[0]}x{hw[1]}: {total.numel() * 4 / 2**20:.2f}" for (kind, hw), total in diffseg.sums.items()))


if __name__ == "__main__":
    main()
