"""The UNet backbones Q-Align runs on, described as data read from a model's own configs.

Everything the method needs to know about a model's architecture is here: which family it is (SD 1.5
or SDXL: how it is conditioned), its native size and size unit, which decoder grid levels hold
self-attention (the aligned layers are the two finest of them, docs/algorithm.md "Backbones"), and
FreeU's factors. Torch-free, so the service can describe the model it serves without loading it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from qalign_schema.params import MAX_SIZE, MIN_SIZE

#: File name endings of single-file checkpoints; only the first is safe to open (the rest are pickles).
SAFE_SINGLE_FILE_SUFFIXES = (".safetensors",)
PICKLE_SINGLE_FILE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def is_single_file(model: str | os.PathLike[str]) -> bool:
    """A model named by one weights file rather than a directory or a Hub id."""
    return str(model).lower().endswith(SAFE_SINGLE_FILE_SUFFIXES + PICKLE_SINGLE_FILE_SUFFIXES)


BackboneName = Literal["sd15", "sdxl"]
BACKBONE_NAMES: tuple[BackboneName, ...] = ("sd15", "sdxl")
#: How people name them.
BACKBONE_TITLES: dict[BackboneName, str] = {"sd15": "Stable Diffusion 1.5", "sdxl": "Stable Diffusion XL"}


@dataclass(frozen=True)
class FreeUStage:
    """What FreeU does to decoder-stage inputs with ``channels`` channels."""

    channels: int
    #: The first ``boosted`` channels are multiplied by ``backbone_scale``.
    boosted: int
    backbone_scale: float
    #: Scale of the centred 2 x 2 low-frequency square of the 2-D spectrum.
    low_frequency_scale: float


def freeu_stages(b1: float, s1: float, b2: float, s2: float) -> tuple[FreeUStage, FreeUStage]:
    """FreeU's two decoder stages, matched by channel count as CIA and FreeU's authors do: inputs
    with 1280 channels (4x the first block width of SD 1.5 and SDXL) and with 640 (2x)."""
    return FreeUStage(1280, 640, b1, s1), FreeUStage(640, 320, b2, s2)


#: CIA's values for SD 1.5 (b1 1.2, s1 0.9, b2 1.4, s2 0.2).
SD15_FREEU = freeu_stages(1.2, 0.9, 1.4, 0.2)
#: FreeU's authors' published values for SDXL (b1 1.3, s1 0.9, b2 1.4, s2 0.2), applied as CIA applies
#: FreeU (the s factor filters the backbone features): see docs/algorithm.md.
SDXL_FREEU = freeu_stages(1.3, 0.9, 1.4, 0.2)


@dataclass(frozen=True)
class Backbone:
    """One model's architecture as the method sees it."""

    name: BackboneName
    #: The side the model was trained at, in pixels (512 for SD 1.5, 1024 for SDXL).
    native_size: int
    #: Output sides are multiples of this, so every token grid halves exactly (64 px SD 1.5, 32 SDXL).
    size_unit: int
    #: The VAE's downsampling factor (8 for both).
    vae_scale: int
    #: The largest output side served: twice the native side, at most TransferParams' own bound
    #: (SD 1.5: 1024; SDXL: 1536, where one aligned 64x64-grid call already costs what SD 1.5's does
    #: at 1024 px).
    max_size: int
    #: Grid levels below the latent (0 = the latent's own grid, 1 = half of each side, ...) whose
    #: decoder blocks have self-attention, finest first.
    attention_levels: tuple[int, ...]
    freeu: tuple[FreeUStage, ...]

    @property
    def title(self) -> str:
        return BACKBONE_TITLES[self.name]

    @property
    def aligned_levels(self) -> tuple[int, int]:
        """The two finest grid levels with attention: CIA's "64x64" role (fine steps) and "32x32" role
        (coarse steps, and masked AdaIN's cross-attention scores)."""
        if len(self.attention_levels) < 2:
            raise ValueError(
                f"the decoder has attention at {len(self.attention_levels)} grid levels; 2 needed"
            )
        return self.attention_levels[0], self.attention_levels[1]

    @property
    def first_level(self) -> int:
        """The finest grid with attention, as a level below the latent (0 on SD 1.5, 1 on SDXL)."""
        return self.aligned_levels[0]

    def attention_grid(self, latent: tuple[int, int]) -> tuple[int, int]:
        """The finest token grid with attention for a latent of ``(h, w)``."""
        factor = 2**self.first_level
        return latent[0] // factor, latent[1] // factor

    def aligned_blocks(self, up_blocks: int) -> tuple[str, str]:
        """The decoder blocks (diffusers names) at the two aligned levels, finest first."""
        fine, coarse = self.aligned_levels
        return f"up_blocks.{up_blocks - 1 - fine}", f"up_blocks.{up_blocks - 1 - coarse}"

    def describe(self) -> dict[str, Any]:
        """What the service publishes about the model it serves."""
        return {
            "backbone": self.name,
            "title": self.title,
            "native_size": self.native_size,
            "size_unit": self.size_unit,
            "min_size": self.min_size,
            "max_size": self.max_size,
        }

    @property
    def min_size(self) -> int:
        """The smallest output side: one unit, and never under TransferParams' 64 px."""
        return max(self.size_unit, MIN_SIZE)


def backbone_from_configs(unet: Mapping[str, Any], vae: Mapping[str, Any]) -> Backbone:
    """Read the backbone off a UNet's and a VAE's configs (diffusers' ``config.json`` contents)."""
    sdxl = unet.get("addition_embed_type") == "text_time"
    vae_scale = 2 ** (len(vae["block_out_channels"]) - 1)
    levels = len(unet["block_out_channels"])
    up_types = list(unet["up_block_types"])
    # Up block j works at grid level (levels - 1 - j): up_blocks.0 is the coarsest.
    attention = tuple(sorted(levels - 1 - j for j, kind in enumerate(up_types) if "CrossAttn" in kind))
    native_size = int(unet["sample_size"]) * vae_scale
    return Backbone(
        name="sdxl" if sdxl else "sd15",
        native_size=native_size,
        size_unit=vae_scale * 2 ** (levels - 1),
        vae_scale=vae_scale,
        max_size=min(2 * native_size, MAX_SIZE),
        attention_levels=attention,
        freeu=SDXL_FREEU if sdxl else SD15_FREEU,
    )


def describe_model(model: str, config_dir: str | None = None) -> Backbone | None:
    """The backbone of ``model`` (a diffusers directory, a Hub id in the local cache, or a single
    file whose configs are in ``config_dir``) from its configs alone, or None when they are not here."""
    if is_single_file(model):
        return read_backbone(config_dir) if config_dir and Path(config_dir).expanduser().is_dir() else None
    try:
        if Path(model).expanduser().is_dir():
            return read_backbone(model)
        from huggingface_hub import try_to_load_from_cache

        # Not a Hub id (a mistyped path, say): huggingface_hub refuses it with a ValueError.
        paths = [try_to_load_from_cache(model, f"{part}/config.json") for part in ("unet", "vae")]
        if not all(isinstance(p, str) for p in paths):
            return None
        unet, vae = (json.loads(Path(str(p)).read_text()) for p in paths)
        return backbone_from_configs(unet, vae)
    except (OSError, ValueError, KeyError):  # unreadable or incomplete configs: not known here
        return None


def read_backbone(model_dir: str | os.PathLike[str]) -> Backbone:
    """The backbone of a diffusers model directory, from its ``unet/`` and ``vae/`` configs alone."""
    root = Path(model_dir).expanduser()

    def config(part: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((root / part / "config.json").read_text())
        return loaded

    return backbone_from_configs(config("unet"), config("vae"))


def check_size(backbone: Backbone, size: int) -> str | None:
    """Why ``size`` (an output's longer side) cannot run on this backbone, or None when it can."""
    if size % backbone.size_unit or not backbone.min_size <= size <= backbone.max_size:
        return (
            f"size: this model ({backbone.title}) takes a multiple of {backbone.size_unit} from "
            f"{backbone.min_size} to {backbone.max_size} px (native {backbone.native_size}); got {size}"
        )
    return None
