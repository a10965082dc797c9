"""Per-request parameters of a transfer, with the spec's defaults and validated ranges.

One model serves the library, the CLI and the HTTP API, so a value refused in one place is refused
with the same message everywhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

StepRange = tuple[int, int]

MAX_STEPS = 1000


class TransferParams(BaseModel):
    """Everything a caller may set for one transfer (see docs/algorithm.md for what each does)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["qalign", "cross_image"] = Field(
        "qalign", description="Attention method: Q-Align (default) or the Cross-Image Attention baseline."
    )
    steps: int = Field(100, ge=2, le=MAX_STEPS, description="DDPM steps T of inversion and denoising.")
    skip_steps: int = Field(
        32,
        ge=0,
        lt=MAX_STEPS,
        description="Leading (noisiest) steps skipped; denoising runs steps skip_steps..T-1.",
    )
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the inversion noise.")
    domain: str = Field(
        "object", min_length=1, max_length=64, description='Prompt subject: "A photo of a {domain}".'
    )
    prompt: str | None = Field(
        None, min_length=1, max_length=300, description="Full prompt; replaces the domain prompt when given."
    )
    swap_guidance_scale: float = Field(
        3.5, ge=0.0, le=20.0, allow_inf_nan=False, description="Swap guidance s at the first run step."
    )
    contrast_strength: float = Field(
        1.67, gt=0.0, le=10.0, allow_inf_nan=False, description="Attention contrast c (1 = none)."
    )
    per_head: bool = Field(False, description="Q-Align only: one query-query mapping per attention head.")
    align_steps_fine: StepRange = Field(
        (10, 90), description="Steps [start, end) aligned at the finest token grid (64x64 for SD 1.5)."
    )
    align_steps_coarse: StepRange = Field(
        (10, 70), description="Steps [start, end) aligned at the second-finest grid (32x32 for SD 1.5)."
    )
    adain: bool = Field(True, description="AdaIN of the output latent toward the appearance latent.")
    adain_steps: StepRange = Field((20, 100), description="Steps [start, end) after which AdaIN is applied.")
    size: int | None = Field(
        None,
        ge=64,
        le=1024,
        multiple_of=64,
        description="Output side in pixels; default the model's native size.",
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="Encoding of the result image.")

    @model_validator(mode="after")
    def _check_consistency(self) -> TransferParams:
        if self.skip_steps >= self.steps:
            raise ValueError(f"skip_steps must be less than steps ({self.steps}); got {self.skip_steps}")
        for name in ("align_steps_fine", "align_steps_coarse", "adain_steps"):
            start, end = getattr(self, name)
            if not 0 <= start <= end <= MAX_STEPS:
                raise ValueError(
                    f"{name} must be [start, end) with 0 <= start <= end <= {MAX_STEPS}; got {start}, {end}"
                )
        return self

    @property
    def effective_prompt(self) -> str:
        return self.prompt if self.prompt is not None else f"A photo of a {self.domain}"

    @property
    def content_type(self) -> str:
        return f"image/{self.output_format}"
