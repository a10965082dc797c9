"""Stable Diffusion 1.5's architecture from its configs, with random weights (nothing is downloaded).

The configs are SD 1.5's published ones (unet/vae/text_encoder config.json), written out here so
benchmarks measure the real shapes. The tokenizer is the tiny model's (the real CLIP vocabulary
cannot be downloaded); the text encoder's vocabulary is sized to it, which changes no timing that
matters (one embedding lookup per transfer).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD15_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

SD15_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}


def build_unet(seed: int = 0, **overrides: Any) -> torch.nn.Module:
    """SD 1.5's UNet with random weights (seeded, so every run measures the same network)."""
    from diffusers import UNet2DConditionModel

    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return UNet2DConditionModel(**{**SD15_UNET_CONFIG, **overrides}).eval().requires_grad_(False)
    finally:
        torch.random.set_rng_state(state)


def save_sd15_model(path: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write a random-weight SD 1.5 model directory that ``QAlignPipeline.from_pretrained`` loads."""
    from diffusers import AutoencoderKL, DDIMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    from qalign_core.testing import MODEL_INDEX, SD15_SCHEDULER, write_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(path / "tokenizer")
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_config = CLIPTextConfig(
            vocab_size=vocab_size,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            pad_token_id=vocab_size - 1,
            **SD15_TEXT_CONFIG,
        )
        CLIPTextModel(text_config).to(dtype).save_pretrained(path / "text_encoder")
        build_unet(seed).to(dtype).save_pretrained(path / "unet")
        AutoencoderKL(**SD15_VAE_CONFIG).to(dtype).save_pretrained(path / "vae")
        DDIMScheduler(**SD15_SCHEDULER).save_pretrained(path / "scheduler")
    finally:
        torch.random.set_rng_state(state)
    (path / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return path
