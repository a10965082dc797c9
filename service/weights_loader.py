"""Fill the model volume once, before any worker starts (the Kubernetes weights-loader Job).

Workers run with ``HF_HUB_OFFLINE=1`` and mount the volume read-only, so a scale-up never
downloads. ``python -m service.weights_loader SOURCE`` takes either a Hugging Face id (downloaded
into the Hugging Face cache under ``HF_HOME``, so ``QALIGN_MODEL`` stays the id) or an
``s3://bucket/prefix`` (every object under the prefix copied into ``--dest``, so ``QALIGN_MODEL``
is that directory). Files already present with the same size are skipped: a rerun is cheap.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath


def split_s3_uri(uri: str) -> tuple[str, str]:
    """(bucket, prefix) of ``s3://bucket/prefix``; the prefix without slashes around it."""
    rest = uri.removeprefix("s3://")
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket; give s3://bucket/prefix")
    return bucket, prefix.strip("/")


def copy_s3_prefix(uri: str, dest: Path, endpoint_url: str | None = None) -> list[Path]:
    """Copy every object under ``uri`` into ``dest`` (keys relative to the prefix); the files written."""
    import boto3

    bucket, prefix = split_s3_uri(uri)
    client = boto3.client("s3", endpoint_url=endpoint_url)
    written: list[Path] = []
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for entry in page.get("Contents", []):
            relative = (
                PurePosixPath(entry["Key"]).relative_to(prefix) if prefix else PurePosixPath(entry["Key"])
            )
            if ".." in relative.parts or relative.is_absolute():
                raise ValueError(f"object key {entry['Key']!r} leaves the destination directory")
            target = dest.joinpath(*relative.parts)
            if target.is_file() and target.stat().st_size == entry["Size"]:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            client.download_file(bucket, entry["Key"], str(partial))
            partial.replace(target)  # a crash never leaves a truncated file under the real name
            written.append(target)
    return written


def download_hub(model_id: str) -> Path:
    """The Hugging Face snapshot of ``model_id`` in the cache (HF_HOME), downloaded if missing."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model_id))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.weights_loader", description=__doc__)
    parser.add_argument("source", help="a Hugging Face id, or s3://bucket/prefix")
    parser.add_argument("--dest", type=Path, help="directory for an s3:// source (e.g. /models/sd15)")
    parser.add_argument("--endpoint-url", help="S3-compatible endpoint (MinIO); default AWS")
    args = parser.parse_args(argv)
    if args.source.startswith("s3://"):
        if args.dest is None:
            parser.error("an s3:// source needs --dest (the directory QALIGN_MODEL will name)")
        written = copy_s3_prefix(args.source, args.dest, args.endpoint_url)
        print(f"{len(written)} files copied to {args.dest}; set QALIGN_MODEL={args.dest}")
    else:
        path = download_hub(args.source)
        print(f"{args.source} is in the cache at {path}; QALIGN_MODEL={args.source} loads it offline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
