"""Edit-friendly DDPM inversion and sampling (Huberman-Spiegelglas et al., arXiv 2304.06140).

Written from the formulas. Index convention: ``xs[i]`` is the latent at the noise level of
``timesteps[i]`` (i = 0 is the noisiest), ``xs[T]`` is the clean latent x_0; step i maps ``xs[i]``
to ``xs[i+1]`` with noise map ``z[i]``:

    x_{i+1} = sqrt(a_prev) * x0_hat + sqrt(1 - a_prev - sigma_i^2) * eps + sigma_i * z_i
    x0_hat  = (x_i - sqrt(1 - a_i) * eps) / sqrt(a_i)
    sigma_i = sqrt((1 - a_prev) / (1 - a_i) * (1 - a_i / a_prev))      (eta = 1)

with a_i the cumulative alpha at timesteps[i] and a_prev the one at the next (less noisy) timestep.
Inversion draws each ``xs[i]`` independently from x_0 and solves the step for ``z_i``, so sampling
with the stored z reproduces the trajectory exactly when the noise prediction is the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class NoiseScheduler(Protocol):
    """What is read of a diffusers scheduler of the DDPM family (DDIM, DDPM, ...)."""

    timesteps: torch.Tensor
    alphas_cumprod: torch.Tensor

    def set_timesteps(self, num_inference_steps: int) -> object: ...


@dataclass(frozen=True)
class DDPMSchedule:
    timesteps: torch.Tensor  # [T] long, descending
    alpha: torch.Tensor  # [T] float64, cumulative alpha at timesteps[i]
    alpha_prev: torch.Tensor  # [T] float64, cumulative alpha after step i

    @classmethod
    def from_scheduler(cls, scheduler: NoiseScheduler, steps: int) -> DDPMSchedule:
        """Take timesteps and alphas from a diffusers scheduler config (any of the DDPM family)."""
        scheduler.set_timesteps(steps)
        timesteps = scheduler.timesteps.to(torch.long).cpu()
        alphas = scheduler.alphas_cumprod.to(torch.float64).cpu()
        final = getattr(scheduler, "final_alpha_cumprod", torch.tensor(1.0))
        alpha = alphas[timesteps]
        alpha_prev = torch.cat(
            [alphas[timesteps[1:]], torch.as_tensor(final, dtype=torch.float64).reshape(1)]
        )
        return cls(timesteps=timesteps, alpha=alpha, alpha_prev=alpha_prev)

    def __len__(self) -> int:
        return len(self.timesteps)

    def sigma(self, i: int) -> float:
        a, a_prev = float(self.alpha[i]), float(self.alpha_prev[i])
        # float ** float is typed Any (a negative base gives a complex number); this one is a float.
        sigma: float = ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5
        return sigma

    def mean(self, x: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """The deterministic part of step i: everything but sigma_i * z_i."""
        a, a_prev, sigma = float(self.alpha[i]), float(self.alpha_prev[i]), self.sigma(i)
        x0_hat: torch.Tensor = (x - (1 - a) ** 0.5 * eps) / a**0.5
        mean: torch.Tensor = a_prev**0.5 * x0_hat + max(1 - a_prev - sigma**2, 0.0) ** 0.5 * eps
        return mean

    def step(self, x: torch.Tensor, eps: torch.Tensor, i: int, z: torch.Tensor) -> torch.Tensor:
        return self.mean(x, eps, i) + self.sigma(i) * z

    def noise_map(self, x: torch.Tensor, x_next: torch.Tensor, eps: torch.Tensor, i: int) -> torch.Tensor:
        """Solve the step for z_i (zero where sigma_i is zero: that step is deterministic)."""
        sigma = self.sigma(i)
        if sigma == 0.0:
            return torch.zeros_like(x)
        return (x_next - self.mean(x, eps, i)) / sigma

    def noisy_latents(self, x0: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """``xs[0..T]``: each level drawn independently from x_0 (CPU generator, so any device agrees)."""
        noise = torch.randn((len(self), *x0.shape), generator=generator, dtype=torch.float32)
        noise = noise.to(device=x0.device, dtype=x0.dtype)
        a = self.alpha.to(device=x0.device, dtype=x0.dtype).view(-1, *([1] * x0.dim()))
        levels = a.sqrt() * x0 + (1 - a).sqrt() * noise
        return torch.cat([levels, x0.unsqueeze(0)])
