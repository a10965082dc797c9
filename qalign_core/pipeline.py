"""The appearance-transfer pipeline: a thin orchestrator over clearly named steps.

    prepare images -> encode -> invert (batched, cached) -> denoise with alignment -> decode

One structure may go with several appearances: the structure is inverted once and its row is shared
by every pair of a denoising batch (3N+1 UNet rows per aligned step instead of 4N).

See docs/algorithm.md for the method and every default.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from PIL import Image

from qalign_core import images as imaging
from qalign_core.adain import adain, masked_adain
from qalign_core.ddpm import DDPMSchedule, NoiseScheduler
from qalign_core.errors import InvalidParametersError, ModelLoadError, TransferCanceled
from qalign_core.freeu import DecoderFreeU
from qalign_core.images import ImageInput, OutputShape, cover_crop, encode_image, load_image, output_shape
from qalign_core.inversion import Inversion, InversionCache, inversion_key, invert, noise_seed
from qalign_core.params import DEFAULT_MODEL, MAX_APPEARANCES, MAX_ASPECT_RATIO, TransferParams
from qalign_core.processors import AlignmentState, RowLayout, install_processors
from qalign_core.schedule import DenoiseSchedule, schedule_for
from qalign_core.segmentation import ObjectMasks, compute_object_masks, noun_token_positions

if TYPE_CHECKING:
    # diffusers' top-level names resolve to placeholder classes for type checkers: import the modules.
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

ProgressCallback = Callable[[str, float], None]
CancelCheck = Callable[[], bool]
#: ``predict_noise(latents, i)``: the model's noise estimate at step i.
NoisePredictor = Callable[[torch.Tensor, int], torch.Tensor]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


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


class QAlignPipeline:
    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: PreTrainedTokenizerBase,
        scheduler: NoiseScheduler,
        *,
        model_id: str,
        config: PipelineConfig | None = None,
    ) -> None:
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.scheduler = scheduler
        self.model_id = model_id
        self.config = config or PipelineConfig()
        self.device, self.dtype = unet.device, unet.dtype
        # diffusers types a model's config as a plain dict (its keys are also attributes).
        self.vae_scale: int = 2 ** (len(vae.config["block_out_channels"]) - 1)
        self.native_size = int(unet.config["sample_size"]) * self.vae_scale
        self.state = AlignmentState(chunk_size=self.config.chunk_size)
        if self.config.freeu == "cia":
            DecoderFreeU().attach(unet)
        elif self.config.freeu == "diffusers":
            unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)
        share_timestep_rows(unet)
        # The pipeline owns the UNet's processors from here on: inversion and denoising both run
        # through them (plain while state.iteration is None), never through whatever was set before.
        install_processors(unet, "qalign", self.state)
        self._installed_method = "qalign"
        self._rows = {"inversion": 0, "denoising": 0}
        self._step_rows: dict[int, int] = {}

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        config: PipelineConfig | None = None,
        *,
        allow_pickle: bool | None = None,
        model_config_dir: str | None = None,
    ) -> QAlignPipeline:
        """Load Stable Diffusion from a Hugging Face id, a local directory or one ``.safetensors`` file.

        Safetensors only unless ``allow_pickle`` (default: QALIGN_ALLOW_PICKLE_WEIGHTS); a single-file
        checkpoint takes its architecture and tokenizer from ``model_config_dir`` (default:
        QALIGN_MODEL_CONFIG_DIR, else SD 1.5's configs in the local cache). See qalign_core.loading.
        """
        from qalign_core.loading import is_single_file, load_components

        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        # Hub ids are "org/name"; anything else that is not a directory is a mistyped path.
        looks_like_path = str(model).startswith((".", "/", "~")) or str(model).count("/") > 1
        if (
            looks_like_path
            and not is_single_file(model)
            and not os.path.isdir(os.path.expanduser(str(model)))
        ):
            raise ModelLoadError(f"model directory {str(model)!r} does not exist")
        parts = load_components(
            str(model), torch_dtype, allow_pickle=allow_pickle, config_dir=model_config_dir
        )
        modules: tuple[torch.nn.Module, ...] = (parts.unet, parts.vae, parts.text_encoder)
        for module in modules:
            module.to(torch_device).eval().requires_grad_(False)
        return cls(
            parts.unet,
            parts.vae,
            parts.text_encoder,
            parts.tokenizer,
            parts.scheduler,
            model_id=str(model),
            config=config,
        )

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
    ) -> TransferResult:
        """Give ``structure``'s layout the look of ``appearance``, or of each of several appearances.

        Returns one image per appearance, each equal to the single-pair transfer with that
        appearance. ``object_masks`` (structure, appearance; white = object) turns on the leakage
        diagnostic (single-appearance transfers only).
        """
        appearances = self._appearance_list(appearance)
        params = params or TransferParams()
        size = self.native_size if params.size is None else params.size
        if params.size is None:
            params = params.model_copy(update={"size": size})
        self._check_size(size)
        if object_masks is not None and len(appearances) > 1:
            raise InvalidParametersError("object_masks (the leakage diagnostic) takes one appearance image")
        report = _Reporter(progress, should_cancel)
        self._rows = {"inversion": 0, "denoising": 0}
        self._step_rows = {}
        started = time.perf_counter()

        report("loading", 0.0)
        structure_image = load_image(structure)
        shape = output_shape(structure_image.size, size, self.size_unit, params.aspect, MAX_ASPECT_RATIO)
        structure_image = imaging.fit_structure(structure_image, shape)
        pixels = [self.prepare_image(image, shape) for image in (structure_image, *appearances)]
        cond, uncond = self.encode_prompt(params.effective_prompt)
        self.state.leakage.clear()
        self.state.leakage_masks = (
            None
            if object_masks is None
            else (self.prepare_mask(object_masks[0], shape), self.prepare_mask(object_masks[1], shape))
        )
        report("loading", 1.0)

        t0 = self._now()
        ddpm = self.ddpm_schedule(params.steps)
        plan = schedule_for(params, self.config.injection_every, self.config.injection_before)
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
            images.append(imaging.fit_result(self.decode(latent), shape))
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
    def size_unit(self) -> int:
        """Output sides are multiples of this (the VAE factor x 2^downsamplings; 64 px for SD 1.5),
        so every token grid of the UNet halves exactly."""
        unit: int = self.vae_scale * 2 ** (len(self.unet.config["block_out_channels"]) - 1)
        return unit

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

    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Text embeddings ``[1, L, D]`` of the prompt and of the empty prompt."""
        tokens = self.tokenizer(
            [prompt, ""],
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        embeddings = self.text_encoder(tokens.input_ids.to(self.device))[0].to(self.dtype)
        return embeddings[:1], embeddings[1:]

    def encode_images(self, pixels: list[torch.Tensor]) -> torch.Tensor:
        batch = torch.stack(pixels).to(self.device, self.dtype) / 127.5 - 1.0
        latents: torch.Tensor = self.vae.encode(batch).latent_dist.mean
        return latents * self.latent_scale

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
        self, schedule: DDPMSchedule, cond: torch.Tensor, uncond: torch.Tensor, batch: int
    ) -> NoisePredictor:
        """``predict_noise(latents, i)`` of the inversion: the UNet with CFG, plain attention."""
        embeddings = torch.cat([uncond.expand(batch, -1, -1), cond.expand(batch, -1, -1)])
        guidance = self.config.inversion_guidance

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
        cond: torch.Tensor,
        uncond: torch.Tensor,
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
        batch = self.config.max_pairs_per_batch + 1
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
        cond: torch.Tensor,
        report: ProgressCallback,
    ) -> tuple[torch.Tensor, list[ObjectMasks | None], list[str]]:
        """Denoise every (structure, appearance) pair, ``max_pairs_per_batch`` pairs per batch.

        Returns the output latents ``[N, C, h, w]`` in the appearances' order, masked AdaIN's object
        masks and the AdaIN applied, per pair.
        """
        self._use_method(params, plan)
        self.state.log.clear()
        size = self.config.max_pairs_per_batch
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
        cond: torch.Tensor,
        report: Callable[[float], None],
    ) -> tuple[torch.Tensor, list[ObjectMasks | None], list[str]]:
        """Rows [OUT_1..OUT_m, APP_1..APP_m, STRUCT] through the run: alignment, swap guidance, AdaIN."""
        rows = RowLayout(len(appearances))
        self.state.rows = rows
        starts = [structure.start_latent] * rows.pairs + [a.start_latent for a in appearances]
        maps = [structure.noise_maps] * rows.pairs + [a.noise_maps for a in appearances]
        x = torch.stack([*starts, structure.start_latent])
        noise = torch.stack([*maps, structure.noise_maps], dim=1)
        self.state.grid = self.state.capture.grid = (x.shape[-2], x.shape[-1])
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
                report((n + 1) / plan.iterations)
        finally:
            self.state.iteration = None
            self.state.rows = RowLayout()
            self.state.capture.clear()
        return x[rows.out], masks, applied

    @staticmethod
    def _apply_adain(
        x: torch.Tensor, pair: int, rows: RowLayout, masks: ObjectMasks | None, adain_mode: str
    ) -> str:
        """AdaIN of one pair's OUT row toward its APP row, in place; returns the kind applied."""
        out, app = pair, rows.app.start + pair
        if (
            adain_mode == "masked"
            and masks is not None
            and masks.structure is not None
            and masks.appearance is not None
            and masks.found
        ):
            x[out] = masked_adain(x[out], x[app], masks.structure.to(x.device), masks.appearance.to(x.device))
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
        image = self.vae.decode(latent.unsqueeze(0) / self.latent_scale).sample[0]
        array = ((image.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return Image.fromarray(array.permute(1, 2, 0).cpu().numpy())

    # ---------------------------------------------------------------- helpers
    def _guided_noise(
        self,
        x: torch.Tensor,
        schedule: DDPMSchedule,
        i: int,
        n: int,
        plan: DenoiseSchedule,
        cond: torch.Tensor,
        scale: float,
    ) -> torch.Tensor:
        """CIA's noise at iteration n: ``eps_plain + s_n (eps_swap - eps_plain)`` if guided, else eps_swap.

        APP and STRUCT run plain attention in both passes, so they are evaluated once; when no layer
        mixes at this iteration the swap pass equals the plain one and a single pass serves.
        """
        self.state.iteration = n
        out = self.state.rows.out
        if not plan.any_mixed(n) or not (scale > 1.0 and plan.guided(n)):
            return self._unet(x, schedule, i, cond.expand(len(x), -1, -1), "denoising", n)
        if self.config.fused_swap_pass:  # rows OUT(swap), APP, STRUCT, OUT(plain): 3m+1
            rows = torch.cat([x, x[out]])
            eps = self._unet(rows, schedule, i, cond.expand(len(rows), -1, -1), "denoising", n)
            eps_swap, eps_plain = eps[: len(x)], eps[len(x) :]
        else:  # two passes of 2m+1 rows: one with alignment, one without
            embeddings = cond.expand(len(x), -1, -1)
            eps_swap = self._unet(x, schedule, i, embeddings, "denoising", n)
            self.state.iteration = None
            eps_plain = self._unet(x, schedule, i, embeddings, "denoising", n)[out]
            self.state.iteration = n
        eps_swap = eps_swap.clone()
        eps_swap[out] = eps_plain + scale * (eps_swap[out] - eps_plain)
        return eps_swap

    def _unet(
        self,
        latents: torch.Tensor,
        schedule: DDPMSchedule,
        i: int,
        embeddings: torch.Tensor,
        phase: str,
        n: int | None = None,
    ) -> torch.Tensor:
        self._rows[phase] += len(latents)
        if n is not None:
            self._step_rows[n] = self._step_rows.get(n, 0) + len(latents)
        t = schedule.timesteps[i].to(self.device)
        noise: torch.Tensor = self.unet(latents, t, encoder_hidden_states=embeddings).sample
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
            guidance=self.config.inversion_guidance,
            dtype=str(self.dtype),
            freeu=self.config.freeu,
        )

    def _cached(self, cache: InversionCache | None, key: str) -> Inversion | None:
        data = cache.get(key) if cache is not None else None
        return Inversion.from_bytes(data, self.device, self.dtype) if data is not None else None

    def _check_size(self, size: int) -> None:
        if size % self.size_unit:
            raise InvalidParametersError(
                f"size must be a multiple of {self.size_unit} for this model; got {size}"
            )

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


class SharedRows(torch.nn.Module):
    """Runs a per-row module once when every row of its input is the same, and broadcasts.

    Wraps the UNet's timestep-embedding layers: all rows of a call share the timestep, and
    small-batch matrix products are not bit-identical across batch sizes, so without this one
    4-row call would differ from two 3-row calls by rounding (and it saves the repeated work).
    """

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, *args: torch.Tensor | None) -> torch.Tensor:
        if all(a is None for a in args) and len(x) > 1 and bool((x == x[:1]).all()):
            first: torch.Tensor = self.inner(x[:1])
            return first.expand(len(x), *first.shape[1:])
        out: torch.Tensor = self.inner(x, *args)
        return out


def share_timestep_rows(unet: torch.nn.Module) -> None:
    """Wrap the timestep embedding and every resnet's projection of it in SharedRows (idempotent)."""
    time_embedding = unet.get_submodule("time_embedding")
    if not isinstance(time_embedding, SharedRows):
        unet.time_embedding = SharedRows(time_embedding)
    for module in unet.modules():
        projection = getattr(module, "time_emb_proj", None)
        if projection is not None and not isinstance(projection, SharedRows):
            module.time_emb_proj = SharedRows(projection)


class _Reporter:
    """Calls the progress callback and raises TransferCanceled when the cancel check says so."""

    def __init__(self, progress: ProgressCallback | None, should_cancel: CancelCheck | None) -> None:
        self.progress, self.should_cancel = progress, should_cancel

    def __call__(self, stage: str, fraction: float) -> None:
        if self.should_cancel is not None and self.should_cancel():
            raise TransferCanceled(f"transfer canceled during {stage}")
        if self.progress is not None:
            self.progress(stage, fraction)
