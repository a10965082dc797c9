"""The edit-friendly DDPM step and its inversion, on synthetic noise predictors."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

from qalign_core.ddpm import DDPMSchedule
from qalign_core.inversion import (
    Inversion,
    MemoryInversionCache,
    inversion_key,
    invert,
    invert_trajectories,
)
from qalign_core.testing import SD15_SCHEDULER


def _schedule(steps=20):
    return DDPMSchedule.from_scheduler(DDIMScheduler(**SD15_SCHEDULER), steps)


def test_schedule_walks_sd15_timesteps():
    schedule = _schedule(100)
    assert schedule.timesteps[0] == 991 and schedule.timesteps[-1] == 1
    assert all(schedule.sigma(i) > 0 for i in range(100))  # set_alpha_to_one=False: every step stochastic


def test_sampling_with_the_noise_maps_retraces_the_trajectory():
    """Sampling with the stored noise maps retraces the inverted trajectory (same noise predictor);
    the last noise map is zero, as in CIA, so the last step is its deterministic part alone."""
    schedule = _schedule(20)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    xs = torch.stack(
        [
            schedule.noisy_latents(x, torch.Generator().manual_seed(seed))
            for x, seed in zip(x0, (1, 2), strict=True)
        ],
        dim=1,
    )

    def predict_noise(x, i):
        return torch.tanh(x) * (1 + i / 20)

    for skip in (0, 7):
        inversions = invert_trajectories(xs, schedule, skip, predict_noise)
        assert inversions[0].noise_maps[-1].abs().max() == 0
        x = torch.stack([inv.start_latent for inv in inversions])
        for n, i in enumerate(range(skip, 20)):
            torch.testing.assert_close(x, xs[i], rtol=1e-4, atol=1e-4)
            z = torch.stack([inv.noise_maps[n] for inv in inversions])
            x = schedule.step(x, predict_noise(x, i), i, z)
        torch.testing.assert_close(
            x, schedule.mean(xs[19], predict_noise(xs[19], 19), 19), rtol=1e-4, atol=1e-4
        )


def test_each_image_inversion_depends_only_on_its_own_seed():
    schedule = _schedule(10)
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    both = invert(x0, [5, 5], schedule, 3, lambda x, i: x * 0.1)
    alone = invert(x0[1:], [5], schedule, 3, lambda x, i: x * 0.1)
    torch.testing.assert_close(both[1].noise_maps, alone[0].noise_maps)
    assert both[0].noise_maps.shape == (7, 4, 8, 8)


def test_inversion_serialises_and_cache_is_bounded():
    inv = Inversion(start_latent=torch.randn(4, 2, 2), noise_maps=torch.randn(3, 4, 2, 2))
    back = Inversion.from_bytes(inv.to_bytes(), "cpu", torch.float32)
    assert torch.equal(back.noise_maps, inv.noise_maps) and torch.equal(back.start_latent, inv.start_latent)
    cache = MemoryInversionCache(max_entries=2)
    for key in "abc":
        cache.put(key, key.encode())
    assert cache.get("a") is None and cache.get("c") == b"c"


def test_inversion_key_changes_with_every_setting():
    base = {
        "model": "m",
        "size": 512,
        "steps": 100,
        "skip_steps": 32,
        "prompt": "p",
        "seed": 0,
        "guidance": 3.5,
    }
    keys = {inversion_key(b"pixels", **base)}
    for name, value in [
        ("model", "n"),
        ("size", 256),
        ("steps", 50),
        ("skip_steps", 0),
        ("prompt", "q"),
        ("seed", 1),
        ("guidance", 1.0),
    ]:
        keys.add(inversion_key(b"pixels", **{**base, name: value}))
    keys.add(inversion_key(b"other", **base))
    assert len(keys) == 9


def test_noise_seed_differs_between_images_and_is_stable():
    from qalign_core.inversion import noise_seed

    assert noise_seed(b"cat", 0) == noise_seed(b"cat", 0)
    assert len({noise_seed(b"cat", 0), noise_seed(b"cup", 0), noise_seed(b"cat", 1)}) == 3
    assert 0 <= noise_seed(b"cat", 2**32 - 1) < 2**63
