"""The timestep-batching loop both backends share (attention_patch/capture_loop.py), without any UNet."""

from __future__ import annotations

import pytest
import torch

from segdrop.attention_patch.capture_loop import (
    CaptureInterrupted,
    run_timestep_groups,
    stop_check,
    timestep_groups,
)
from segdrop.attention_patch.store import AttentionStore


def test_groups_hold_at_most_max_batch_rows_and_at_least_one_timestep():
    assert timestep_groups([1, 21, 41, 61, 81], images=2, max_batch=5) == [[1, 21], [41, 61], [81]]
    assert timestep_groups([1, 21], images=4, max_batch=2) == [[1], [21]]  # more images than rows: one at a time
    with pytest.raises(ValueError, match="max_batch must be at least 1"):
        timestep_groups([1], images=1, max_batch=0)


def record(timesteps, *, max_batch, noise_shape=(2, 4, 3, 3), seed=5, interrupt=None, store=None):
    calls, progress = [], []
    run_timestep_groups(
        timesteps, lambda group, noise: calls.append((group, noise)), store=store or AttentionStore(), images=2,
        max_batch=max_batch, noise_shape=noise_shape, seed=seed, progress=lambda done, total: progress.append((done, total)),
        interrupt=interrupt,
    )
    return calls, progress


def test_noise_is_one_generator_in_timestep_order_whatever_the_grouping():
    timesteps = [1, 21, 41, 61, 81]
    generator = torch.Generator().manual_seed(5)
    expected = torch.cat([torch.randn(2, 4, 3, 3, generator=generator) for _ in timesteps])
    for max_batch in (2, 4, 6, 64):
        calls, progress = record(timesteps, max_batch=max_batch)
        assert [t for group, _ in calls for t in group] == timesteps
        assert all(noise.shape[0] == 2 * len(group) and noise.dtype == torch.float32 for group, noise in calls)
        assert torch.equal(torch.cat([noise for _, noise in calls]), expected)
        assert progress[-1] == (5, 5) and [done for done, _ in progress] == sorted({d for d, _ in progress})


def test_no_noise_is_drawn_without_noising():
    calls, progress = record([300, 500], max_batch=2, noise_shape=None)
    assert calls == [([300], None), ([500], None)] and progress == [(1, 2), (2, 2)]


def test_interrupt_runs_before_every_group_and_stops_the_loop():
    order: list[str] = []
    checks = iter([False, True])

    def interrupt() -> None:
        order.append("check")
        if next(checks):
            raise CaptureInterrupted("cancelled")

    with pytest.raises(CaptureInterrupted):
        run_timestep_groups([1, 21, 41], lambda group, noise: order.append(f"run {group}"), store=AttentionStore(),
                            images=1, max_batch=1, noise_shape=None, seed=0, interrupt=interrupt)
    assert order == ["check", "run [1]", "check"]


def test_silent_layer_is_reported_after_the_loop():
    store = AttentionStore()
    store.register(["input_1_0.attn1", "input_1_0.attn2"])
    with pytest.raises(RuntimeError, match=r"1 of 2 patched attention layers never ran \(input_1_0\.attn2\)"):
        run_timestep_groups([1], lambda group, noise: store.hit("input_1_0.attn1"), store=store, images=1,
                            max_batch=8, noise_shape=None, seed=0)


def test_stop_check_turns_a_predicate_into_a_raising_check():
    assert stop_check(None) is None
    flags = iter([False, True])
    check = stop_check(lambda: next(flags))
    check()
    with pytest.raises(CaptureInterrupted, match="should_stop"):
        check()
