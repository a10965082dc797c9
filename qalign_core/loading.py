"""Loading SD 1.5 and SDXL models for production: safetensors only, low memory, offline.

``QAlignPipeline.from_pretrained`` (diffusers' loader underneath) accepts:

* a **diffusers directory** or Hugging Face id (``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/`` and on SDXL ``text_encoder_2/``, tokenizers, ``scheduler/``), the shape
  ``save_pretrained`` writes;
* a **single-file checkpoint** (``model.safetensors`` in the original Stable Diffusion key layout:
  ``model.diffusion_model.*``, ``first_stage_model.*``, ``cond_stage_model.transformer.*``, or SDXL's
  ``conditioner.embedders.*``), the shape most fine-tuned models are shared in. diffusers'
  ``from_single_file`` converts it; the architecture and the tokenizers come from a *local*
  diffusers-format config directory, never from the network.

This module holds the checks and error texts around that, and no settings: the caller passes them
(the service reads QALIGN_ALLOW_PICKLE_WEIGHTS and QALIGN_MODEL_CONFIG_DIR and hands them in).

Why safetensors only: a ``.bin``/``.ckpt`` file is a pickle, and unpickling runs code chosen by
whoever made the file. Pickle weights load only when the caller says so (``allow_pickle=True``).

Why accelerate: with it installed, diffusers and transformers build the modules on the ``meta``
device and fill them from the checkpoint (``low_cpu_mem_usage``), instead of allocating random
weights first and copying over them: about half the peak RAM for SD 1.5.

This module also writes the single-file layout (:func:`save_single_file`), the inverse of
diffusers' conversion, so tests can check the single-file path with the tiny model.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from qalign_core.backbones import SAFE_SINGLE_FILE_SUFFIXES, is_single_file
from qalign_core.errors import ModelLoadError

#: Hub id whose configs (no weights) describe every SD 1.5 fine-tune; read from the local cache only.
SD15_CONFIG_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: What a config directory needs (a few kB, plus the tokenizer's ~1.5 MB vocabulary).
CONFIG_PATTERNS = ["model_index.json", "*/config.json", "scheduler/*.json", "tokenizer/*", "tokenizer_2/*"]

#: The same for SDXL base models (single-file checkpoints of SDXL fine-tunes).
SDXL_CONFIG_REPO = "stabilityai/stable-diffusion-xl-base-1.0"

#: Key prefixes of the original (CompVis / LDM) single-file layout.
LDM_UNET = "model.diffusion_model."
LDM_VAE = "first_stage_model."
LDM_TEXT = "cond_stage_model.transformer."
#: SDXL's second (OpenCLIP) text encoder in its original layout: what tells an SDXL checkpoint apart.
LDM_SDXL_TEXT_2 = "conditioner.embedders.1.model."


def looks_like_path(model: str) -> bool:
    """Hub ids are "org/name"; anything else with slashes or a leading ./~ is meant as a path."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def check_model_path(model: str) -> None:
    """Refuse a model given as a path that does not exist, before diffusers tries the network."""
    if looks_like_path(model) and not is_single_file(model) and not os.path.isdir(os.path.expanduser(model)):
        raise ModelLoadError(f"model directory {model!r} does not exist")


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].rstrip(". ") if text else type(exc).__name__


def load_error(model: str, exc: BaseException, allow_pickle: bool) -> ModelLoadError:
    """The error for a model diffusers could not load, with what to do about it."""
    hint = (
        ""
        if allow_pickle
        else " (only .safetensors weights are loaded; allow_pickle=True (QALIGN_ALLOW_PICKLE_WEIGHTS=1 "
        "in the service) also allows .bin pickle files, which can run code when opened: only for "
        "weights you trust)"
    )
    return ModelLoadError(
        f"cannot load model {model!r}: {first_line(exc)}{hint}. Give a local model directory or a "
        "Hugging Face id that is available (offline machines need it in the local cache)"
    )


def is_sdxl_checkpoint(path: str) -> bool:
    """Whether a single-file checkpoint holds SDXL's second text encoder (read from its key names only)."""
    if not path.lower().endswith(SAFE_SINGLE_FILE_SUFFIXES):
        return False
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return any(key.startswith(LDM_SDXL_TEXT_2) for key in handle.keys())  # noqa: SIM118 - not a dict


def single_file_config(model: str, *, allow_pickle: bool, config_dir: str | None) -> str:
    """The local config directory a single-file checkpoint loads with, after the checks that keep
    pickles out and name a missing file."""
    path = os.path.expanduser(model)
    if not model.lower().endswith(SAFE_SINGLE_FILE_SUFFIXES) and not allow_pickle:
        raise ModelLoadError(
            f"model file {model!r} is a pickle checkpoint, which can run code when opened; give a "
            ".safetensors file, or allow pickles (QALIGN_ALLOW_PICKLE_WEIGHTS=1) for a file you trust"
        )
    if not os.path.isfile(path):
        raise ModelLoadError(f"model file {model!r} does not exist")
    default = SDXL_CONFIG_REPO if is_sdxl_checkpoint(path) else SD15_CONFIG_REPO
    return resolve_config_dir(config_dir, default)


def resolve_config_dir(config_dir: str | None, default: str = SD15_CONFIG_REPO) -> str:
    """A local diffusers-format directory describing the model (configs + tokenizers, no weights).

    ``config_dir`` is a directory, or a Hub id looked up in the local Hugging Face cache only; unset
    means the base model's own configs (``default``) from that cache. Nothing is downloaded here.
    """
    candidate = config_dir or default
    expanded = os.path.expanduser(candidate)
    if os.path.isdir(expanded):
        directory = expanded
    elif looks_like_path(candidate):
        raise ModelLoadError(f"model config directory {candidate!r} (QALIGN_MODEL_CONFIG_DIR) does not exist")
    else:
        from huggingface_hub import snapshot_download

        try:
            directory = snapshot_download(candidate, local_files_only=True, allow_patterns=CONFIG_PATTERNS)
        except Exception as exc:  # huggingface_hub raises several kinds for "not cached"
            raise ModelLoadError(
                f"a single-file checkpoint needs its base model's configs and tokenizer, and {candidate!r} "
                "is not in the local Hugging Face cache. Set QALIGN_MODEL_CONFIG_DIR to a local diffusers "
                f"model directory (weights not needed), or pre-seed it: huggingface-cli download {candidate} "
                f"--include {' '.join(repr(p) for p in CONFIG_PATTERNS)}"
            ) from exc
    missing = [
        part
        for part in ("model_index.json", "unet/config.json", "vae/config.json", "text_encoder/config.json")
        if not os.path.isfile(os.path.join(directory, part))
    ]
    if missing or not os.path.isdir(os.path.join(directory, "tokenizer")):
        raise ModelLoadError(
            f"model config directory {directory!r} is not a diffusers model layout: missing "
            f"{', '.join(missing) or 'tokenizer/'}"
        )
    return directory


# ------------------------------------------------------------------ writing the single-file layout
def _unet_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` (any layers_per_block)."""
    per = int(config["layers_per_block"])
    levels = len(config["block_out_channels"])
    renames: list[tuple[str, str]] = [
        ("time_embedding.linear_1.", "time_embed.0."),
        ("time_embedding.linear_2.", "time_embed.2."),
        ("conv_in.", "input_blocks.0.0."),
        ("conv_norm_out.", "out.0."),
        ("conv_out.", "out.2."),
        ("mid_block.resnets.0.", "middle_block.0."),
        ("mid_block.attentions.0.", "middle_block.1."),
        ("mid_block.resnets.1.", "middle_block.2."),
    ]
    for level in range(levels):
        for j in range(per):
            block = (per + 1) * level + j + 1
            renames.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{block}.0."))
            renames.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{block}.1."))
        renames.append(
            (f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{(per + 1) * (level + 1)}.0.op.")
        )
        has_attention = "CrossAttn" in config["up_block_types"][level]
        for j in range(per + 1):
            block = (per + 1) * level + j
            renames.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{block}.0."))
            renames.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{block}.1."))
        last = (per + 1) * level + per
        renames.append(
            (
                f"up_blocks.{level}.upsamplers.0.conv.",
                f"output_blocks.{last}.{2 if has_attention else 1}.conv.",
            )
        )
    resnet_parts = [
        ("norm1.", "in_layers.0."),
        ("conv1.", "in_layers.2."),
        ("time_emb_proj.", "emb_layers.1."),
        ("norm2.", "out_layers.0."),
        ("conv2.", "out_layers.3."),
        ("conv_shortcut.", "skip_connection."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old, ldm in renames:
            if key.startswith(old):
                new = ldm + key[len(old) :]
                if ".resnets." in old:
                    for part, ldm_part in resnet_parts:
                        new = new.replace(ldm + part, ldm + ldm_part)
                break
        else:
            raise ValueError(f"no original-layout name for UNet weight {key!r}")
        out[LDM_UNET + new] = value
    return out


def _vae_to_ldm(state: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` (attention as 1x1 convolutions)."""
    levels = len(config["block_out_channels"])
    renames: list[tuple[str, str]] = [
        ("encoder.conv_norm_out.", "encoder.norm_out."),
        ("decoder.conv_norm_out.", "decoder.norm_out."),
    ]
    for side in ("encoder", "decoder"):
        renames += [
            (f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
            (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
            (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1."),
        ]
    for level in range(levels):
        renames.append((f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."))
        renames.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."))
        # The decoder's up blocks are numbered from the lowest resolution in diffusers, the
        # highest in the original layout.
        renames.append((f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{levels - 1 - level}.block."))
        renames.append(
            (f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{levels - 1 - level}.upsample.")
        )
    attention_parts = [
        ("group_norm.", "norm."),
        ("to_q.", "q."),
        ("to_k.", "k."),
        ("to_v.", "v."),
        ("to_out.0.", "proj_out."),
    ]
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        new = key
        for old, ldm in renames:
            if key.startswith(old):
                new = ldm + key[len(old) :]
                break
        new = new.replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in new:
            for part, ldm_part in attention_parts:
                new = new.replace(".attn_1." + part, ".attn_1." + ldm_part)
            if new.endswith(".weight") and value.ndim == 2:
                value = value[:, :, None, None]  # linear -> 1x1 convolution, as the original stores it
        out[LDM_VAE + new] = value
    return out


def original_layout_state_dict(model_dir: str | Path) -> dict[str, torch.Tensor]:
    """One state dict in SD 1.5's original single-file layout, from a diffusers model directory."""
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel

    model_dir = Path(model_dir)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae", use_safetensors=True)
    text = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", use_safetensors=True)
    state = _unet_to_ldm(unet.state_dict(), dict(unet.config))
    state.update(_vae_to_ldm(vae.state_dict(), dict(vae.config)))
    for key, value in text.state_dict().items():
        name = key if key.startswith("text_model.") else f"text_model.{key}"
        state[LDM_TEXT + name] = value
    return {k: v.contiguous() for k, v in state.items()}


def save_single_file(
    model_dir: str | Path, path: str | Path, *, config_dir: str | Path | None = None
) -> Path:
    """Write ``model_dir``'s weights as one ``.safetensors`` checkpoint in the original layout.

    ``config_dir``, when given, also receives the model's configs and tokenizer without weights:
    the local config directory (QALIGN_MODEL_CONFIG_DIR) that loading the file needs.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"single-file checkpoints are written as .safetensors; got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(original_layout_state_dict(model_dir), str(path), metadata={"format": "pt"})
    if config_dir is not None:
        copy_configs(model_dir, config_dir)
    return path


def copy_configs(model_dir: str | Path, config_dir: str | Path) -> Path:
    """Copy a diffusers model directory without its weights: configs, scheduler and tokenizer."""
    source, target = Path(model_dir), Path(config_dir)
    # Listed before copying: the target may lie inside the source (make-tiny-model DIR/config).
    files = [item for item in source.rglob("*") if item.is_file() and item.suffix in {".json", ".txt"}]
    for item in files:
        if target.resolve() in item.resolve().parents:
            continue
        destination = target / item.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(item, destination)
    return target
