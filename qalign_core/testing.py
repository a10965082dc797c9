"""Tiny random-weight models with the architecture shapes of Stable Diffusion 1.5 and SDXL, built locally.

No machine here can download weights, so tests and the offline demo load these models through the
same ``from_pretrained`` code as the real ones, only narrower: a full transfer at their native size
(128 px) takes seconds on two CPU cores.

* SD 1.5's shape: three cross-attention down/up levels and a plain one, a 4-level VAE with 8x
  downsampling, a CLIP text encoder, a byte-level BPE tokenizer and a DDIM scheduler config.
* SDXL's shape: a plain finest level and two cross-attention levels below it (no attention on the
  latent's own grid), several transformer layers per attention (1, 2, 3 where SDXL has 1, 2, 10), two
  layers per block, two text encoders (the second with a projection: the pooled embedding), the
  ``text_time`` added embedding (micro-conditioning), a VAE that asks for float32 (``force_upcast``)
  and SDXL's own Euler scheduler config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

#: SD 1.5's noise schedule, so the tiny model walks the same timesteps as the real one.
SD15_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


#: The model directory's index: what ``from_pretrained`` of a whole pipeline reads.
MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.30.0",
    "scheduler": ["diffusers", "DDIMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "safety_checker": [None, None],
    "feature_extractor": [None, None],
    "requires_safety_checker": False,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


#: Merges of the tiny tokenizer: a few, so most words span several tokens.
TINY_MERGES = (("o", "f</w>"), ("p", "h"), ("t", "o"))
#: Merges that make every word of "A photo of a object" one token, as in CLIP's real vocabulary:
#: CIA locates the object noun by word position, which assumes one token per word.
GOLDEN_MERGES = (
    ("o", "f</w>"),
    ("p", "h"),
    ("ph", "o"),
    ("pho", "t"),
    ("phot", "o</w>"),
    ("o", "b"),
    ("ob", "j"),
    ("obj", "e"),
    ("obje", "c"),
    ("objec", "t</w>"),
)


def write_tokenizer(directory: Path, merges: tuple[tuple[str, str], ...] = TINY_MERGES) -> int:
    """A byte-level BPE vocabulary (every byte, word-final variants, a few merges): CLIP's format."""
    directory.mkdir(parents=True, exist_ok=True)
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(pair) for pair in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(p) for p in merges) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return len(vocab)


def _prefix_text_encoder_keys(weights: Path) -> None:
    """Store CLIP's weights under ``text_model.``, the layout of SD 1.5's own checkpoint.

    Recent transformers save them without the prefix, which older releases (the ones CIA's code
    pins, used to make the golden tensors) cannot read: they would start from random weights.
    Every release reads the prefixed layout.
    """
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    prefixed = {k if k.startswith("text_model.") else f"text_model.{k}": v for k, v in tensors.items()}
    save_file(prefixed, str(weights), metadata={"format": "pt"})


#: SDXL's model index: two text encoders, and an empty negative prompt encoded as zeros.
SDXL_MODEL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.30.0",
    "force_zeros_for_empty_prompt": True,
    "scheduler": ["diffusers", "EulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
}

#: The tiny models' VAE: SD's 4 levels and 8x downsampling, narrow.
TINY_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (16, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 128,
}

#: What the tiny models are built in the shape of.
TINY_BACKBONES = ("sd15", "sdxl")


def save_tiny_model(path: str | Path, seed: int = 0, *, golden: bool = False, backbone: str = "sd15") -> Path:
    """Write a tiny model to ``path`` (a diffusers model directory) and return the path.

    ``backbone`` is "sd15" or "sdxl" (see the module docstring). ``golden=True`` (SD 1.5 only) writes
    the variant the CIA equivalence test uses: 64 x 64 latents and 512 px images, as SD 1.5 (CIA mixes
    only at 4096 and 1024 tokens and loads images at 512 px), narrow attention on the encoder's coarse
    grids only, and a tokenizer with one token per word of the default prompt.
    """
    # Imported from their modules: diffusers' top-level names are placeholder classes to type checkers.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from transformers import CLIPTextModel

    if backbone not in TINY_BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(TINY_BACKBONES)}; got {backbone!r}")
    if golden and backbone != "sd15":
        raise ValueError("the golden model is SD 1.5's shape (CIA's code runs SD 1.5 only)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        if backbone == "sdxl":
            _write_tiny_sdxl(path)
            return path
        vocab_size = write_tokenizer(path / "tokenizer", GOLDEN_MERGES if golden else TINY_MERGES)
        text_config = _text_config(vocab_size)
        CLIPTextModel(text_config).save_pretrained(path / "text_encoder")
        _prefix_text_encoder_keys(path / "text_encoder" / "model.safetensors")
        if golden:
            unet_shape = dict(
                sample_size=64,
                block_out_channels=(16, 32, 32, 32),
                down_block_types=(
                    "DownBlock2D",
                    "CrossAttnDownBlock2D",
                    "CrossAttnDownBlock2D",
                    "DownBlock2D",
                ),
                attention_head_dim=2,
                norm_num_groups=8,
            )
        else:
            unet_shape = dict(
                sample_size=16,
                block_out_channels=(32, 32, 64, 64),
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                attention_head_dim=4,
                norm_num_groups=8,
            )
        UNet2DConditionModel(
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=32,
            **unet_shape,
        ).save_pretrained(path / "unet")
        AutoencoderKL(**TINY_VAE).save_pretrained(path / "vae")
        DDIMScheduler(**SD15_SCHEDULER).save_pretrained(path / "scheduler")
    finally:
        torch.random.set_rng_state(generator_state)
    (path / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    return path


def _text_config(vocab_size: int, **overrides: int) -> Any:
    from transformers import CLIPTextConfig

    settings = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        **overrides,
    }
    return CLIPTextConfig(
        vocab_size=vocab_size,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **settings,
    )


def _write_tiny_sdxl(path: Path) -> None:
    """The SDXL-shaped tiny model (the caller seeds torch's generator)."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    vocab_size = write_tokenizer(path / "tokenizer")
    write_tokenizer(path / "tokenizer_2")
    CLIPTextModel(_text_config(vocab_size)).save_pretrained(path / "text_encoder")
    second = _text_config(vocab_size, hidden_size=48, num_hidden_layers=3)
    CLIPTextModelWithProjection(second).save_pretrained(path / "text_encoder_2")
    time_embed_dim = 8
    UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 3),
        attention_head_dim=(2, 4, 4),
        cross_attention_dim=32 + 48,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_embed_dim,
        projection_class_embeddings_input_dim=32 + 6 * time_embed_dim,
        norm_num_groups=8,
    ).save_pretrained(path / "unet")
    # SDXL's VAE has SD's shape, its own scaling factor, and asks for float32 (``force_upcast``).
    AutoencoderKL(**TINY_VAE, scaling_factor=0.13025, force_upcast=True).save_pretrained(path / "vae")
    EulerDiscreteScheduler(
        **{k: v for k, v in SD15_SCHEDULER.items() if k not in ("clip_sample", "set_alpha_to_one")},
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
    ).save_pretrained(path / "scheduler")
    # SDXL's published scheduler config carries these DDIM keys too; DDIM reads them.
    config_file = path / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config.update({"clip_sample": False, "set_alpha_to_one": False, "skip_prk_steps": True})
    config_file.write_text(json.dumps(config, indent=2))
    (path / "model_index.json").write_text(json.dumps(SDXL_MODEL_INDEX, indent=2))
