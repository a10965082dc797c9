"""Benchmarks of the Q-Align implementation against plain references, run with ``python -m bench``.

Every benchmark times this project's way and a plain reference in the same process and run, and
reports ratios, because absolute timings on a shared machine are noise; see docs/performance.md.
"""

from __future__ import annotations

BENCHMARKS: tuple[str, ...] = ("layer", "rows", "unet_step", "e2e", "appearances", "kmeans", "sdxl")
