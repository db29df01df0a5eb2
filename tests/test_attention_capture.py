"""Attention capture: exact forward, correct bookkeeping, both backends (ComfyUI's simulated without ComfyUI)."""

from __future__ import annotations

import pytest
import torch

from segdrop.attention_patch import comfy_backend
from segdrop.attention_patch.capture_loop import CaptureInterrupted
from segdrop.attention_patch.core import attention_with_capture, sdpa_attention
from segdrop.attention_patch.diffusers_backend import attention_layers, capture_attention, patched
from segdrop.attention_patch.store import CROSS, SELF, AttentionStore, resolution_of
from segdrop.testing.tiny_models import tiny_sd2_unet, tiny_sd15_unet, tiny_sdxl_unet


def reference_probs(q, k, heads):
    b, n, inner = q.shape
    d = inner // heads
    qh = q.double().reshape(b, n, heads, d).transpose(1, 2)
    kh = k.double().reshape(b, -1, heads, d).transpose(1, 2)
    return (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(-1).mean(1)


@pytest.mark.parametrize(
    "build, context_dim, size, extra",
    [
        (tiny_sd15_unet, 32, 32, None),
        (tiny_sd2_unet, 48, 32, None),
        (tiny_sdxl_unet, 64, 32, {"text_embeds": torch.randn(2, 32), "time_ids": torch.randn(2, 6)}),
    ],
    ids=["sd15", "sd2", "sdxl"],
)
def test_diffusers_patched_forward_equals_unpatched(build, context_dim, size, extra):
    unet = build()
    torch.manual_seed(1)
    x = torch.randn(2, 4, size, size)
    context = torch.randn(2, 77, context_dim)
    t = torch.tensor([1, 300])
    kwargs = {"added_cond_kwargs": extra} if extra else {}
    with torch.no_grad():
        expected = unet(x, t, context, **kwargs).sample
        store = AttentionStore(images=2, latent_hw=(size, size))
        with patched(unet, store):
            got = unet(x, t, context, **kwargs).sample
    assert (got - expected).abs().max().item() <= 1e-5
    store.check_hits()
    assert all(count == 1 for count in store.hits.values())
    for (kind, hw), total in store.sums.items():
        assert total.shape[:2] == (2, hw[0] * hw[1])
        assert torch.allclose(total.sum(-1) / store.counts[(kind, hw)], torch.ones(()), atol=1e-5)


def test_processors_are_restored_after_capture():
    unet = tiny_sd15_unet()
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    capture_attention(unet, torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32), [300], add_noise=False)
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_sd15_layout_counts_layers_per_resolution():
    unet = tiny_sd15_unet()
    maps = capture_attention(unet, torch.randn(1, 4, 32, 32), torch.randn(1, 77, 32), [300, 500], add_noise=False)
    # SD1.5: 5 layers at 1/8, 5 at 1/16, 5 at 1/32, 1 at 1/64, each seen at 2 timesteps.
    assert maps.self_counts == {(32, 32): 10, (16, 16): 10, (8, 8): 10, (4, 4): 2}
    assert maps.cross_counts == maps.self_counts
    assert maps.self_attn[(32, 32)].shape == (1, 1024, 1024)
    assert maps.cross_attn[(8, 8)].shape == (1, 64, 77)


def test_batched_timesteps_equal_one_at_a_time():
    unet = tiny_sd15_unet()
    latents, context = torch.randn(2, 4, 16, 16), torch.randn(1, 77, 32)
    alphas = torch.linspace(0.9999, 0.005, 1000)
    args = dict(add_noise=True, alphas_cumprod=alphas, seed=3)
    batched = capture_attention(unet, latents, context, [1, 21, 41], max_batch=6, **args)
    single = capture_attention(unet, latents, context, [1, 21, 41], max_batch=2, **args)
    for hw in batched.cross_attn:
        assert torch.allclose(batched.cross_attn[hw], single.cross_attn[hw], atol=1e-6)
        assert torch.allclose(batched.self_attn[hw], single.self_attn[hw], atol=1e-6)


def test_capture_matches_reference_probabilities():
    """One layer by hand: the stored map is the head-mean softmax averaged over timesteps."""
    torch.manual_seed(0)
    q, k, v = torch.randn(6, 16, 32), torch.randn(6, 16, 32), torch.randn(6, 16, 32)
    store = AttentionStore(images=2, latent_hw=(4, 4))
    sink = store.sink(SELF, (4, 4), 6, 16, q.device)
    out = attention_with_capture(q, k, v, 4, sink, budget_bytes=4 * 16 * 4 * 6 * 3)  # 3 queries per chunk
    assert (out - sdpa_attention(q, k, v, 4)).abs().max() < 1e-5
    expected = reference_probs(q, k, 4).reshape(3, 2, 16, 16).sum(0)
    assert torch.allclose(store.sums[(SELF, (4, 4))].double(), expected, atol=1e-6)
    assert store.counts[(SELF, (4, 4))] == 3


def test_chunks_bound_memory():
    seen = []
    q = torch.randn(1, 64, 16)
    attention_with_capture(q, q, q, 2, lambda s, e, p: seen.append(tuple(p.shape)), budget_bytes=2 * 64 * 4 * 10)
    assert max(shape[1] for shape in seen) == 10
    assert sum(shape[1] for shape in seen) == 64
    assert all(shape == (1, shape[1], 64) for shape in seen)  # heads already averaged


def test_resolution_of_handles_odd_latents():
    assert resolution_of(4096, (64, 64)) == (64, 64)
    assert resolution_of(12, (12, 16)) == (3, 4)
    assert resolution_of(2 * 3, (5, 9)) == (2, 3)  # ceil halvings of 5x9: 3x5, 2x3
    with pytest.raises(ValueError, match="no downsampling"):
        resolution_of(7, (64, 64))


def test_layer_that_never_fires_is_an_error():
    store = AttentionStore()
    store.register(["input_1_0", "middle_0_0"])
    store.hit("input_1_0")
    with pytest.raises(RuntimeError, match="never ran"):
        store.check_hits()


def test_wrong_latent_channels_is_a_clear_error():
    with pytest.raises(ValueError, match="4 latent|takes 4"):
        capture_attention(tiny_sd15_unet(), torch.randn(1, 16, 8, 8), torch.randn(1, 77, 32), [300], add_noise=False)


def test_non_unet_model_is_a_clear_error():
    with pytest.raises(ValueError, match="Stable Diffusion UNet"):
        capture_attention(torch.nn.Linear(4, 4), torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32), [300], add_noise=False)


# --- ComfyUI backend, simulated: the replace patch as BasicTransformerBlock calls it ------------------------


class FakeTransformer(torch.nn.Module):
    def __init__(self, depth: int):
        super().__init__()
        self.transformer_blocks = torch.nn.ModuleList(torch.nn.Identity() for _ in range(depth))


class FakeUNet(torch.nn.Module):
    """The shape of ComfyUI's UNetModel: TimestepEmbedSequential blocks, some holding SpatialTransformers."""

    def __init__(self):
        super().__init__()
        seq = torch.nn.Sequential
        self.input_blocks = torch.nn.ModuleList([seq(torch.nn.Conv2d(1, 1, 1)), seq(torch.nn.Identity(), FakeTransformer(2))])
        self.middle_block = seq(torch.nn.Identity(), FakeTransformer(1), torch.nn.Identity())
        self.output_blocks = torch.nn.ModuleList([seq(torch.nn.Identity()), seq(torch.nn.Identity(), FakeTransformer(10))])


def test_blocks_are_discovered_not_hard_coded():
    keys = comfy_backend.discover_transformer_blocks(FakeUNet())
    assert keys[:3] == [("input", 1, 0), ("input", 1, 1), ("middle", 0, 0)]
    assert keys[3:] == [("output", 1, j) for j in range(10)]


def test_discovery_rejects_models_without_unet_blocks():
    with pytest.raises(ValueError, match="SD1.x, SD2.x or SDXL"):
        comfy_backend.discover_transformer_blocks(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("order", [[1, 0], [0, 1], [0]])
def test_replace_patch_keeps_only_the_conditional_chunk(order):
    torch.manual_seed(0)
    images, heads, n, inner = 2, 4, 16, 32
    batch = len(order) * images
    q, k, v = (torch.randn(batch, n, inner) for _ in range(3))
    store = AttentionStore(images=images, latent_hw=(4, 4))
    patch = comfy_backend.make_replace_patch(SELF, ("input", 1, 0), store, sdpa_attention)
    options = {"n_heads": heads, "dim_head": inner // heads, "cond_or_uncond": order, "activations_shape": [batch, inner, 4, 4]}
    out = patch(q, k, v, options)
    assert (out - sdpa_attention(q, k, v, heads)).abs().max() < 1e-5
    cond = slice(order.index(0) * images, (order.index(0) + 1) * images)
    assert torch.allclose(store.sums[(SELF, (4, 4))].double(), reference_probs(q[cond], k[cond], heads), atol=1e-6)
    assert store.hits == {"input_1_0.attn1": 1}


def test_replace_patch_skips_layers_not_kept():
    store = AttentionStore(images=1, latent_hw=(4, 4), keep_cross=False)
    patch = comfy_backend.make_replace_patch(CROSS, ("middle", 0, 0), store, sdpa_attention)
    q, k = torch.randn(1, 16, 8), torch.randn(1, 77, 8)
    patch(q, k, k, {"n_heads": 2, "dim_head": 4, "cond_or_uncond": [0], "activations_shape": [1, 8, 4, 4]})
    assert store.sums == {} and store.hits == {"middle_0_0.attn2": 1}


class FakePatcher:
    """What ``patch_model`` uses of ComfyUI's ModelPatcher: clone, the diffusion model, attn1/attn2 replace."""

    def __init__(self):
        self.attn1: dict = {}
        self.attn2: dict = {}

    def clone(self) -> "FakePatcher":
        return FakePatcher()

    def get_model_object(self, name: str):
        assert name == "diffusion_model"
        return FakeUNet()

    def set_model_attn1_replace(self, patch, block, number, index):
        self.attn1[(block, number, index)] = patch

    def set_model_attn2_replace(self, patch, block, number, index):
        self.attn2[(block, number, index)] = patch


def call_patch(patch, kind: str) -> torch.Tensor:
    q = torch.randn(1, 16, 8)
    k = q if kind == SELF else torch.randn(1, 77, 8)
    return patch(q, k, k, {"n_heads": 2, "dim_head": 4, "cond_or_uncond": [0], "activations_shape": [1, 8, 4, 4]})


def test_patch_model_counts_attn1_and_attn2_apart():
    store = AttentionStore(images=1, latent_hw=(4, 4))
    clone = comfy_backend.patch_model(FakePatcher(), store, fallback=sdpa_attention, interrupt=lambda: None)
    keys = comfy_backend.discover_transformer_blocks(FakeUNet())
    assert set(clone.attn1) == set(clone.attn2) == set(keys)
    assert set(store.hits) == {f"{'_'.join(map(str, key))}.{sub}" for key in keys for sub in ("attn1", "attn2")}
    for patch in clone.attn1.values():
        call_patch(patch, SELF)
    for key, patch in clone.attn2.items():
        if key != ("output", 1, 7):  # one cross-attention patch that never fires
            call_patch(patch, CROSS)
    with pytest.raises(RuntimeError, match=r"1 of 26 patched attention layers never ran \(output_1_7\.attn2\)"):
        store.check_hits()


def test_silent_cross_attention_is_reported_while_self_attention_fires():
    """A model whose attn2 patches are all ignored (e.g. replaced) cannot pass for a complete capture."""
    store = AttentionStore(images=1, latent_hw=(4, 4), keep_cross=False)
    clone = comfy_backend.patch_model(FakePatcher(), store, fallback=sdpa_attention, interrupt=lambda: None)
    for patch in clone.attn1.values():
        call_patch(patch, SELF)
    with pytest.raises(RuntimeError, match=r"13 of 26 .*input_1_0\.attn2, input_1_1\.attn2, middle_0_0\.attn2, "
                                           r"output_1_0\.attn2 and 9 more"):
        store.check_hits()


class StopAfter:
    """A cancel check that fires on its ``calls``-th call and counts every call."""

    def __init__(self, calls: int):
        self.calls, self.seen = calls, 0

    def __call__(self) -> bool:
        self.seen += 1
        return self.seen >= self.calls

    def raise_(self) -> None:
        if self():
            raise CaptureInterrupted("cancelled")


def test_replace_patch_checks_the_interrupt_before_any_work():
    store = AttentionStore(images=1, latent_hw=(4, 4))
    stop = StopAfter(3)
    patch = comfy_backend.make_replace_patch(SELF, ("input", 1, 0), store, sdpa_attention, stop.raise_)
    call_patch(patch, SELF)
    call_patch(patch, SELF)
    with pytest.raises(CaptureInterrupted):
        call_patch(patch, SELF)
    assert store.hits == {"input_1_0.attn1": 2} and store.counts[(SELF, (4, 4))] == 2


def test_should_stop_ends_the_capture_inside_the_first_unet_call():
    """Polled in every layer: a cancel during a batched call does not wait for the call (or the rest) to end."""
    unet = tiny_sd15_unet()
    layers = len(attention_layers(unet))
    before = {name: type(p) for name, p in unet.attn_processors.items()}
    stop, progress = StopAfter(1 + 4), []  # once before the first group, then in the 4th attention layer
    with pytest.raises(CaptureInterrupted, match="should_stop"):
        capture_attention(unet, torch.randn(1, 4, 16, 16), torch.randn(1, 77, 32), [1, 21, 41, 61], add_noise=False,
                          max_batch=2, should_stop=stop, progress=lambda done, total: progress.append(done))
    assert stop.seen == 5 < 1 + layers  # never polled again after it said stop
    assert progress == []  # the first batched UNet call did not finish
    assert {name: type(p) for name, p in unet.attn_processors.items()} == before


def test_should_stop_that_never_fires_changes_nothing():
    unet = tiny_sd15_unet()
    latents, context = torch.randn(1, 4, 8, 8), torch.randn(1, 77, 32)
    plain = capture_attention(unet, latents, context, [1, 21], add_noise=False)
    polled = StopAfter(10**9)
    checked = capture_attention(unet, latents, context, [1, 21], add_noise=False, should_stop=polled)
    assert polled.seen == 1 + len(attention_layers(unet))  # both timesteps are one batched call
    for hw in plain.self_attn:
        assert torch.equal(plain.self_attn[hw], checked.self_attn[hw])


def test_noise_is_drawn_per_timestep_in_order_from_one_generator():
    """The UNet input is sqrt(a_t) z0 + sqrt(1 - a_t) eps_t, eps_t drawn in timestep order, whatever the grouping."""
    unet = tiny_sd15_unet()
    latents, context = torch.randn(2, 4, 8, 8), torch.randn(1, 77, 32)
    alphas = torch.linspace(0.9999, 0.005, 1000)
    timesteps = [1, 21, 41]
    generator = torch.Generator().manual_seed(7)
    expected = torch.cat([
        alphas[t].sqrt() * latents + (1 - alphas[t]).sqrt() * torch.randn(latents.shape, generator=generator)
        for t in timesteps
    ])
    for max_batch in (4, 16):  # groups [1, 21], [41] and one group of all three
        seen = []
        hook = unet.register_forward_pre_hook(lambda module, args: seen.append((args[0].clone(), args[1].clone())))
        try:
            capture_attention(unet, latents, context, timesteps, add_noise=True, alphas_cumprod=alphas, seed=7,
                              max_batch=max_batch)
        finally:
            hook.remove()
        assert [len(t) for _, t in seen] == [len(x) for x, _ in seen]
        assert torch.equal(torch.cat([x for x, _ in seen]), expected)
        assert torch.cat([t for _, t in seen]).tolist() == [t for t in timesteps for _ in range(2)]
