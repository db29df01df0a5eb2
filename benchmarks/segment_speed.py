"""Speed of segdrop.segment vs straightforward float64 NumPy on SD1.5-shaped synthetic inputs.

    python benchmarks/segment_speed.py [--repeats 5] [--anchors 16]

* DiffSeg: block-structured self-attention at 64²/32²/16²/8² (4096/1024/256/64 tokens), 256 anchors, τ=1.1,
  labels at 512². Ours = aggregation + merge; the reference runs the official steps elementwise in float64
  (iteration 0 anchor by anchor). Label agreement = fraction of equal pixels after relabelling by area.
* GMM: concept distillation's binarisation on a 64² latent map and on a 512² map; the reference is the
  authors' code (GaussianMixture midpoint + conv2d box filter) in NumPy/sklearn.

Timings are the best of several runs (the machine may be shared); the reference runs once.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from segdrop.segment import aggregate_self_attention, gmm_binarize, kl_merge_segment
from segdrop.testing.reference import (
    aggregate_reference,
    authors_gmm_mask,
    kl_merge_reference,
    relabel_by_area,
)
from segdrop.testing.synthetic import sd15_like_attention, voronoi_labels


def best_of(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def diffseg(repeats: int, reference_anchors: int) -> None:
    seeds = torch.tensor([[0.2, 0.25], [0.3, 0.8], [0.75, 0.2], [0.8, 0.7], [0.5, 0.5]])
    maps = sd15_like_attention(seeds, finest=(64, 64), levels=4, noise=0.3,
                               generator=torch.Generator().manual_seed(0))
    print(f"DiffSeg, SD1.5 shapes {[f'{h}x{w}' for h, w in maps]}, 256 anchors, tau=1.1, labels 512x512, "
          f"torch threads={torch.get_num_threads()}")

    def ours():
        return kl_merge_segment(aggregate_self_attention(maps))

    ours()  # warm-up
    aggregate_time, aggregated = best_of(lambda: aggregate_self_attention(maps), repeats)
    merge_time, _ = best_of(lambda: kl_merge_segment(aggregated), repeats)
    total_time, result = best_of(ours, repeats)

    numpy_maps = {hw: m.numpy() for hw, m in maps.items()}
    start = time.perf_counter()
    reference_aggregate = aggregate_reference(numpy_maps)
    reference_aggregate_time = time.perf_counter() - start
    aggregate_error = float(np.abs(aggregated.numpy() - reference_aggregate).max())

    # Official-style elementwise KL: too slow for all 256 anchors, so time a subset and extrapolate.
    start = time.perf_counter()
    kl_merge_reference(reference_aggregate[0], anchors_subset=reference_anchors, taus=(1.1,))
    elementwise_time = (time.perf_counter() - start) * 256 / reference_anchors
    # Same steps with float64 matmuls for the iteration-0 distance: a full run, gives the reference labels.
    start = time.perf_counter()
    labels, _ = kl_merge_reference(reference_aggregate[0], distance="matmul")
    matmul_time = time.perf_counter() - start

    print(f"  ours (float32 torch)    aggregate {aggregate_time:7.3f} s  merge {merge_time:7.3f} s  "
          f"total {total_time:7.3f} s   segments {result.counts[0]}")
    print(f"  numpy f64, elementwise  aggregate {reference_aggregate_time:7.3f} s  merge {elementwise_time:7.1f} s  "
          f"total {reference_aggregate_time + elementwise_time:7.1f} s   "
          f"(merge EXTRAPOLATED from {reference_anchors} of 256 anchors)   "
          f"ratio {(reference_aggregate_time + elementwise_time) / total_time:6.0f}x")
    print(f"  numpy f64, matmul KL    aggregate {reference_aggregate_time:7.3f} s  merge {matmul_time:7.3f} s  "
          f"total {reference_aggregate_time + matmul_time:7.3f} s   (full run)   "
          f"ratio {(reference_aggregate_time + matmul_time) / total_time:6.1f}x")
    agreement = float((relabel_by_area(labels) == result.labels[0].numpy()).mean())
    print(f"  aggregate max abs difference {aggregate_error:.2e}; labels equal to the float64 reference on "
          f"{agreement * 100:.4f} % of pixels")
    truth = voronoi_labels(seeds, (512, 512)).numpy()
    from segdrop.segment import hungarian_miou

    accuracy, miou, _ = hungarian_miou(result.labels[0], truth)
    print(f"  vs synthetic ground truth: ACC {accuracy * 100:.2f} %  mIoU {miou * 100:.2f} %")


def gmm(repeats: int) -> None:
    rng = np.random.default_rng(0)
    for side in (64, 512):
        ys, xs = np.mgrid[0:side, 0:side] / side
        blob = np.exp(-((ys - 0.45) ** 2 + (xs - 0.55) ** 2) / 0.05)
        values = (0.05 + 0.3 * blob + rng.normal(0, 0.03, blob.shape)).astype(np.float32)
        ours_time, result = best_of(lambda: gmm_binarize(torch.from_numpy(values)), repeats)
        reference_time, reference = best_of(lambda: authors_gmm_mask(values), max(1, repeats // 2))
        agreement = float((result.mask[0].numpy() == reference).mean())
        print(f"GMM {side}x{side}: ours {ours_time:.3f} s   authors' code {reference_time:.3f} s   "
              f"ratio {reference_time / ours_time:.2f}x   masks equal on {agreement * 100:.3f} % of pixels")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", type=int, default=16, help="anchors timed for the elementwise reference")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    diffseg(args.repeats, args.anchors)
    gmm(args.repeats)


if __name__ == "__main__":
    main()
