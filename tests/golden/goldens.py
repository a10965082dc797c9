"""Helpers of the golden tests."""

import json

import torch


def relative_l2(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """``|ours - reference| / |reference|`` in float32: the bound every golden comparison uses."""
    return float((ours.float() - reference.float()).norm() / reference.float().norm())


def sampled_trajectory(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[int, torch.Tensor]:
    """CIA's sampled noisy latents ``[structure, appearance]`` at each recorded step."""
    steps = json.loads(meta["trajectory_steps"])
    return {
        step: torch.stack([tensors["struct_trajectory"][k], tensors["app_trajectory"][k]])
        for k, step in enumerate(steps)
    }


def noise_map_errors(
    pipe, tensors: dict[str, torch.Tensor], meta: dict[str, str], prompt
) -> dict[int, float]:
    """Relative L2 of the project's noise maps, solved from CIA's trajectory, against CIA's, per step."""
    skip, trajectory = int(meta["skip_steps"]), sampled_trajectory(tensors, meta)
    cond, uncond = prompt
    errors = {}
    with torch.inference_mode():
        ddpm = pipe.ddpm_schedule(int(meta["steps"]))
        predict_noise = pipe.inversion_noise(ddpm, cond, uncond, batch=2)
        for i in (i for i in trajectory if i + 1 in trajectory and i + 1 < len(ddpm)):
            ours = ddpm.noise_map(trajectory[i], trajectory[i + 1], predict_noise(trajectory[i], i), i)
            cia = torch.stack([tensors["struct_noise_maps"][i - skip], tensors["app_noise_maps"][i - skip]])
            errors[i] = relative_l2(ours, cia)
    return errors
