"""``qalign``: run a transfer, build the tiny test model, serve the API, run a worker.

Errors are one line on stderr and a non-zero exit; no traceback for anything the user gave.
"""

from __future__ import annotations

import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from pydantic import ValidationError

from qalign_core.errors import QAlignError
from qalign_core.params import DTYPE_NAMES, MAX_APPEARANCES, MAX_ASPECT_RATIO, TransferParams
from qalign_schema.naming import default_result_stem, result_extension, result_file_paths
from qalign_schema.params import IMAGE_FORMATS

if TYPE_CHECKING:  # the heavy modules load only in the commands that use them (a quick --help)
    from PIL import Image

    import qalign_client
    from qalign_core.backbones import Backbone
    from qalign_core.pipeline import QAlignPipeline
    from qalign_core.segmentation import ObjectMasks
    from qalign_schema import JobOut

#: A command function; the option decorators return it unchanged, with its options attached.
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> typing.NoReturn:
    click.echo(f"qalign: error: {message}", err=True)
    sys.exit(code)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per problem: which field, what is allowed, what was given."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "parameters"
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{field}: {message} (got {error.get('input')!r})" if error["loc"] else message)
    return "; ".join(parts)


def _param_options(func: F) -> F:
    """One CLI option per TransferParams field, so the CLI can never fall behind the model."""
    for name, info in reversed(TransferParams.model_fields.items()):
        flag = "--" + name.replace("_", "-")
        annotation = info.annotation
        kwargs: dict[str, Any] = {"default": None, "help": info.description}
        if annotation is bool:
            func = click.option(f"{flag}/--no-{name.replace('_', '-')}", name, **kwargs)(func)
            continue
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["type"] = click.Choice(typing.get_args(annotation))
        elif typing.get_origin(annotation) is tuple:
            kwargs.update(type=int, nargs=2, metavar="START END")
        elif annotation is float:
            kwargs["type"] = float
        elif annotation in (int, int | None):
            kwargs["type"] = int
        func = click.option(flag, name, **kwargs)(func)
    return func


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Q-Align zero-shot appearance transfer."""


def _image_option(name: str, help_text: str, required: bool = True) -> Callable[[F], F]:
    return click.option(
        f"--{name}", required=required, type=click.Path(dir_okay=False, path_type=Path), help=help_text
    )


def _model_options(func: F) -> F:
    func = click.option("--dtype", default=None, type=click.Choice(["auto", *DTYPE_NAMES]))(func)
    func = click.option("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if present).")(func)
    return click.option(
        "--model",
        default=None,
        help="Hugging Face id or model directory (default: SD 1.5, or $QALIGN_MODEL).",
    )(func)


def _params(given: dict[str, object]) -> TransferParams:
    try:
        return TransferParams(**{k: v for k, v in given.items() if v is not None and v != ()})
    except ValidationError as exc:
        fail(describe_validation_error(exc))


def _images(*paths: Path) -> list[Image.Image]:
    from qalign_core.images import load_image

    try:
        return [load_image(path) for path in paths]
    except QAlignError as exc:
        fail(str(exc))


def _pipeline(model: str | None, device: str | None, dtype: str | None) -> QAlignPipeline:
    """The local pipeline, with the loading settings the service reads (the library reads none)."""
    import os

    from qalign_core.params import DEFAULT_MODEL
    from qalign_core.pipeline import QAlignPipeline

    _quiet_library_progress_bars()
    try:
        return QAlignPipeline.from_pretrained(
            model or os.environ.get("QALIGN_MODEL") or DEFAULT_MODEL,
            device=device,
            dtype=dtype,
            allow_pickle=os.environ.get("QALIGN_ALLOW_PICKLE_WEIGHTS", "").strip().lower()
            in {"1", "true", "yes", "on"},
            model_config_dir=os.environ.get("QALIGN_MODEL_CONFIG_DIR") or None,
        )
    except (QAlignError, ValueError) as exc:
        fail(str(exc), code=1)


def _server_options(func: F) -> F:
    func = click.option(
        "--api-key",
        envvar="QALIGN_API_KEY",
        default=None,
        help="API key for --server (default: $QALIGN_API_KEY).",
    )(func)
    return click.option(
        "--server",
        envvar="QALIGN_SERVER",
        default=None,
        metavar="URL",
        help="Run on a Q-Align service at URL instead of locally (default: $QALIGN_SERVER).",
    )(func)


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, float], None]]:
    """One bar over all stages, the same for a local run and a run on a server; yields the callback
    that moves it (stage name, fraction 0..1)."""
    from tqdm import tqdm

    with tqdm(total=100, unit="%", bar_format="{desc:<10} {bar} {percentage:3.0f}%") as bar:
        last = [""]

        def progress(stage: str, fraction: float) -> None:
            if stage != last[0]:
                bar.set_description_str(stage)
                last[0] = stage
            bar.n = round(100 * fraction)
            bar.refresh()

        yield progress


def output_paths(output: Path, count: int, output_format: str) -> list[Path]:
    """Where the results of ``count`` appearances of a local run go, named as
    ``qalign_schema.naming`` says for every client: OUTPUT itself for one; out.png -> out-0.png,
    out-1.png, ... for several; an existing directory receives qalign[-<k>].EXT."""
    extension = result_extension(output_format)
    return result_file_paths(output, [extension] * count, default_result_stem(None))


def _describe_outputs(paths: list[Path]) -> str:
    return str(paths[0]) if len(paths) == 1 else f"{len(paths)} results: " + ", ".join(map(str, paths))


@cli.command()
@_image_option("structure", "Structure image (its layout; the output keeps its shape, see --aspect).")
@click.option(
    "--appearance",
    "appearances",
    required=True,
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help=f"Appearance image; repeat for several looks of one structure (1 to {MAX_APPEARANCES}, "
    "one job, one result each, in order).",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Result image path (its suffix sets the format). With several --appearance: out.png becomes "
    "out-0.png, out-1.png, ... beside it, in the appearances' order. An existing directory receives "
    "qalign-<job id>.png (qalign-<job id>-0.png, ... for several; qalign[-k].png on a local run).",
)
@click.option(
    "--save-masks",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory for masked AdaIN's object masks (mask_structure.png, mask_appearance.png; with "
    "several --appearance, mask_appearance-0.png, mask_appearance-1.png, ...).",
)
@_server_options
@_model_options
@_param_options
def transfer(
    structure: Path,
    appearances: tuple[Path, ...],
    output: Path,
    save_masks: Path | None,
    server: str | None,
    api_key: str | None,
    model: str | None,
    device: str | None,
    dtype: str | None,
    **given: object,
) -> None:
    """Give STRUCTURE's layout the look of each APPEARANCE and write the results to OUTPUT.

    Runs locally, or on a Q-Align service with --server (through the Python client). Several
    --appearance make one job: the structure is inverted once, one result per appearance."""
    if not 1 <= len(appearances) <= MAX_APPEARANCES:
        fail(f"--appearance: 1 to {MAX_APPEARANCES} images per run; got {len(appearances)}")
    params = _params(given)
    if params.output_format == "png" and given.get("output_format") is None:
        suffix = output.suffix.lower().lstrip(".")
        fmt = "jpeg" if suffix == "jpg" else suffix
        if fmt in IMAGE_FORMATS:
            params = params.model_copy(update={"output_format": fmt})
    target = output if output.is_dir() else output.parent
    if not target.is_dir():
        fail(f"output directory {str(target)!r} does not exist")
    outputs = output_paths(output, len(appearances), params.output_format)
    if server:
        local_only = {"--model": model, "--device": device, "--dtype": dtype, "--save-masks": save_masks}
        named = [flag for flag, value in local_only.items() if value is not None]
        if named:
            fail(f"{', '.join(named)}: only for local runs (the server uses its own model)")
        _transfer_on_server(server, api_key, structure, list(appearances), output, params)
        return
    images = _images(structure, *appearances)
    pipe = _pipeline(model, device, dtype)

    looks = images[1] if len(images) == 2 else images[1:]  # one image, or the list of them
    try:
        with _progress_bar() as progress:
            result = pipe.transfer(images[0], looks, params, progress=progress)
    except (QAlignError, ValueError) as exc:
        fail(str(exc), code=1)
    encoded = result.encode_all() if len(outputs) > 1 else [result.encode()]
    try:
        for path, data in zip(outputs, encoded, strict=True):
            path.write_bytes(data)
    except OSError as exc:
        fail(f"cannot write {str(exc.filename or output)!r}: {exc.strerror or exc}", code=1)
    click.echo(
        f"wrote {_describe_outputs(outputs)} ({result.image.width}x{result.image.height}, "
        f"{result.timings['total_s']:.1f} s)"
    )
    _say_aspect_clamped(result.shape.clamped)
    _say_model(pipe.backbone)
    masks = result.object_masks  # one per appearance (None where masked AdaIN did not run)
    for k, pair in enumerate(masks):
        if pair is not None and not pair.found:
            which = f" for result {k}" if len(masks) > 1 else ""
            click.echo(f"masked AdaIN fell back to plain AdaIN{which}: {pair.reason}")
    if save_masks is not None:
        _write_masks(save_masks, masks, result.image.size)


def _say_model(backbone: Backbone) -> None:
    """Which backbone ran and the sizes it takes: what --size may be for this model."""
    click.echo(
        f"model: {backbone.title}, native {backbone.native_size} px; --size takes a multiple of "
        f"{backbone.size_unit} from {backbone.min_size} to {backbone.max_size}"
    )


def _say_aspect_clamped(clamped: bool | None) -> None:
    if clamped:
        click.echo(
            f"the structure image is more elongated than {MAX_ASPECT_RATIO:g}:1: it was centre-cropped "
            "to that ratio first"
        )


def _transfer_on_server(
    server: str,
    api_key: str | None,
    structure: Path,
    appearances: list[Path],
    output: Path,
    params: TransferParams,
) -> None:
    """The same transfer through qalign_client: submit, follow the events stream with the progress
    bar, download each result. Ctrl-C cancels the job on the server."""
    import qalign_client

    inputs: list[bytes] = []
    for path in (structure, *appearances):
        try:
            inputs.append(path.read_bytes())
        except OSError as exc:
            fail(f"cannot read image file {str(path)!r}: {exc.strerror or exc}")
    looks = inputs[1] if len(inputs) == 2 else inputs[1:]  # one image, or the list of them
    job: JobOut | None = None
    outputs: list[Path] = []
    try:
        with qalign_client.Client(server, api_key) as client:
            try:
                job = client.submit(inputs[0], looks, params)
                with _progress_bar() as progress:
                    job = _follow(client, job, progress)
            except KeyboardInterrupt:
                if job is not None:
                    client.cancel(job)
                    fail(f"interrupted: canceled job {job.id} on the server", code=130)
                raise
            if job.status != "succeeded":
                reason = f": {job.error.type}: {job.error.detail}" if job.error else ""
                fail(f"job {job.id} {job.status}{reason}", code=1)
            outputs = client.results(job, output)
    except qalign_client.QAlignError as exc:
        fail(_client_error_line(exc, server), code=1)
    except ValueError as exc:  # the service listed another number of results than appearances sent
        fail(str(exc), code=1)
    except OSError as exc:
        fail(f"cannot write {str(exc.filename or output)!r}: {exc.strerror or exc}", code=1)
    assert job is not None and job.result is not None
    total = job.metrics.total_s
    took = f", {total:.1f} s" if total is not None else ""
    click.echo(
        f"wrote {_describe_outputs(outputs)} ({job.result.width}x{job.result.height}{took}; job {job.id})"
    )
    _say_aspect_clamped(job.output.aspect_clamped if job.output is not None else None)
    fell_back = [k for k, item in enumerate(job.results or [job.result]) if item.adain_applied == "plain"]
    if job.params.adain == "masked" and (fell_back or job.metrics.adain_applied == "plain"):
        which = f" for result {', '.join(map(str, fell_back))}" if len(outputs) > 1 and fell_back else ""
        click.echo(f"masked AdaIN fell back to plain AdaIN{which}: no object found")


def _follow(client: qalign_client.Client, job: JobOut, progress: Callable[[str, float], None]) -> JobOut:
    """Move the bar from the job's events stream until the job ends; poll a server without one."""
    from qalign_client import NotFoundError

    try:
        for event in client.stream(job):
            progress(event.job.stage, event.job.progress)
            if event.terminal:
                return event.job
    except NotFoundError:
        client.get(job)  # the job exists (else this raises): the server has no events stream
    return client.wait(job, on_progress=lambda current: progress(current.stage, current.progress))


def _client_error_line(exc: qalign_client.QAlignError, server: str) -> str:
    """One line from the service's problem details (or from the transport failure)."""
    if exc.problem is None:
        return str(exc)
    return f"{server} refused the request ({exc.status} {exc.title}): {exc.detail}"


def _write_masks(directory: Path, masks: Sequence[ObjectMasks | None], size: tuple[int, int]) -> None:
    """Save masked AdaIN's object masks as black/white PNGs at the result's size: the structure's
    (shared by every pair), and each appearance's (mask_appearance.png, or mask_appearance-K.png with
    several appearances)."""
    from PIL import Image

    structure = next(
        (pair.structure for pair in masks if pair is not None and pair.structure is not None), None
    )
    if structure is None:
        fail("no object masks to save: they exist only with --adain masked (the default)", code=1)
    named = [("mask_structure.png", structure)]
    for k, pair in enumerate(masks):
        if pair is not None and pair.appearance is not None:
            named.append((f"mask_appearance{'' if len(masks) == 1 else f'-{k}'}.png", pair.appearance))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, mask in named:
            image = Image.fromarray(mask.cpu().numpy().astype("uint8") * 255).resize(
                size, Image.Resampling.NEAREST
            )
            image.save(directory / name)
    except OSError as exc:
        fail(f"cannot write masks to {str(directory)!r}: {exc.strerror or exc}")
    click.echo(f"wrote object masks to {directory}")


@cli.command()
@_image_option("structure", "Structure image.")
@_image_option("appearance", "Appearance image.")
@_image_option("structure-mask", "Object mask of the structure image (white = object).")
@_image_option("appearance-mask", "Object mask of the appearance image (white = object).")
@_model_options
@_param_options
def leakage(
    structure: Path,
    appearance: Path,
    structure_mask: Path,
    appearance_mask: Path,
    model: str | None,
    device: str | None,
    dtype: str | None,
    **given: object,
) -> None:
    """Attention leakage of Q-Align and of Cross-Image Attention on one pair (lower is better).

    The mean, over every aligned layer call of a run, of the attention mass that object queries put
    on appearance-background tokens. Both methods run with the same parameters and seed.
    """
    params = _params(given)
    images = _images(structure, appearance, structure_mask, appearance_mask)
    pipe = _pipeline(model, device, dtype)
    for method in ("qalign", "cross_image"):
        try:
            result = pipe.transfer(
                images[0],
                images[1],
                params.model_copy(update={"method": method}),
                object_masks=(images[2], images[3]),
            )
        except (QAlignError, ValueError) as exc:
            fail(str(exc), code=1)
        if result.mean_leakage is None:
            fail("no aligned layer call saw an object: check the masks and the alignment step ranges", code=1)
        click.echo(
            f"{method}: leakage {result.mean_leakage:.4f} over {len(result.leakage_log)} aligned calls"
        )


def _quiet_library_progress_bars() -> None:
    """Our own bar is the one progress display; the loaders' per-shard bars are noise here."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


@cli.command("make-tiny-model")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--single-file",
    is_flag=True,
    help="Also write DIRECTORY/tiny.safetensors (SD's original one-file layout) and DIRECTORY/config "
    "(configs and tokenizer, no weights): QALIGN_MODEL and QALIGN_MODEL_CONFIG_DIR for the single-file path.",
)
@click.option(
    "--backbone",
    type=click.Choice(["sd15", "sdxl"]),
    default="sd15",
    show_default=True,
    help="The architecture's shape: SD 1.5's, or SDXL's (two text encoders, micro-conditioning).",
)
def make_tiny_model(directory: Path, single_file: bool, backbone: str) -> None:
    """Write a tiny random-weight model in SD 1.5's or SDXL's shape to DIRECTORY (tests, offline demos)."""
    from qalign_core.testing import save_tiny_model

    if single_file and backbone != "sd15":
        fail("--single-file writes SD 1.5's original layout only; drop it for --backbone sdxl")
    try:
        save_tiny_model(directory, backbone=backbone)
        if single_file:
            from qalign_core.loading import save_single_file

            save_single_file(directory, directory / "tiny.safetensors", config_dir=directory / "config")
    except OSError as exc:
        fail(f"cannot write {str(directory)!r}: {exc.strerror or exc}")
    click.echo(f"wrote tiny {backbone} model to {directory}")
    if single_file:
        click.echo(f"wrote {directory / 'tiny.safetensors'} and its config directory {directory / 'config'}")


@cli.command("hash-key")
@click.argument("name", default="client")
def hash_key_command(name: str) -> None:
    """Print a new API key and the QALIGN_API_KEYS entry (NAME:sha256) that accepts it."""
    from service.auth import hash_key, new_key

    key = new_key()
    click.echo(f"key:   {key}")
    click.echo(f"entry: {name}:{hash_key(key)}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, type=int, show_default=True)
@click.option(
    "--workers", default=1, type=click.IntRange(1, 64), show_default=True,
    help="API processes (distributed mode only; embedded mode is one process).",
)  # fmt: skip
@click.option(
    "--timeout-graceful-shutdown", "graceful_shutdown_s", default=30, type=click.IntRange(0, 3600),
    show_default=True, help="Seconds running requests get to finish after SIGTERM.",
)  # fmt: skip
def serve(host: str, port: int, workers: int, graceful_shutdown_s: int) -> None:
    """Run the HTTP API (embedded mode, with an in-process worker, when QALIGN_REDIS_URL is unset),
    with the header, timeout and connection limits of the QALIGN_* settings."""
    from service.cli import serve as run_server

    run_server(host, port, workers=workers, graceful_shutdown_s=graceful_shutdown_s)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery GPU worker (extra arguments go to Celery)."""
    from worker.cli import run_worker

    run_worker(list(ctx.args))


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="huggingface_hub")
    cli(prog_name="qalign")


if __name__ == "__main__":
    main()
