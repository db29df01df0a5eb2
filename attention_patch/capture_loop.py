"""The timestep-batching loop that both capture backends share.

A capture visits ``timesteps`` in groups: each group of ``per_call = max_batch // images`` timesteps is one
batched UNet call of ``len(group) * images`` rows. Fresh noise comes from one generator seeded once, drawn in
timestep order (so grouping never changes the noise any timestep gets), the interrupt check runs before every
group, progress is reported after every group, and the store's hit counts are checked at the end. Only the
"run one group through the UNet" step differs between diffusers and ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from .store import AttentionStore

GroupRunner = Callable[[list[int], "torch.Tensor | None"], None]
"""``run(group, noise)``: one batched UNet call for ``group``; ``noise`` is ``(len(group) * images, C, h, w)``
float32 on the CPU (timestep-major, as the rows), or None when the capture does not noise the latent."""
Interrupt = Callable[[], None]
"""Called before every group and inside every patched attention layer; raises to stop the capture."""


class CaptureInterrupted(RuntimeError):
    """The caller's ``should_stop`` asked the capture to stop."""


def stop_check(should_stop: Callable[[], bool] | None) -> Interrupt | None:
    """An :data:`Interrupt` that raises :class:`CaptureInterrupted` once ``should_stop()`` is true."""
    if should_stop is None:
        return None

    def check() -> None:
        if should_stop():
            raise CaptureInterrupted("Attention capture stopped: should_stop() returned True.")

    return check


def timestep_groups(timesteps: Sequence[int], images: int, max_batch: int) -> list[list[int]]:
    """Consecutive timesteps per batched UNet call: at most ``max_batch`` rows, at least one timestep."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1 (rows per UNet call); got {max_batch}.")
    per_call = max(1, max_batch // images)
    timesteps = list(timesteps)
    return [timesteps[start : start + per_call] for start in range(0, len(timesteps), per_call)]


def draw_noise(shape: Sequence[int], group: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Fresh standard noise of ``shape`` for each timestep of ``group``, in order: ``(len(group) * B, ...)``."""
    return torch.cat([torch.randn(tuple(shape), generator=generator, dtype=torch.float32) for _ in group])


def run_timestep_groups(
    timesteps: Sequence[int],
    run_group: GroupRunner,
    *,
    store: AttentionStore,
    images: int,
    max_batch: int,
    noise_shape: Sequence[int] | None,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
    interrupt: Interrupt | None = None,
) -> None:
    """Run ``run_group`` over the timestep groups, then check that every patched layer fired.

    ``noise_shape`` is one timestep's latent shape ``(B, C, h, w)``, or None for a capture without noise (no
    noise is drawn then).
    """
    groups = timestep_groups(timesteps, images, max_batch)
    total = sum(len(group) for group in groups)
    generator = torch.Generator().manual_seed(seed)
    done = 0
    for group in groups:
        if interrupt is not None:
            interrupt()
        noise = draw_noise(noise_shape, group, generator) if noise_shape is not None else None
        run_group(group, noise)
        done += len(group)
        if progress is not None:
            progress(done, total)
    store.check_hits()
