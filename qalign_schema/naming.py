"""Where a job's results are written: one naming scheme for the client, the CLI and the page.

A target is a file name or an existing directory. A file name is used as it is for one result; for
several, ``-0``, ``-1``, ... go between its stem and its suffix, beside it (``out.png`` ->
``out-0.png``, ``out-1.png``). An existing directory receives ``<default stem>.<ext>`` (one result)
or ``<default stem>-<k>.<ext>`` (several); the page's downloads use the same names with the
default stem ``qalign-<job id>``. No directory is ever created from a file name.
"""

from __future__ import annotations

from pathlib import Path


def result_extension(content_type_or_format: str) -> str:
    """The file extension of a result: ``image/jpeg`` or ``jpeg`` -> ``jpg``, ``image/png`` -> ``png``."""
    subtype = content_type_or_format.rsplit("/", 1)[-1].split(";", 1)[0].strip().lower()
    return "jpg" if subtype == "jpeg" else subtype


def default_result_stem(job_id: str | None) -> str:
    """The stem of results written into a directory: ``qalign-<job id>`` (``qalign`` without a job)."""
    return "qalign" if job_id is None else f"qalign-{job_id}"


def result_file_paths(target: Path, extensions: list[str], default_stem: str) -> list[Path]:
    """One path per result (``extensions``: each result's file extension, see the module docstring).

    Numbered names of a file name without a suffix get the result's extension (``out`` ->
    ``out-0.png``); one result is written to the file name exactly as given."""
    count = len(extensions)
    if target.is_dir():
        names = [default_stem] if count == 1 else [f"{default_stem}-{k}" for k in range(count)]
        return [target / f"{name}.{ext}" for name, ext in zip(names, extensions, strict=True)]
    if count == 1:
        return [target]
    return [
        target.with_name(f"{target.stem}-{k}{target.suffix or '.' + ext}") for k, ext in enumerate(extensions)
    ]
