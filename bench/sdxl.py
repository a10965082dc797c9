"""Benchmark: one aligned denoising step of SDXL's UNet (its published config, random weights).

The UNet is set up as ``QAlignPipeline`` sets it up on SDXL (SDXL's FreeU factors, shared timestep
rows, the project's processors aligning up_blocks.1 and up_blocks.0, an ``AlignmentState`` at an
aligned iteration) and fed SDXL's conditioning (2048-wide text embeddings, the pooled embedding and
``add_time_ids``). "aligned" is the fused swap pass, rows [OUT swap, APP, STRUCT, OUT plain] in one
call; "plain" is the same 4-row call with alignment off (the reference). Time per step and the
process's peak resident memory (weights included) are printed. On CPU the default is 512 px
(latent 64x64, aligned grids 32x32 and 16x16); a GPU runs 1024 px.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

import torch

from bench.common import comparison, median, time_interleaved
from bench.sd15 import build_unet
from qalign_core.backbones import backbone_from_configs
from qalign_core.freeu import DecoderFreeU
from qalign_core.params import TransferParams
from qalign_core.pipeline import share_timestep_rows
from qalign_core.processors import AlignmentState, install_processors
from qalign_core.schedule import schedule_for

#: SDXL base 1.0's published unet/config.json (the fields that shape the network).
SDXL_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
#: SDXL's VAE: 4 levels, 8x downsampling.
SDXL_VAE_BLOCKS = {"block_out_channels": (128, 256, 512, 512)}

ALIGNED_STEP = 50
TIMESTEP = 500
CONTRAST = 1.67


def build_sdxl_unet(seed: int = 0) -> torch.nn.Module:
    """SDXL's UNet with random weights (seeded): 2.6 billion parameters, 10 GB in float32. SD 1.5's
    config with SDXL's fields over it: the fields SDXL leaves out have the same values in both."""
    return build_unet(seed, **SDXL_UNET_CONFIG)


def peak_rss_gib() -> float:
    """The process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (2**30 if sys.platform == "darwin" else 2**20)


def run(
    *, device: str = "cpu", quick: bool = False, size: int | None = None, repeats: int | None = None
) -> dict[str, Any]:
    """Time one aligned 4-row step against the plain 4-row step at ``size`` px (default 512 on CPU)."""
    size = size or (1024 if device == "cuda" and not quick else 512 if not quick else 256)
    repeats = repeats or (10 if device == "cuda" else 1)
    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = build_sdxl_unet().to(device=device, dtype=dtype)
    weights_gib = peak_rss_gib()
    backbone = backbone_from_configs(unet.config, SDXL_VAE_BLOCKS)
    DecoderFreeU(backbone.freeu).attach(unet)
    share_timestep_rows(unet)
    state = AlignmentState(contrast_strength=CONTRAST, schedule=schedule_for(TransferParams()))
    install_processors(unet, "qalign", state)

    side = size // backbone.vae_scale
    generator = torch.Generator("cpu").manual_seed(0)
    x = torch.randn(4, 4, side, side, generator=generator).to(device, dtype)
    text = torch.randn(1, 77, 2048, generator=generator).to(device, dtype).expand(4, -1, -1)
    pooled = torch.randn(1, 1280, generator=generator).to(device, dtype).expand(4, -1)
    time_ids = torch.tensor([[size, size, 0, 0, size, size]], dtype=dtype, device=device).expand(4, -1)
    added = {"text_embeds": pooled, "time_ids": time_ids}
    t = torch.tensor(TIMESTEP, device=device)
    state.grid = backbone.attention_grid((side, side))

    def step(aligned: bool) -> torch.Tensor:
        state.iteration = ALIGNED_STEP if aligned else None
        state.log.clear()
        out: torch.Tensor = unet(x, t, encoder_hidden_states=text, added_cond_kwargs=added).sample
        return out

    with torch.inference_mode():
        step(True)
        aligned_layers = sorted({layer.split(".attentions")[0] for layer, _, _ in state.log})
        aligned_calls = len(state.log)
        times = time_interleaved(
            {"aligned": lambda: step(True), "plain": lambda: step(False)}, device, repeats, warmup=0
        )
    t_ours, t_ref = median(times["aligned"]), median(times["plain"])
    peak = peak_rss_gib()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None
    return {
        "name": "sdxl",
        "comparisons": [
            comparison(
                f"SDXL UNet (random weights), {size} px, 4 rows",
                "step time",
                "s",
                t_ours,
                t_ref,
                ours_label="aligned",
                reference_label="plain",
            )
        ],
        "details": [
            {
                "size_px": size,
                "latent": side,
                "dtype": str(dtype),
                "repeats": repeats,
                "times_s": times,
                "aligned_blocks": aligned_layers,
                "aligned_layer_calls": aligned_calls,
                "parameters": sum(p.numel() for p in unet.parameters()),
                "peak_rss_gib_after_weights": round(weights_gib, 2),
                "peak_rss_gib": round(peak, 2),
                "gpu_peak_gib": None if gpu_peak is None else round(gpu_peak, 2),
            }
        ],
    }


#: SDXL's two text encoders' published configs (CLIP ViT-L and OpenCLIP ViT-bigG text towers).
SDXL_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
}
SDXL_TEXT_2_CONFIG: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "projection_dim": 1280,
}


def save_sdxl_model(path: str | Path, dtype: torch.dtype = torch.float16, seed: int = 0) -> Path:
    """Write a random-weight SDXL model directory (published configs) that ``from_pretrained`` loads.

    The tokenizers are the tiny model's (the real vocabularies cannot be downloaded); the text
    encoders' vocabularies are sized to them, which changes no timing that matters.
    """
    import json

    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from bench.sd15 import SD15_VAE_CONFIG
    from qalign_core.testing import SD15_SCHEDULER, SDXL_MODEL_INDEX, write_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(path / "tokenizer")
    write_tokenizer(path / "tokenizer_2")
    ids = {"bos_token_id": vocab_size - 2, "eos_token_id": vocab_size - 1, "pad_token_id": vocab_size - 1}
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        first = CLIPTextConfig(vocab_size=vocab_size, **ids, **SDXL_TEXT_CONFIG)
        CLIPTextModel(first).to(dtype).save_pretrained(path / "text_encoder")
        second = CLIPTextConfig(vocab_size=vocab_size, **ids, **SDXL_TEXT_2_CONFIG)
        CLIPTextModelWithProjection(second).to(dtype).save_pretrained(path / "text_encoder_2")
        build_sdxl_unet(seed).to(dtype).save_pretrained(path / "unet")
        vae = {**SD15_VAE_CONFIG, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True}
        AutoencoderKL(**vae).to(dtype).save_pretrained(path / "vae")
        scheduler = {k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")}
        EulerDiscreteScheduler(**scheduler, timestep_spacing="leading").save_pretrained(path / "scheduler")
    finally:
        torch.random.set_rng_state(state)
    (path / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX, indent=2))
    return path
