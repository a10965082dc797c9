"""``python -m bench``: run the suite, print the table, write JSON to bench/results/<timestamp>.json."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import inspect
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from bench import BENCHMARKS
from bench.common import REPO_ROOT, format_table, machine_info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few repeats and short schedules: a smoke run")
    parser.add_argument(
        "--only", action="append", choices=BENCHMARKS, help="run only this benchmark (repeatable)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--json", type=Path, help="write results here instead of bench/results/<timestamp>.json"
    )
    parser.add_argument(
        "--unet-latents",
        help="unet_step latent sides and repeats, e.g. '64:2,32:3' (default cpu 32:1,16:3; cuda 64:20,32:20)",
    )
    parser.add_argument("--repeats", type=int, help="override the repeats of benchmarks that take them")
    parser.add_argument(
        "--threads", type=int, help="torch CPU threads (a loaded shared box is steadier with fewer)"
    )
    return parser.parse_args(argv)


def _kwargs(name: str, run: Any, args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"device": args.device, "quick": args.quick}
    if args.repeats is not None and "repeats" in inspect.signature(run).parameters:
        kwargs["repeats"] = args.repeats
    if name == "unet_step" and args.unet_latents:
        kwargs["latents"] = tuple(
            (int(side), int(reps))
            for side, reps in (item.split(":") for item in args.unet_latents.split(","))
        )
    return kwargs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device visible to torch", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    started = dt.datetime.now(dt.UTC)
    meta = {
        "started_utc": started.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "machine": machine_info(args.device),
    }
    results: dict[str, dict[str, Any]] = {}
    failed = False
    for name in args.only or BENCHMARKS:
        print(f"[bench] {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(f"bench.{name}")
            results[name] = module.run(**_kwargs(name, module.run, args))
        except Exception as exc:  # one failing benchmark must not lose the others' figures
            failed = True
            traceback.print_exc()
            results[name] = {"name": name, "error": f"{type(exc).__name__}: {exc}"}
        results[name]["wall_s"] = time.perf_counter() - t0
        print(f"[bench] {name} done in {results[name]['wall_s']:.1f} s", flush=True)
    meta["wall_s"] = (dt.datetime.now(dt.UTC) - started).total_seconds()
    path = args.json or REPO_ROOT / "bench" / "results" / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "benchmarks": results}, indent=2, default=str))
    m = meta["machine"]
    gpu = m.get("gpu", "no GPU")
    print(f"\n{m['cpu_model']}, {m['cpu_count']} cores, {gpu}; torch {m['torch']}, {args.device}")
    print("ratio = project / reference (below 1 is better); times are medians of interleaved repeats\n")
    print(format_table(results))
    print(f"\nJSON: {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
