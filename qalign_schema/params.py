"""Per-request parameters of a transfer, with their defaults and validated ranges.

One model serves the library, the CLI, the HTTP API and the Python client, so a value refused in one
place is refused with the same message everywhere. Pydantic only: the client installs it without torch.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator

StepRange = tuple[int, int]

#: The image formats accepted as inputs and produced as results: the one home of this rule (the
#: type of ``output_format``; everything else derives from it).
ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[str, ...] = get_args(ImageFormat)
#: Their media types, in the same order (what Content-Type, Accept and the OpenAPI document name).
IMAGE_MEDIA_TYPES: tuple[str, ...] = tuple(f"image/{fmt}" for fmt in IMAGE_FORMATS)
#: How people write them, in the same order: PNG, JPEG, WebP.
IMAGE_FORMAT_NAMES: tuple[str, ...] = tuple("WebP" if fmt == "webp" else fmt.upper() for fmt in IMAGE_FORMATS)
#: The accepted formats as refusals name them: "PNG, JPEG or WebP".
IMAGE_FORMATS_TEXT = f"{', '.join(IMAGE_FORMAT_NAMES[:-1])} or {IMAGE_FORMAT_NAMES[-1]}"

#: The AdaIN a job asks for (``adain``) and the one that ran (``adain_applied``): within the object's
#: self-segmented masks, over the whole latent, or none.
AdainMode = Literal["masked", "plain", "none"]
ADAIN_MODES: tuple[AdainMode, ...] = get_args(AdainMode)

#: Bounds of an output's longer side over every backbone; each model narrows them (its unit: 64 px
#: for SD 1.5, 32 for SDXL; at most twice its native size). ``GET /readyz`` states the served model's.
MIN_SIZE = 64
MAX_SIZE = 1536
SIZE_UNIT = 32
#: The most DDPM steps: SD 1.5's scheduler (1000 training steps, steps_offset 1) supports up to 999.
MAX_STEPS = 999
#: The most appearance images one job may carry (one structure, one result per appearance).
MAX_APPEARANCES = 8
#: The most elongated output ``aspect=structure`` keeps (longer side : shorter side); a structure
#: image beyond it is centre-cropped to this ratio, and the result says it was clamped.
MAX_ASPECT_RATIO = 2.0


def _step_range_schema(schema: dict[str, Any]) -> None:
    """Publish the per-item bounds the range validator enforces, so schema-driven generators and clients
    know them (start <= end is checked by the validator; JSON Schema cannot say it)."""
    schema["prefixItems"] = [{"type": "integer", "minimum": 0, "maximum": 100} for _ in range(2)]


SCHEDULE_UNITS = (
    "In CIA's units: steps of a 100-step run counted from the first denoising step, scaled by "
    "steps/100 (at steps=100 exactly Cross-Image Attention's schedule)."
)


class TransferParams(BaseModel):
    """Everything a caller may set for one transfer (see docs/algorithm.md for what each does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["qalign", "cross_image"] = Field(
        "qalign", description="Attention method: Q-Align (default) or the Cross-Image Attention baseline."
    )
    steps: int = Field(
        100, ge=2, le=MAX_STEPS, description="DDPM steps T of inversion and denoising (schedule scales)."
    )
    skip_steps: int = Field(
        32,
        ge=0,
        le=99,
        description="Leading (noisiest) steps skipped, out of 100: denoising starts at "
        "round(skip_steps * steps / 100), always leaving at least one step.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the inversion noise.")
    domain: str = Field(
        "object",
        min_length=1,
        max_length=64,
        description='Prompt subject: "A photo of a {domain}"; also the object noun masked AdaIN looks for.',
    )
    prompt: str | None = Field(
        None, min_length=1, max_length=300, description="Full prompt; replaces the domain prompt when given."
    )
    swap_guidance_scale: float = Field(
        3.5,
        ge=1.0,
        le=20.0,
        allow_inf_nan=False,
        description="Swap guidance s at the first denoising step, falling to max(s/2, 1); 1 = off.",
    )
    contrast_strength: float = Field(
        1.67, gt=0.0, le=10.0, allow_inf_nan=False, description="Attention contrast c (1 = none)."
    )
    per_head: bool = Field(False, description="Q-Align only: one query-query mapping per attention head.")
    align_steps_fine: StepRange = Field(
        (10, 90),
        description="Steps [start, end) aligned at the finest token grid (64x64 for SD 1.5). "
        + SCHEDULE_UNITS,
        json_schema_extra=_step_range_schema,
    )
    align_steps_coarse: StepRange = Field(
        (10, 70),
        description="Steps [start, end) aligned at the second-finest grid (32x32 for SD 1.5). "
        + SCHEDULE_UNITS,
        json_schema_extra=_step_range_schema,
    )
    adain: AdainMode = Field(
        "masked",
        description="AdaIN of the output toward the appearance: within self-segmented object masks "
        "(CIA's default; plain when no object is found), over the whole latent, or none.",
    )
    adain_steps: StepRange = Field(
        (20, 100),
        description="Steps [start, end) after which AdaIN is applied. " + SCHEDULE_UNITS,
        json_schema_extra=_step_range_schema,
    )
    size: int | None = Field(
        None,
        ge=MIN_SIZE,
        le=MAX_SIZE,
        multiple_of=SIZE_UNIT,
        description="The output's longer side in pixels; default the model's native size (512 for "
        "SD 1.5, 1024 for SDXL). The model narrows the range: a multiple of its unit (64 px for SD 1.5, "
        "32 for SDXL) up to twice its native size (1024 for SD 1.5, 1536 for SDXL). The shorter side "
        "follows `aspect`.",
    )
    aspect: Literal["structure", "square"] = Field(
        "structure",
        description="Output shape: `structure` keeps the structure image's aspect ratio (between 1:2 "
        "and 2:1; beyond, it is centre-cropped to 2:1 and the result says so), the shorter side "
        "rounded to the model's unit (64 px for SD 1.5, 32 for SDXL); `square` centre-crops to a square, as "
        "Cross-Image Attention does.",
    )
    output_format: ImageFormat = Field("png", description="Encoding of the result image.")

    @field_validator("align_steps_fine", "align_steps_coarse", "adain_steps")
    @classmethod
    def _check_range(cls, value: StepRange) -> StepRange:
        start, end = value
        if not 0 <= start <= end <= 100:
            raise ValueError(f"must be [start, end) with 0 <= start <= end <= 100; got {start}, {end}")
        return value

    @property
    def effective_prompt(self) -> str:
        return self.prompt if self.prompt is not None else f"A photo of a {self.domain}"

    @property
    def content_type(self) -> str:
        return f"image/{self.output_format}"
