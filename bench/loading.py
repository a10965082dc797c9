"""Model load time and peak RAM: accelerate's low-memory loading against plain loading, and one file.

    python -m bench.loading                 # the tiny model
    python -m bench.loading --shape sd15    # SD 1.5's shapes with random float16 weights (~4 GB RAM)

Each variant loads in a fresh interpreter (bench.common.run_child), so no earlier variant's
allocations or high-water mark count against it. Measured: wall time of the load and the RSS
high-water mark above the RSS after the imports (what the weights cost, not the libraries).

Variants:
  plain        the components with ``low_cpu_mem_usage=False``: modules built with random weights,
               then overwritten from the checkpoint (what loading did without accelerate);
  accelerate   ``QAlignPipeline.from_pretrained`` on the diffusers directory (accelerate installed:
               modules built on the meta device and filled from the checkpoint);
  single-file  ``QAlignPipeline.from_pretrained`` on the same weights as one ``.safetensors`` file
               in SD's original layout, converted by diffusers while loading.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("plain", "accelerate", "single-file")


def _measure(variant: str, model_dir: str, single_file: str, config_dir: str, dtype: str) -> dict:
    import diffusers  # noqa: F401  (imports before the baseline: the weights are what we measure)
    import torch
    import transformers  # noqa: F401

    from bench.common import current_rss_bytes, peak_rss_bytes, reset_peak_rss
    from qalign_core.pipeline import QAlignPipeline

    torch_dtype = getattr(torch, dtype)
    base = current_rss_bytes()
    reset_peak_rss()
    started = time.perf_counter()
    if variant == "plain":
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        kwargs = {"torch_dtype": torch_dtype, "low_cpu_mem_usage": False, "use_safetensors": True}
        parts = [
            UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet", **kwargs),
            AutoencoderKL.from_pretrained(model_dir, subfolder="vae", **kwargs),
        ]
        try:
            parts.append(CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder", **kwargs))
        except TypeError:  # releases that always load low-memory take no such argument
            parts.append(CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder"))
    elif variant == "accelerate":
        QAlignPipeline.from_pretrained(model_dir, device="cpu", dtype=torch_dtype)
    else:
        QAlignPipeline.from_pretrained(
            single_file, device="cpu", dtype=torch_dtype, model_config_dir=config_dir
        )
    elapsed = time.perf_counter() - started
    return {
        "variant": variant,
        "load_s": round(elapsed, 2),
        "peak_mib": round((peak_rss_bytes() - base) / 2**20),
    }


def _prepare(shape: str, root: Path) -> tuple[str, str, str, str, float]:
    from qalign_core.loading import save_single_file

    if shape == "sd15":
        import torch

        from bench.sd15 import save_sd15_model

        model_dir, dtype = save_sd15_model(root / "sd15", dtype=torch.float16), "float16"
    else:
        from qalign_core.testing import save_tiny_model

        model_dir, dtype = save_tiny_model(root / "tiny"), "float32"
    single = save_single_file(model_dir, root / "model.safetensors", config_dir=root / "config")
    size_mib = single.stat().st_size / 2**20
    return str(model_dir), str(single), str(root / "config"), dtype, size_mib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loading", description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=("tiny", "sd15"), default="tiny")
    parser.add_argument("--repeats", type=int, default=1, help="loads per variant (median reported)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_measure(**json.loads(args.child))))
        return
    from bench.common import run_child

    with tempfile.TemporaryDirectory(prefix="qalign-bench-load-") as tmp:
        model_dir, single, config, dtype, size_mib = _prepare(args.shape, Path(tmp))
        print(f"shape {args.shape}, dtype {dtype}, checkpoint {size_mib:.0f} MiB", file=sys.stderr)
        rows = []
        for variant in VARIANTS:
            runs = []
            for _ in range(args.repeats):
                payload = {
                    "variant": variant,
                    "model_dir": model_dir,
                    "single_file": single,
                    "config_dir": config,
                    "dtype": dtype,
                }
                runs.append(json.loads(run_child("bench.loading", "--child=" + json.dumps(payload))))
            runs.sort(key=lambda r: r["load_s"])
            rows.append(runs[len(runs) // 2] | {"peak_mib_max": max(r["peak_mib"] for r in runs)})
    print(f"| variant | load s | peak RSS above imports, MiB | (checkpoint {size_mib:.0f} MiB, {dtype}) |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['load_s']} | {row['peak_mib']} | |")


if __name__ == "__main__":
    main()
