"""The appearance-transfer pipeline: a thin orchestrator over clearly named steps.

    prepare images -> encode -> invert (batched, cached) -> denoise with alignment -> decode

One structure may go with several appearances: the structure is inverted once and its row is shared
by every pair of a denoising batch (3N+1 UNet rows per aligned step instead of 4N).

See docs/algorithm.md for the method and every default.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from diffusers.loaders.single_file import FromSingleFileMixin

# Imported from their modules: diffusers' top-level names are placeholder classes to type checkers.
# At run time, not under TYPE_CHECKING: diffusers reads __init__'s annotations to check components.
from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from transformers import CLIPTextModel, CLIPTextModelWithProjection, PreTrainedTokenizerBase

from qalign_core.adain import adain, masked_adain
from qalign_core.backbones import Backbone, backbone_from_configs, check_size, is_single_file
from qalign_core.ddpm import DDPMSchedule
from qalign_core.errors import InvalidParametersError, ModelLoadError, TransferCanceled
from qalign_core.freeu import DecoderFreeU
from qalign_core.images import (
    ImageInput,
    OutputShape,
    cover_crop,
    encode_image,
    fit_result,
    fit_structure,
    load_image,
    output_shape,
)
from qalign_core.inversion import Inversion, InversionCache, inversion_key, invert, noise_seed
from qalign_core.params import DEFAULT_MODEL, DTYPE_NAMES, MAX_APPEARANCES, MAX_ASPECT_RATIO, TransferParams
from qalign_core.processors import AlignmentState, RowLayout, install_processors
from qalign_core.schedule import DenoiseSchedule, schedule_for
from qalign_core.segmentation import ObjectMasks, compute_object_masks, noun_token_positions

ProgressCallback = Callable[[str, float], None]
CancelCheck = Callable[[], bool]
#: ``predict_noise(latents, i)``: the model's noise estimate at step i.
NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]
#: diffusers' ``callback_on_step_end(pipe, step, timestep, tensors) -> tensors``.
StepEndCallback = Callable[
    ["QAlignPipeline", int, torch.Tensor, dict[str, torch.Tensor]], dict[str, torch.Tensor] | None
]

_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, name) for name in DTYPE_NAMES}


@dataclass(frozen=True)
class PipelineConfig:
    """Fixed, per-deployment settings of the method (per-request ones are in TransferParams)."""

    inversion_guidance: float = 3.5
    #: "cia": CIA's FreeU on every decoder-stage input (qalign_core.freeu); "diffusers": diffusers'
    #: ``enable_freeu`` with CIA's factors (a different operation); "off".
    freeu: Literal["cia", "diffusers", "off"] = "cia"
    #: Structure injection at counters 0, 5, ..., 35 of a 100-step run (CIA), scaled like the schedule.
    injection_every: int = 5
    injection_before: int = 40
    #: Query rows per chunk in the aligned layer; None sizes chunks to a fixed memory budget.
    chunk_size: int | None = None
    #: Run the swap and no-swap passes as one UNet call of 3m+1 rows (True) or two of 2m+1 (False).
    fused_swap_pass: bool = True
    #: The most (structure, appearance) pairs denoised in one batch (3m+1 UNet rows per aligned step,
    #: m+1 images per inversion batch). More appearances run in further batches, each with its own
    #: structure row: this bounds activation memory whatever a job carries.
    max_pairs_per_batch: int = MAX_APPEARANCES


@dataclass
class TransferResult:
    #: One image per appearance, in the appearances' order, all ``shape.result_width`` x ``.result_height``.
    images: list[Image.Image]
    params: TransferParams
    timings: dict[str, float]
    shape: OutputShape
    inversion_cache_hits: int = 0
    #: UNet rows evaluated, by phase: the cost measure the benchmarks count.
    unet_rows: dict[str, int] = field(default_factory=dict)
    #: UNet rows of the costliest denoising iteration (3m+1 per batch of m pairs on aligned steps).
    rows_per_step: int = 0
    #: (layer, step, mode) for every layer call that changed the OUT rows.
    alignment_log: list[tuple[str, int, str]] = field(default_factory=list)
    #: (layer, iteration, leakage) for every aligned call of the first pair, when object masks were given.
    leakage_log: list[tuple[str, int, float]] = field(default_factory=list)
    #: Masked AdaIN's self-segmentation per pair (None where adain="masked" did not reach it).
    object_masks: list[ObjectMasks | None] = field(default_factory=list)
    #: The AdaIN applied per pair: "masked", "plain" (asked for, or masked with no object), "none".
    adain_applied: list[str] = field(default_factory=list)

    @property
    def image(self) -> Image.Image:
        """The first (for single-appearance transfers, the only) image."""
        return self.images[0]

    @property
    def diagnostics(self) -> dict[str, object]:
        """What a job's metrics report about the run beyond timings (lists are per appearance)."""
        return {
            "adain_applied": list(self.adain_applied),
            "object_masks_found": [None if m is None else m.found for m in self.object_masks],
            "output_width": self.shape.result_width,
            "output_height": self.shape.result_height,
            "aspect_clamped": self.shape.clamped,
            "grid_width": self.shape.width,
            "grid_height": self.shape.height,
            "crop": None if self.shape.crop is None else list(self.shape.crop),
            "rows_per_step": self.rows_per_step,
        }

    @property
    def mean_leakage(self) -> float | None:
        """Attention leakage averaged over every aligned layer call of the run (lower is better)."""
        if not self.leakage_log:
            return None
        return sum(value for _, _, value in self.leakage_log) / len(self.leakage_log)

    @property
    def content_type(self) -> str:
        return self.params.content_type

    def encode(self, index: int = 0) -> bytes:
        return encode_image(self.images[index], self.params.output_format)

    def encode_all(self) -> list[bytes]:
        return [encode_image(image, self.params.output_format) for image in self.images]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """float16 on CUDA and float32 on CPU unless asked otherwise."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None or dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)} or auto; got {dtype!r}")
    return _DTYPES[dtype]


@dataclass(frozen=True)
class Conditioning:
    """What the UNet is conditioned on, per row: the text embeddings and, on SDXL, the pooled text
    embedding and the micro-conditioning ``add_time_ids`` (original size, crop, target size)."""

    text: torch.Tensor  # [rows, L, D]
    pooled: torch.Tensor | None = None  # [rows, P]
    time_ids: torch.Tensor | None = None  # [rows, 6]

    @property
    def rows(self) -> int:
        return len(self.text)

    def expand(self, rows: int) -> Conditioning:
        """A one-row conditioning repeated for ``rows`` rows (a view, no copy)."""
        if self.rows == rows:
            return self
        return Conditioning(
            self.text.expand(rows, -1, -1),
            None if self.pooled is None else self.pooled.expand(rows, -1),
            None if self.time_ids is None else self.time_ids.expand(rows, -1),
        )

    @staticmethod
    def cat(parts: Sequence[Conditioning]) -> Conditioning:
        pooled = [p.pooled for p in parts if p.pooled is not None]
        time_ids = [p.time_ids for p in parts if p.time_ids is not None]
        return Conditioning(
            torch.cat([p.text for p in parts]),
            torch.cat(pooled) if pooled else None,
            torch.cat(time_ids) if time_ids else None,
        )

    def unet_kwargs(self) -> dict[str, object]:
        added = None
        if self.pooled is not None and self.time_ids is not None:
            added = {"text_embeds": self.pooled, "time_ids": self.time_ids}
        return {"encoder_hidden_states": self.text, "added_cond_kwargs": added}


class QAlignPipeline(DiffusionPipeline, FromSingleFileMixin):  # type: ignore[misc]
    """Q-Align appearance transfer as a diffusers pipeline, on SD 1.5 or SDXL.

    The backbone is read from the UNet's own config (``qalign_core.backbones``): one class serves
    both, conditioning the UNet with one text encoder (SD 1.5) or two plus the pooled embedding and
    micro-conditioning (SDXL). The method lives in the attention processors; this class only
    orchestrates named steps. ``transfer`` is the library's call (progress and cancel callbacks for
    the service); ``__call__`` is the same run with diffusers' ``callback_on_step_end``.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components = ["text_encoder_2", "tokenizer_2"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        text_encoder_2: CLIPTextModelWithProjection | None = None,
        tokenizer_2: PreTrainedTokenizerBase | None = None,
        force_zeros_for_empty_prompt: bool = False,
        qalign_config: PipelineConfig | None = None,
    ) -> None:
        from diffusers.image_processor import VaeImageProcessor
        from diffusers.schedulers.scheduling_ddim import DDIMScheduler

        super().__init__()
        # The method runs edit-friendly DDPM from the scheduler's timesteps and alphas: whatever
        # scheduler the model ships (PNDM for SD 1.5, Euler for SDXL), DDIM's reading of its config.
        if not isinstance(scheduler, DDIMScheduler):
            scheduler = DDIMScheduler.from_config(scheduler.config)  # type: ignore[attr-defined]
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            text_encoder_2=text_encoder_2,
            tokenizer_2=tokenizer_2,
        )
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        # diffusers types a model's config as a plain dict (its keys are also attributes).
        self.backbone: Backbone = backbone_from_configs(unet.config, vae.config)
        if self.backbone.name == "sdxl" and (text_encoder_2 is None or tokenizer_2 is None):
            raise ModelLoadError("an SDXL model needs text_encoder_2 and tokenizer_2; this one has none")
        self.qalign_config = qalign_config or PipelineConfig()
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.backbone.vae_scale)
        self.state = AlignmentState(chunk_size=self.qalign_config.chunk_size)
        if self.qalign_config.freeu == "cia":
            DecoderFreeU(self.backbone.freeu).attach(unet)
        elif self.qalign_config.freeu == "diffusers":
            fine, coarse = self.backbone.freeu
            unet.enable_freeu(
                s1=fine.low_frequency_scale, s2=coarse.low_frequency_scale,
                b1=fine.backbone_scale, b2=coarse.backbone_scale,
            )  # fmt: skip
        share_timestep_rows(unet)
        # The pipeline owns the UNet's processors from here on: inversion and denoising both run
        # through them (plain while state.iteration is None), never through whatever was set before.
        install_processors(unet, "qalign", self.state)
        self._installed_method = "qalign"
        self._rows = {"inversion": 0, "denoising": 0}
        self._step_rows: dict[int, int] = {}
        self._interrupt = False
        self._step_callback: StepEndCallback | None = None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str] = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        qalign_config: PipelineConfig | None = None,
        *,
        allow_pickle: bool = False,
        model_config_dir: str | None = None,
        **kwargs: Any,
    ) -> QAlignPipeline:
        """Load SD 1.5 or SDXL from a Hugging Face id, a diffusers directory or one ``.safetensors`` file.

        The backbone comes from the model's own config. Safetensors only unless ``allow_pickle``; a
        single-file checkpoint takes its architecture and tokenizers from ``model_config_dir`` (else
        the base model's configs in the local Hugging Face cache). Other keyword arguments go to
        diffusers' loader. See qalign_core.loading.
        """
        from qalign_core.loading import check_model_path, load_error

        model = str(pretrained_model_name_or_path)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        check_model_path(model)
        if is_single_file(model):
            return cls.from_single_file(
                model, device=torch_device, dtype=torch_dtype, qalign_config=qalign_config,
                allow_pickle=allow_pickle, model_config_dir=model_config_dir, **kwargs,
            )  # fmt: skip
        try:
            with warnings.catch_warnings():  # newer diffusers call torch_dtype dtype; older know only it
                warnings.simplefilter("ignore", FutureWarning)
                pipe: QAlignPipeline = super().from_pretrained(
                    model,
                    torch_dtype=torch_dtype,
                    # True: only *.safetensors are looked for; None: diffusers prefers them, falls back.
                    use_safetensors=None if allow_pickle else True,
                    qalign_config=qalign_config,
                    **kwargs,
                )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise load_error(model, exc, allow_pickle) from exc
        moved: QAlignPipeline = pipe.to(torch_device)
        return moved

    @classmethod
    def from_single_file(
        cls,
        pretrained_model_link_or_path: str | os.PathLike[str],
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        qalign_config: PipelineConfig | None = None,
        *,
        allow_pickle: bool = False,
        model_config_dir: str | None = None,
        **kwargs: Any,
    ) -> QAlignPipeline:
        """Load a single-file SD 1.5 or SDXL checkpoint (original layout) with local configs only."""
        from qalign_core.loading import first_line, single_file_config

        model = str(pretrained_model_link_or_path)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        config = single_file_config(model, allow_pickle=allow_pickle, config_dir=model_config_dir)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                pipe: QAlignPipeline = super().from_single_file(
                    os.path.expanduser(model),
                    config=config,
                    local_files_only=True,
                    torch_dtype=torch_dtype,
                    qalign_config=qalign_config,
                    **kwargs,
                )
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise ModelLoadError(
                f"cannot load single-file checkpoint {model!r} with the configs of {config!r}: "
                f"{first_line(exc)}. It must be an SD 1.x or SDXL checkpoint in the original layout"
            ) from exc
        pipe.register_to_config(_name_or_path=model)  # diffusers records it for directories only
        moved: QAlignPipeline = pipe.to(torch_device)
        return moved

    @property
    def model_id(self) -> str:
        """What the model was loaded from (part of every inversion cache key)."""
        return str(self.config.get("_name_or_path", "") or "")

    @property
    def interrupt(self) -> bool:
        """Set by a ``callback_on_step_end`` (``pipe._interrupt = True``) to stop the run: it raises
        TransferCanceled at the next step."""
        return self._interrupt

    def __call__(
        self,
        structure: ImageInput,
        appearance: ImageInput | Sequence[ImageInput],
        params: TransferParams | None = None,
        *,
        callback_on_step_end: StepEndCallback | None = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
        **kwargs: Any,
    ) -> TransferResult:
        """``transfer`` with diffusers' step callback: called after every denoising iteration with
        ``latents`` (the batch's rows); it may return replaced ``latents`` or set ``_interrupt``."""
        unknown = set(callback_on_step_end_tensor_inputs) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs: only {self._callback_tensor_inputs} are given"
            )
        return self.transfer(structure, appearance, params, step_callback=callback_on_step_end, **kwargs)

    # ---------------------------------------------------------------- the run
    @torch.inference_mode()
    def transfer(
        self,
        structure: ImageInput,
        appearance: ImageInput | Sequence[ImageInput],
        params: TransferParams | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        inversion_cache: InversionCache | None = None,
        object_masks: tuple[ImageInput, ImageInput] | None = None,
        step_callback: StepEndCallback | None = None,
    ) -> TransferResult:
        """Give ``structure``'s layout the look of ``appearance``, or of each of several appearances.

        Returns one image per appearance, each equal to the single-pair transfer with that
        appearance. ``object_masks`` (structure, appearance; white = object) turns on the leakage
        diagnostic (single-appearance transfers only). ``step_callback`` is diffusers'
        ``callback_on_step_end`` (see ``__call__``).
        """
        appearances = self._appearance_list(appearance)
        params = params or TransferParams()
        size = self.native_size if params.size is None else params.size
        if params.size is None:
            params = params.model_copy(update={"size": size})
        self._check_size(size)
        if object_masks is not None and len(appearances) > 1:
            raise InvalidParametersError("object_masks (the leakage diagnostic) takes one appearance image")
        self._interrupt = False
        report = _Reporter(progress, should_cancel, lambda: self._interrupt)
        self._rows = {"inversion": 0, "denoising": 0}
        self._step_rows = {}
        self._step_callback = step_callback
        try:
            return self._run(structure, appearances, params, report, inversion_cache, object_masks)
        finally:
            self._step_callback = None

    def _run(
        self,
        structure: ImageInput,
        appearances: list[ImageInput],
        params: TransferParams,
        report: _Reporter,
        inversion_cache: InversionCache | None,
        object_masks: tuple[ImageInput, ImageInput] | None,
    ) -> TransferResult:
        started = time.perf_counter()
        size = params.size or self.native_size

        report("loading", 0.0)
        structure_image = load_image(structure)
        shape = output_shape(structure_image.size, size, self.size_unit, params.aspect, MAX_ASPECT_RATIO)
        structure_image = fit_structure(structure_image, shape)
        pixels = [self.prepare_image(image, shape) for image in (structure_image, *appearances)]
        cond, uncond = self.encode_prompt(params.effective_prompt, shape)
        self.state.leakage.clear()
        self.state.leakage_masks = (
            None
            if object_masks is None
            else (self.prepare_mask(object_masks[0], shape), self.prepare_mask(object_masks[1], shape))
        )
        report("loading", 1.0)

        t0 = self._now()
        ddpm = self.ddpm_schedule(params.steps)
        plan = schedule_for(params, self.qalign_config.injection_every, self.qalign_config.injection_before)
        inversions, hits = self.invert_images(
            pixels, params, ddpm, plan, cond, uncond, report, inversion_cache
        )
        t1 = self._now()
        latents, masks, applied = self.denoise(
            inversions[0], inversions[1:], params, ddpm, plan, cond, report
        )
        t2 = self._now()
        report("decoding", 0.0)
        images = []
        for k, latent in enumerate(latents):
            images.append(fit_result(self.decode(latent), shape))
            report("decoding", (k + 1) / len(latents))
        t3 = self._now()
        timings = {
            "inversion_s": t1 - t0,
            "denoise_s": t2 - t1,
            "decode_s": t3 - t2,
            "total_s": t3 - started,
        }
        return TransferResult(
            images=images,
            params=params,
            timings=timings,
            shape=shape,
            inversion_cache_hits=hits,
            unet_rows=dict(self._rows),
            rows_per_step=max(self._step_rows.values(), default=0),
            alignment_log=list(self.state.log),
            leakage_log=list(self.state.leakage),
            object_masks=masks,
            adain_applied=applied,
        )

    @staticmethod
    def _appearance_list(appearance: ImageInput | Sequence[ImageInput]) -> list[ImageInput]:
        """One appearance or a sequence of them (bytes and paths are single inputs, not sequences)."""
        if isinstance(appearance, (bytes, bytearray, str, os.PathLike, Image.Image)):
            return [appearance]
        appearances = list(appearance)
        if not 1 <= len(appearances) <= MAX_APPEARANCES:
            raise InvalidParametersError(
                f"appearance: give 1 to {MAX_APPEARANCES} appearance images; got {len(appearances)}"
            )
        return appearances

    # ---------------------------------------------------------------- steps
    @property
    def native_size(self) -> int:
        """The model's native side (512 for SD 1.5, 1024 for SDXL): the default ``size``."""
        return self.backbone.native_size

    @property
    def vae_scale(self) -> int:
        """The VAE's downsampling factor."""
        return self.backbone.vae_scale

    @property
    def size_unit(self) -> int:
        """Output sides are multiples of this (the VAE factor x 2^downsamplings; 64 px for SD 1.5,
        32 for SDXL), so every token grid of the UNet halves exactly."""
        return self.backbone.size_unit

    def prepare_image(self, source: ImageInput, shape: int | OutputShape) -> torch.Tensor:
        """Decode, cover-crop around the centre to the output's aspect ratio and resize.

        ``shape`` is an OutputShape or, for a square, its side. Returns ``[3, height, width]`` uint8.
        """
        if isinstance(shape, int):
            shape = OutputShape(shape, shape)
        image = cover_crop(load_image(source), shape.width, shape.height)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def prepare_mask(self, source: ImageInput, shape: int | OutputShape) -> torch.Tensor:
        """An object mask cropped like its image: ``[height, width]`` in [0, 1], white = object."""
        return self.prepare_image(source, shape).float().mean(dim=0) / 255.0

    def encode_prompt(
        self, prompt: str, shape: OutputShape | None = None
    ) -> tuple[Conditioning, Conditioning]:
        """The UNet's conditioning for the prompt and for the empty prompt (inversion's CFG).

        SD 1.5: the text encoder's last hidden states. SDXL, as diffusers' SDXL pipeline: both
        encoders' penultimate hidden states side by side, the second's pooled projection, and the
        micro-conditioning of an uncropped image of the output's size (``shape``; default native);
        the empty prompt is all zeros when the model's config says ``force_zeros_for_empty_prompt``.
        """
        device, dtype = self._execution_device, self.unet.dtype
        if self.backbone.name == "sd15":
            tokens = self._tokenize(self.tokenizer, [prompt, ""]).to(device)
            embeddings = self.text_encoder(tokens)[0].to(dtype)
            return Conditioning(embeddings[:1]), Conditioning(embeddings[1:])
        assert self.text_encoder_2 is not None and self.tokenizer_2 is not None  # checked at __init__
        hidden = []
        for tokenizer, encoder in (
            (self.tokenizer, self.text_encoder),
            (self.tokenizer_2, self.text_encoder_2),
        ):
            output = encoder(self._tokenize(tokenizer, [prompt, ""]).to(device), output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
        # The second encoder's projection of the end token: the pooled embedding.
        text, pooled = torch.cat(hidden, dim=-1).to(dtype), output[0].to(dtype)
        shape = shape or OutputShape(self.native_size, self.native_size)
        size = [shape.height, shape.width]
        time_ids = torch.tensor([size + [0, 0] + size], dtype=dtype, device=device)
        cond = Conditioning(text[:1], pooled[:1], time_ids)
        if self.config.get("force_zeros_for_empty_prompt", False):
            uncond = Conditioning(torch.zeros_like(text[:1]), torch.zeros_like(pooled[:1]), time_ids)
        else:
            uncond = Conditioning(text[1:], pooled[1:], time_ids)
        return cond, uncond

    @staticmethod
    def _tokenize(tokenizer: PreTrainedTokenizerBase, prompts: list[str]) -> torch.Tensor:
        ids: torch.Tensor = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        return ids

    def encode_images(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        """VAE latents of prepared images (``[3, H, W]`` uint8), through diffusers' image processor."""
        images = [Image.fromarray(p.permute(1, 2, 0).numpy()) for p in pixels]
        height, width = pixels[0].shape[-2:]
        # The processor returns a channels-last view; contiguous, so the convolutions (and their
        # rounding) are those of a plain NCHW batch.
        batch = self.image_processor.preprocess(images, height=height, width=width).contiguous()
        with self._vae_precision() as dtype:
            encoded = self.vae.encode(batch.to(self._execution_device, dtype)).latent_dist.mean
        latents: torch.Tensor = encoded.to(self.unet.dtype) * self.latent_scale
        return latents

    def ddpm_schedule(self, steps: int) -> DDPMSchedule:
        """The scheduler's timesteps for ``steps``; an error naming ``steps`` if this scheduler cannot."""
        train_steps = len(self.scheduler.alphas_cumprod)
        refusal = f"steps: this model's scheduler supports at most {train_steps - 1}; got {steps}"
        try:  # diffusers refuses more steps than training had; one more overruns with steps_offset
            ddpm = DDPMSchedule.from_scheduler(self.scheduler, steps)
        except (ValueError, IndexError) as exc:
            raise InvalidParametersError(refusal) from exc
        if int(ddpm.timesteps.max()) >= train_steps or len(ddpm) != steps:
            raise InvalidParametersError(refusal)
        return ddpm

    def inversion_noise(
        self, schedule: DDPMSchedule, cond: Conditioning, uncond: Conditioning, batch: int
    ) -> NoisePredictor:
        """``predict_noise(latents, i)`` of the inversion: the UNet with CFG, plain attention."""
        embeddings = Conditioning.cat([uncond.expand(batch), cond.expand(batch)])
        guidance = self.qalign_config.inversion_guidance

        def predict_noise(latents: torch.Tensor, i: int) -> torch.Tensor:
            eps_uncond, eps_cond = self._unet(
                torch.cat([latents, latents]), schedule, i, embeddings, "inversion"
            ).chunk(2)
            return eps_uncond + guidance * (eps_cond - eps_uncond)

        return predict_noise

    def invert_images(
        self,
        pixels: list[torch.Tensor],
        params: TransferParams,
        schedule: DDPMSchedule,
        plan: DenoiseSchedule,
        cond: Conditioning,
        uncond: Conditioning,
        report: ProgressCallback,
        cache: InversionCache | None,
    ) -> tuple[list[Inversion], int]:
        """Invert the images (structure first) in batches, skipping any found in the cache.

        Batches hold at most ``max_pairs_per_batch + 1`` images; progress covers all of them.
        """
        raw = [p.numpy().tobytes() for p in pixels]
        keys = [self._inversion_key(data, (p.shape[-2], p.shape[-1]), params, plan.skip) for data, p in
                zip(raw, pixels, strict=True)]  # fmt: skip
        found = [self._cached(cache, key) for key in keys]
        missing = [n for n, inv in enumerate(found) if inv is None]
        batch = self.qalign_config.max_pairs_per_batch + 1
        batches = [missing[b : b + batch] for b in range(0, len(missing), batch)]
        self.state.iteration = None  # inversion is plain self-attention
        inverted: dict[int, Inversion] = {}
        for done_batches, indices in enumerate(batches):

            def on_step(done: int, total: int, b: int = done_batches) -> None:
                report("inverting", (b + done / total) / len(batches))

            fresh = invert(
                self.encode_images([pixels[n] for n in indices]),
                [noise_seed(raw[n], params.seed) for n in indices],
                schedule,
                plan.skip,
                self.inversion_noise(schedule, cond, uncond, len(indices)),
                on_step=on_step,
            )
            for n, inversion in zip(indices, fresh, strict=True):
                inverted[n] = inversion
                if cache is not None:
                    cache.put(keys[n], inversion.to_bytes())
        inversions = [inverted[n] if cached is None else cached for n, cached in enumerate(found)]
        return inversions, len(pixels) - len(missing)

    def denoise(
        self,
        structure: Inversion,
        appearances: Sequence[Inversion],
        params: TransferParams,
        schedule: DDPMSchedule,
        plan: DenoiseSchedule,
        cond: Conditioning,
        report: ProgressCallback,
    ) -> tuple[torch.Tensor, list[ObjectMasks | None], list[str]]:
        """Denoise every (structure, appearance) pair, ``max_pairs_per_batch`` pairs per batch.

        Returns the output latents ``[N, C, h, w]`` in the appearances' order, masked AdaIN's object
        masks and the AdaIN applied, per pair.
        """
        self._use_method(params, plan)
        self.state.log.clear()
        size = self.qalign_config.max_pairs_per_batch
        batches = [list(appearances[b : b + size]) for b in range(0, len(appearances), size)]
        latents: list[torch.Tensor] = []
        masks: list[ObjectMasks | None] = []
        applied: list[str] = []
        for done, batch in enumerate(batches):

            def batch_report(fraction: float, b: int = done) -> None:
                report("denoising", (b + fraction) / len(batches))

            x, batch_masks, batch_applied = self._denoise_batch(
                structure, batch, params, schedule, plan, cond, batch_report
            )
            latents.append(x)
            masks.extend(batch_masks)
            applied.extend(batch_applied)
        return torch.cat(latents), masks, applied

    def _denoise_batch(
        self,
        structure: Inversion,
        appearances: list[Inversion],
        params: TransferParams,
        schedule: DDPMSchedule,
        plan: DenoiseSchedule,
        cond: Conditioning,
        report: Callable[[float], None],
    ) -> tuple[torch.Tensor, list[ObjectMasks | None], list[str]]:
        """Rows [OUT_1..OUT_m, APP_1..APP_m, STRUCT] through the run: alignment, swap guidance, AdaIN."""
        rows = RowLayout(len(appearances))
        self.state.rows = rows
        starts = [structure.start_latent] * rows.pairs + [a.start_latent for a in appearances]
        maps = [structure.noise_maps] * rows.pairs + [a.noise_maps for a in appearances]
        x = torch.stack([*starts, structure.start_latent])
        noise = torch.stack([*maps, structure.noise_maps], dim=1)
        # Grid levels count from the finest grid with attention (the latent's on SD 1.5, half of
        # it on SDXL): the processors and the segmentation capture read them off this grid.
        self.state.grid = self.state.capture.grid = self.backbone.attention_grid((x.shape[-2], x.shape[-1]))
        start = params.swap_guidance_scale
        guidance = np.linspace(start, max(start / 2, 1.0), plan.iterations)
        masks: list[ObjectMasks | None] = [None] * rows.pairs
        applied = ["none"] * rows.pairs
        try:
            for n in range(plan.iterations):
                i = plan.skip + n
                segmenting = params.adain == "masked" and n == plan.segmentation_iteration
                self.state.capture.active = segmenting
                eps = self._guided_noise(x, schedule, i, n, plan, cond, float(guidance[n]))
                x = schedule.step(x, eps, i, noise[n])
                if segmenting:
                    masks = self._object_masks(params, rows.pairs)
                if params.adain != "none" and plan.adain_after(n):
                    for pair in range(rows.pairs):
                        applied[pair] = self._apply_adain(x, pair, rows, masks[pair], params.adain)
                x = self._step_end(n, schedule.timesteps[i], x)
                report((n + 1) / plan.iterations)
        finally:
            self.state.iteration = None
            self.state.rows = RowLayout()
            self.state.capture.clear()
        return x[rows.out], masks, applied

    def _step_end(self, n: int, timestep: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """diffusers' ``callback_on_step_end`` after iteration n: it may replace the latents."""
        if self._step_callback is None:
            return x
        returned = self._step_callback(self, n, timestep, {"latents": x}) or {}
        latents: torch.Tensor = returned.get("latents", x)
        return latents

    def _apply_adain(
        self, x: torch.Tensor, pair: int, rows: RowLayout, masks: ObjectMasks | None, adain_mode: str
    ) -> str:
        """AdaIN of one pair's OUT row toward its APP row, in place; returns the kind applied.

        Masks come at the finest grid with attention; on SDXL (half the latent's sides) each mask
        cell covers 2 x 2 latent positions.
        """
        out, app = pair, rows.app.start + pair
        if (
            adain_mode == "masked"
            and masks is not None
            and masks.structure is not None
            and masks.appearance is not None
            and masks.found
        ):
            factor = 2**self.backbone.first_level
            structure_mask, appearance_mask = (
                mask.repeat_interleave(factor, 0).repeat_interleave(factor, 1).to(x.device)
                for mask in (masks.structure, masks.appearance)
            )
            x[out] = masked_adain(x[out], x[app], structure_mask, appearance_mask)
            return "masked"
        x[out] = adain(x[out], x[app])
        return "plain"

    def _object_masks(self, params: TransferParams, pairs: int) -> list[ObjectMasks | None]:
        """Masked AdaIN's object masks, one per pair, from the attention captured at this iteration."""
        positions = noun_token_positions(self.tokenizer, params.effective_prompt, params.domain)
        masks: list[ObjectMasks | None] = list(
            compute_object_masks(self.state.capture, positions, appearances=pairs)
        )
        self.state.capture.clear()
        return masks

    @property
    def latent_scale(self) -> float:
        """The VAE's scaling factor: encoded latents are multiplied by it, and divided before decoding."""
        scale: float = self.vae.config["scaling_factor"]
        return scale

    def decode(self, latent: torch.Tensor) -> Image.Image:
        with self._vae_precision() as dtype:
            image = self.vae.decode(latent.unsqueeze(0).to(dtype) / self.latent_scale).sample
        decoded: Image.Image = self.image_processor.postprocess(image.float(), output_type="pil")[0]
        return decoded

    @contextmanager
    def _vae_precision(self) -> Iterator[torch.dtype]:
        """The dtype the VAE runs in: float32 for SDXL's VAE in float16 (``force_upcast``: its
        activations overflow in half precision), as diffusers' SDXL pipeline does; else its own."""
        dtype = self.vae.dtype
        upcast = self.backbone.name == "sdxl" and dtype == torch.float16 and self.vae.config["force_upcast"]
        if not upcast:
            yield dtype
            return
        self.vae.to(torch.float32)
        try:
            yield torch.float32
        finally:
            self.vae.to(dtype)

    # ---------------------------------------------------------------- helpers
    def _guided_noise(
        self,
        x: torch.Tensor,
        schedule: DDPMSchedule,
        i: int,
        n: int,
        plan: DenoiseSchedule,
        cond: Conditioning,
        scale: float,
    ) -> torch.Tensor:
        """CIA's noise at iteration n: ``eps_plain + s_n (eps_swap - eps_plain)`` if guided, else eps_swap.

        APP and STRUCT run plain attention in both passes, so they are evaluated once; when no layer
        mixes at this iteration the swap pass equals the plain one and a single pass serves.
        """
        self.state.iteration = n
        out = self.state.rows.out
        if not plan.any_mixed(n) or not (scale > 1.0 and plan.guided(n)):
            return self._unet(x, schedule, i, cond, "denoising", n)
        if self.qalign_config.fused_swap_pass:  # rows OUT(swap), APP, STRUCT, OUT(plain): 3m+1
            rows = torch.cat([x, x[out]])
            eps = self._unet(rows, schedule, i, cond, "denoising", n)
            eps_swap, eps_plain = eps[: len(x)], eps[len(x) :]
        else:  # two passes of 2m+1 rows: one with alignment, one without
            eps_swap = self._unet(x, schedule, i, cond, "denoising", n)
            self.state.iteration = None
            eps_plain = self._unet(x, schedule, i, cond, "denoising", n)[out]
            self.state.iteration = n
        eps_swap = eps_swap.clone()
        eps_swap[out] = eps_plain + scale * (eps_swap[out] - eps_plain)
        return eps_swap

    def _unet(
        self,
        latents: torch.Tensor,
        schedule: DDPMSchedule,
        i: int,
        cond: Conditioning,
        phase: str,
        n: int | None = None,
    ) -> torch.Tensor:
        """The UNet's noise prediction for ``latents``; a one-row ``cond`` serves every row."""
        self._rows[phase] += len(latents)
        if n is not None:
            self._step_rows[n] = self._step_rows.get(n, 0) + len(latents)
        t = schedule.timesteps[i].to(self._execution_device)
        noise: torch.Tensor = self.unet(latents, t, **cond.expand(len(latents)).unet_kwargs()).sample
        return noise

    def _use_method(self, params: TransferParams, plan: DenoiseSchedule) -> None:
        self.state.contrast_strength = params.contrast_strength
        self.state.per_head = params.per_head
        self.state.schedule = plan
        if self._installed_method != params.method:
            install_processors(self.unet, params.method, self.state)
            self._installed_method = params.method

    def _inversion_key(self, pixels: bytes, grid: tuple[int, int], params: TransferParams, skip: int) -> str:
        return inversion_key(
            pixels,
            model=self.model_id,
            size=list(grid),
            steps=params.steps,
            skip_steps=skip,
            prompt=params.effective_prompt,
            seed=params.seed,
            guidance=self.qalign_config.inversion_guidance,
            dtype=str(self.unet.dtype),
            freeu=self.qalign_config.freeu,
        )

    def _cached(self, cache: InversionCache | None, key: str) -> Inversion | None:
        data = cache.get(key) if cache is not None else None
        return (
            Inversion.from_bytes(data, self._execution_device, self.unet.dtype) if data is not None else None
        )

    def _check_size(self, size: int) -> None:
        refusal = check_size(self.backbone, size)
        if refusal is not None:
            raise InvalidParametersError(refusal)

    def _now(self) -> float:
        device = self._execution_device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()


def share_rows(module: torch.nn.Module) -> None:
    """Make ``module`` run once when every row of its input is the same, and broadcast (idempotent).

    For the UNet's timestep-embedding layers: all rows of a call share the timestep (and on SDXL the
    conditioning), and small-batch matrix products are not bit-identical across batch sizes, so
    without this one 4-row call would differ from two 3-row calls by rounding (and it saves the
    repeated work). Forward hooks, not a wrapper module: the weights keep their names, so
    ``save_pretrained`` writes a model that loads back.
    """
    if getattr(module, "_qalign_shares_rows", False):
        return
    shared: list[int] = []  # per call in flight: the rows to broadcast to, 0 when not shared

    def before(
        _: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        x = args[0] if args else None
        others = [*args[1:], *kwargs.values()]
        if (
            isinstance(x, torch.Tensor)
            and len(x) > 1
            and all(a is None for a in others)
            and bool((x == x[:1]).all())
        ):
            shared.append(len(x))
            return (x[:1], *args[1:]), kwargs
        shared.append(0)
        return None

    def after(
        _: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: torch.Tensor
    ) -> torch.Tensor | None:
        rows = shared.pop()
        return output.expand(rows, *output.shape[1:]) if rows else None

    module.register_forward_pre_hook(before, with_kwargs=True)
    module.register_forward_hook(after, with_kwargs=True)
    module._qalign_shares_rows = True  # type: ignore[assignment]


def share_timestep_rows(unet: torch.nn.Module) -> None:
    """Share rows in the timestep embedding, SDXL's added embedding and every resnet's projection."""
    for name in ("time_embedding", "add_embedding"):
        embedding = getattr(unet, name, None)
        if embedding is not None:
            share_rows(embedding)
    for module in unet.modules():
        projection = getattr(module, "time_emb_proj", None)
        if projection is not None:
            share_rows(projection)


class _Reporter:
    """Calls the progress callback and raises TransferCanceled when the cancel check (or the
    pipeline's ``interrupt``) says so."""

    def __init__(
        self, progress: ProgressCallback | None, should_cancel: CancelCheck | None, interrupted: CancelCheck
    ) -> None:
        self.progress, self.should_cancel, self.interrupted = progress, should_cancel, interrupted

    def __call__(self, stage: str, fraction: float) -> None:
        if self.interrupted() or (self.should_cancel is not None and self.should_cancel()):
            raise TransferCanceled(f"transfer canceled during {stage}")
        if self.progress is not None:
            self.progress(stage, fraction)
