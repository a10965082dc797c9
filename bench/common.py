"""Shared helpers: timing with medians, memory high-water marks, the result record and the table.

A comparison is one line of the table: a metric of this project's way, the same metric of the plain
reference measured in the same run, and their ratio (project / reference; below 1 is better).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def sync(device: torch.device | str) -> None:
    """Wait for queued GPU work, so wall-clock time covers the kernels and not just their launch."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Seconds of one call, synchronised on CUDA."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def time_interleaved(
    variants: dict[str, Callable[[], Any]], device: torch.device | str, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Time each variant ``repeats`` times, interleaved (A B C, B C A, ...) so load drift hits all alike.

    The machine is shared: interleaving plus medians keep the ratios meaningful where absolute
    times are not.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            times[name].append(time_call(variants[name], device))
    return times


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def ratio(ours: float | None, reference: float | None) -> float | None:
    """ours / reference, or None where it is undefined (so JSON never holds inf or nan)."""
    if ours is None or reference is None or not reference or math.isnan(ours) or math.isnan(reference):
        return None
    return ours / reference


def comparison(
    case: str,
    metric: str,
    unit: str,
    ours: float | None,
    reference: float | None,
    *,
    ours_label: str = "qalign",
    reference_label: str = "plain",
    target_max: float | None = None,
    target_text: str | None = None,
) -> dict[str, Any]:
    """One table line; ``met`` is judged on the ratio against ``target_max`` when a target applies."""
    value = ratio(ours, reference)
    met = None if target_max is None or value is None else value <= target_max
    return {
        "case": case,
        "metric": metric,
        "unit": unit,
        "ours_label": ours_label,
        "reference_label": reference_label,
        "ours": ours,
        "reference": reference,
        "ratio": value,
        "target": target_text or (None if target_max is None else f"<= {target_max:g}"),
        "met": met,
    }


# ------------------------------------------------------------------ memory
def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux >= 4.0); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


def current_rss_bytes() -> int:
    kb = _status_kb("VmRSS")
    return kb * 1024 if kb is not None else 0


def peak_rss_bytes() -> int:
    """High-water RSS: VmHWM (resettable) or ru_maxrss where /proc is unavailable."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb * 1024


def run_child(module: str, payload: str, timeout: float = 900.0) -> str:
    """Run ``python -m module payload`` in a fresh interpreter and return its last stdout line.

    A fresh process per measured variant means no allocator cache or earlier peak from another
    variant can hide or inflate its memory.
    """
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-m", module, payload],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{module} {payload} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout.strip().splitlines()[-1]


# ------------------------------------------------------------------ shared fixtures
@cache
def tiny_model_dir() -> str:
    """The project's tiny random-weight model, written once per bench process."""
    from qalign_core.testing import save_tiny_model

    return str(save_tiny_model(Path(tempfile.mkdtemp(prefix="qalign-bench-")) / "tiny"))


def test_images() -> tuple[Any, Any]:
    """Two deterministic, different, non-square RGB images (no files or downloads needed)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:240, 0:320]
    structure = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    appearance = rng.integers(0, 256, size=(300, 260, 3), dtype=np.uint8)
    return Image.fromarray(structure), Image.fromarray(appearance)


def machine_info(device: str) -> dict[str, Any]:
    """Where the figures were taken: CPU model (lscpu), cores, GPU name, library versions."""
    import diffusers
    import transformers

    cpu_model = platform.processor() or "unknown"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu_model": cpu_model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": device,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


# ------------------------------------------------------------------ output
def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if unit == "bytes":
            return f"{value / 2**20:.1f} MiB"
        if unit == "s":
            return f"{value:.4g} s"
        return f"{value:.4g}"
    if isinstance(value, int) and unit == "bytes":
        return f"{value / 2**20:.1f} MiB"
    return str(value)


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Plain-text table of every comparison: project, reference, ratio, target, met."""
    header = ("benchmark", "case", "metric", "project", "reference", "ratio", "target", "met")
    lines = [header]
    for name, result in results.items():
        if "error" in result:
            lines.append((name, "ERROR", result["error"][:60], "", "", "", "", ""))
            continue
        for c in result["comparisons"]:
            lines.append(
                (
                    name,
                    c["case"],
                    c["metric"],
                    f"{_fmt(c['ours'], c['unit'])} ({c['ours_label']})",
                    f"{_fmt(c['reference'], c['unit'])} ({c['reference_label']})",
                    "-" if c["ratio"] is None else f"{c['ratio']:.3f}",
                    c["target"] or "-",
                    _fmt(c["met"]),
                )
            )
    widths = [max(len(str(row[i])) for row in lines) for i in range(len(header))]
    out = [" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)
