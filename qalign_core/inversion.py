"""Batched edit-friendly inversion and its cache.

The inversion of one image depends only on (pixels, model, size, steps, skip_steps, prompt, seed,
guidance, precision), so it is cached under a hash of exactly those. Only the steps the generation
runs (skip_steps..T-1) are inverted: the noisier ones would be computed and thrown away.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from safetensors.torch import load, save

from qalign_core.ddpm import DDPMSchedule

#: Bumped whenever the inversion's definition changes, so stale cache entries are never reused.
INVERSION_FORMAT = 3


class InversionCache(Protocol):
    """Where inversions are kept between transfers; values are opaque bytes."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, data: bytes) -> None: ...


class MemoryInversionCache:
    """A bounded in-process LRU cache (for library use and single-process services)."""

    def __init__(self, max_entries: int = 32) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        data = self._entries.get(key)
        if data is not None:
            self._entries.move_to_end(key)
        return data

    def put(self, key: str, data: bytes) -> None:
        self._entries[key] = data
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)


@dataclass
class Inversion:
    """What the generation needs of one image: the latent at step skip_steps and the noise maps after it."""

    start_latent: torch.Tensor  # [C, h, w]
    noise_maps: torch.Tensor  # [T - skip_steps, C, h, w]

    def to_bytes(self) -> bytes:
        return save(
            {
                "start_latent": self.start_latent.contiguous().cpu(),
                "noise_maps": self.noise_maps.contiguous().cpu(),
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes, device: torch.device | str, dtype: torch.dtype) -> Inversion:
        tensors = load(data)
        return cls(
            start_latent=tensors["start_latent"].to(device=device, dtype=dtype),
            noise_maps=tensors["noise_maps"].to(device=device, dtype=dtype),
        )


def inversion_key(pixels: bytes, **settings: object) -> str:
    """Cache key: sha256 over the prepared pixels and every setting that changes the inversion."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(pixels).digest())
    digest.update(json.dumps({"format": INVERSION_FORMAT, **settings}, sort_keys=True, default=str).encode())
    return "inv-" + digest.hexdigest()


def noise_seed(pixels: bytes, seed: int) -> int:
    """The inversion noise seed of one image: the request seed mixed with the image's content.

    Two different images must not share noise: at the noise levels where generation starts, shared
    noise dominates both latents, their queries nearly coincide and the query-query mapping collapses
    to the identity (Q-Align would silently become Cross-Image Attention). Mixing in the content
    keeps each image's inversion a function of (image, seed) alone, which the cache relies on.
    """
    digest = hashlib.sha256(seed.to_bytes(8, "little") + hashlib.sha256(pixels).digest()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def invert(
    clean_latents: torch.Tensor,
    seeds: list[int],
    schedule: DDPMSchedule,
    skip_steps: int,
    predict_noise: Callable[[torch.Tensor, int], torch.Tensor],
    on_step: Callable[[int, int], None] | None = None,
) -> list[Inversion]:
    """Edit-friendly inversion of a batch of clean latents ``[B, C, h, w]``, one noise seed per image.

    ``predict_noise(latents, i)`` is the model's noise estimate at step i (with whatever guidance
    the caller wants). ``on_step(done, total)`` reports progress and may raise to cancel.
    """
    trajectories = []
    for latent, seed in zip(clean_latents, seeds, strict=True):
        generator = torch.Generator("cpu").manual_seed(seed)
        trajectories.append(schedule.noisy_latents(latent, generator))
    return invert_trajectories(torch.stack(trajectories, dim=1), schedule, skip_steps, predict_noise, on_step)


def invert_trajectories(
    xs: torch.Tensor,
    schedule: DDPMSchedule,
    skip_steps: int,
    predict_noise: Callable[[torch.Tensor, int], torch.Tensor],
    on_step: Callable[[int, int], None] | None = None,
) -> list[Inversion]:
    """Noise maps of given noisy trajectories ``xs [T+1, B, C, h, w]`` (``xs[T]`` clean), from skip_steps on.

    The last noise map is zero, as in CIA (``zs[-1] = 0``): the final step adds no noise.
    """
    steps = range(skip_steps, len(schedule))
    noise_maps = []
    for done, i in enumerate(steps, start=1):
        if i == len(schedule) - 1:
            noise_maps.append(torch.zeros_like(xs[i]))
        else:
            eps = predict_noise(xs[i], i)
            noise_maps.append(schedule.noise_map(xs[i], xs[i + 1], eps, i))
        if on_step is not None:
            on_step(done, len(steps))
    maps = torch.stack(noise_maps, dim=1)  # [B, T - skip, C, h, w]
    return [Inversion(start_latent=xs[skip_steps, b], noise_maps=maps[b]) for b in range(xs.shape[1])]
