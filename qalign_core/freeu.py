"""FreeU as Cross-Image Attention applies it: on the backbone features entering each decoder stage.

CIA's UNet (models/unet_2d_condition.py) changes ``h``, the features an up block receives from the
block below, before the block concatenates its skip features: where ``h`` has 1280 channels the
first 640 are scaled by 1.2 and ``h`` is Fourier-filtered with scale 0.9; where it has 640 channels
the first 320 are scaled by 1.4 and the filter scale is 0.2. Stages are matched by channel count,
as CIA does (SD 1.5 and SDXL both have 1280- and 640-channel decoder inputs); each backbone brings
its factors (``qalign_core.backbones``). diffusers' ``enable_freeu`` is a different operation (it
also filters the skip features): the pipeline offers it as an option.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch.fft import fftn, fftshift, ifftn, ifftshift

from qalign_core.backbones import SD15_FREEU, FreeUStage

if TYPE_CHECKING:
    # diffusers' top-level names resolve to placeholder classes for type checkers: import the module.
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel


#: CIA's values (SD 1.5).
CIA_STAGES: tuple[FreeUStage, ...] = SD15_FREEU


def fourier_filter(x: torch.Tensor, threshold: int, scale: float) -> torch.Tensor:
    """Scale the centred ``2*threshold`` square of the spatial spectrum of ``x [B, C, H, W]``.

    Computed in float32 (half-precision FFTs exist only for power-of-two sizes on CUDA).
    """
    freq = fftshift(fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    height, width = x.shape[-2:]
    row, col = height // 2, width // 2
    mask = torch.ones(x.shape[-2:], device=x.device)
    mask[row - threshold : row + threshold, col - threshold : col + threshold] = scale
    filtered: torch.Tensor = ifftn(ifftshift(freq * mask, dim=(-2, -1)), dim=(-2, -1)).real
    return filtered.to(x.dtype)


def apply_freeu(h: torch.Tensor, stages: tuple[FreeUStage, ...] = CIA_STAGES) -> torch.Tensor:
    """FreeU of one decoder-stage input; unchanged when no stage has its channel count."""
    stage = next((s for s in stages if s.channels == h.shape[1]), None)
    if stage is None:
        return h
    h = h.clone()
    h[:, : stage.boosted] *= stage.backbone_scale
    return fourier_filter(h, threshold=1, scale=stage.low_frequency_scale)


class DecoderFreeU:
    """Applies FreeU to every up block's ``hidden_states`` input through forward pre-hooks.

    Hooks rather than a forked UNet forward: the model stays diffusers' own class, and the hooks
    run in every UNet call (inversion and denoising alike), as in CIA.
    """

    def __init__(self, stages: tuple[FreeUStage, ...] = CIA_STAGES) -> None:
        self.stages = stages
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def attach(self, unet: UNet2DConditionModel) -> DecoderFreeU:
        self.detach()
        for block in unet.up_blocks:
            self._handles.append(block.register_forward_pre_hook(self._hook, with_kwargs=True))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(
        self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """A forward pre-hook (torch's signature: any positional and keyword arguments)."""
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = apply_freeu(kwargs["hidden_states"], self.stages)
        elif args:
            args = (apply_freeu(args[0], self.stages), *args[1:])
        return args, kwargs
