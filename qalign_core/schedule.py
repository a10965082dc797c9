"""When each part of the method acts during denoising: Cross-Image Attention's schedule, scaled.

Schedule parameters are given in CIA's units: steps of a 100-step run, counted from the first
denoising step (``skip_steps`` counts from the noisiest step). For ``steps = T`` every value is
scaled by ``T / 100`` and rounded half up, so a caller who changes only ``steps`` keeps the same
fractions of the trajectory, and at ``T = 100`` the schedule is exactly CIA's.

Denoising runs ``D = T - skip`` iterations ``n = 0..D-1``. CIA's attention layers read a step
counter that its callback updates *after* each iteration, so at iteration ``n`` they see
``c(n) = max(n - 1, 0)``; guidance and AdaIN use ``n`` itself. See docs/algorithm.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qalign_schema.params import TransferParams

#: The step count CIA's published values are given for.
REFERENCE_STEPS = 100

StepRange = tuple[int, int]


def scale_step(value: int, steps: int) -> int:
    """``value * steps / 100`` rounded half up (exact integer arithmetic, no float ties)."""
    return (2 * value * steps + REFERENCE_STEPS) // (2 * REFERENCE_STEPS)


def layer_counter(iteration: int) -> int:
    """The step counter CIA's attention layers see at ``iteration``: the previous one's, 0 at first."""
    return max(iteration - 1, 0)


@dataclass(frozen=True)
class DenoiseSchedule:
    """The schedule of one run, in iterations of that run (all ranges are [start, end) unless noted)."""

    steps: int
    skip: int
    #: Counter ranges in which row OUT is aligned, by grid level (0 = finest token grid).
    align: tuple[StepRange, ...]
    #: Counters at which aligned calls inject the structure's keys and values instead.
    injection: frozenset[int]
    #: Iterations with swap guidance, inclusive at both ends (CIA's ``start <= i <= end``).
    guidance: StepRange
    adain: StepRange

    @classmethod
    def build(
        cls,
        steps: int,
        skip_steps: int,
        align: tuple[StepRange, ...],
        adain: StepRange,
        injection_every: int = 5,
        injection_before: int = 40,
    ) -> DenoiseSchedule:
        """Scale CIA-unit values (see the module docstring) to a run of ``steps`` steps."""
        if steps < 2:
            raise ValueError(f"steps must be at least 2; got {steps}")
        skip = min(scale_step(skip_steps, steps), steps - 1)  # at least one denoising iteration

        def scaled(r: StepRange) -> StepRange:
            return scale_step(r[0], steps), scale_step(r[1], steps)

        ranges = tuple(scaled(r) for r in align)
        injection = (
            frozenset(scale_step(k, steps) for k in range(0, injection_before, injection_every))
            if injection_every > 0
            else frozenset()
        )
        guidance = (min(r[0] for r in ranges), max(r[1] for r in ranges)) if ranges else (1, 0)
        return cls(steps, skip, ranges, injection, guidance, scaled(adain))

    @property
    def iterations(self) -> int:
        return self.steps - self.skip

    def mode(self, level: int, iteration: int) -> str | None:
        """``"align"``, ``"inject"`` or None (plain attention) for row OUT at a grid level."""
        if level >= len(self.align):
            return None
        counter = layer_counter(iteration)
        start, end = self.align[level]
        if not start <= counter < end:
            return None
        return "inject" if counter in self.injection else "align"

    def any_mixed(self, iteration: int) -> bool:
        """Whether any layer changes row OUT at this iteration (else the swap pass equals the plain one)."""
        return any(self.mode(level, iteration) for level in range(len(self.align)))

    def guided(self, iteration: int) -> bool:
        return self.guidance[0] <= iteration <= self.guidance[1]

    def adain_after(self, iteration: int) -> bool:
        return self.adain[0] <= iteration < self.adain[1]

    @property
    def segmentation_iteration(self) -> int:
        """The iteration whose attention maps masked AdaIN segments (CIA: counter = AdaIN start - 1)."""
        return self.adain[0]

    def listing(self) -> dict[str, list[int]]:
        """Iterations of each kind, for tests and docs: which ones align, inject, guide, apply AdaIN."""
        every = range(self.iterations)
        return {
            "aligned_fine": [n for n in every if self.mode(0, n) == "align"],
            "aligned_coarse": [n for n in every if self.mode(1, n) == "align"],
            "injected": [n for n in every if "inject" in (self.mode(0, n), self.mode(1, n))],
            "guided": [n for n in every if self.guided(n)],
            "adain": [n for n in every if self.adain_after(n)],
        }


def schedule_for(
    params: TransferParams, injection_every: int = 5, injection_before: int = 40
) -> DenoiseSchedule:
    """A request's schedule in iterations of its own run."""
    return DenoiseSchedule.build(
        params.steps,
        params.skip_steps,
        (params.align_steps_fine, params.align_steps_coarse),
        params.adain_steps,
        injection_every=injection_every,
        injection_before=injection_before,
    )
