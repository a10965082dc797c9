"""Where input images, result images and cached inversions are kept.

One interface, two implementations: ``S3BlobStore`` (any S3-compatible server through boto3, results
handed out as presigned GET URLs) and ``LocalBlobStore`` (a directory, for the embedded mode). Keys are
built here from job ids and sha256 digests only, never from anything a caller named, and checked
against one pattern, so no key can climb out of its directory or bucket prefix.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

from qalign_schema.params import IMAGE_FORMATS, IMAGE_MEDIA_TYPES

KEY_PATTERN = re.compile(
    r"^(inputs|results|inversions)/[0-9a-f]{32,64}(-r[0-9]{1,2})?(-a[0-9]{1,4})?"
    rf"(\.({'|'.join(IMAGE_FORMATS)}))?$"
)
#: An input reused after this many seconds is rewritten (S3) or touched (local), so that expiry,
#: which goes by the object's age, never removes an input a new job has just started to use.
INPUT_REFRESH_S = 600.0
#: Result file name extension of each output media type.
EXTENSIONS: dict[str, str] = dict(zip(IMAGE_MEDIA_TYPES, IMAGE_FORMATS, strict=True))


class BlobNotFound(KeyError):
    """No object under that key."""


class BlobStoreDown(Exception):
    """The store cannot be reached or written; the API answers 503."""


def input_key(data: bytes) -> str:
    """Inputs are content-addressed: the same image uploaded twice is stored once."""
    return f"inputs/{hashlib.sha256(data).hexdigest()}"


def result_key(job_id: str, content_type: str, attempt: int = 1, index: int = 0) -> str:
    """``results/<id>.<ext>`` for the first result, ``results/<id>-r<k>.<ext>`` for the result of
    appearance k > 0; a later attempt of the same job (a takeover) writes its own objects,
    ``results/<id>[-r<k>]-a<attempt>.<ext>``, so a superseded run's late upload never replaces them."""
    image = f"-r{index}" if index > 0 else ""
    suffix = f"-a{attempt}" if attempt > 1 else ""
    return f"results/{job_id}{image}{suffix}.{EXTENSIONS[content_type]}"


def result_keys(job_id: str, attempts: int, images: int) -> list[str]:
    """Every key a job's runs may have written results under: each attempt, image and format."""
    return [
        result_key(job_id, content_type, attempt, index)
        for attempt in range(1, max(attempts, 1) + 1)
        for index in range(max(images, 1))
        for content_type in EXTENSIONS
    ]


def result_job_id(key: str) -> str:
    """The job id a result key belongs to (any attempt, any image)."""
    return key.split("/")[-1].split(".")[0].split("-")[0]


def inversion_store_key(cache_key: str) -> str:
    """The pipeline's cache keys are opaque strings; hash them into our key space."""
    return f"inversions/{hashlib.sha256(cache_key.encode()).hexdigest()}"


def check_key(key: str) -> str:
    if not KEY_PATTERN.match(key):
        raise ValueError(f"invalid store key {key!r}")
    return key


class BlobStore(ABC):
    @abstractmethod
    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None: ...

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's bytes; raises BlobNotFound."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def presigned_url(self, key: str, ttl: int) -> str | None:
        """A URL anyone can GET for ``ttl`` seconds, or None when the store has none (local);
        BlobStoreDown when it cannot be signed."""

    @abstractmethod
    def local_path(self, key: str) -> Path | None:
        """A file the API can stream directly, or None when the object is remote."""

    @abstractmethod
    def ping(self) -> None:
        """Raise BlobStoreDown when the store cannot be reached."""

    @abstractmethod
    def list_objects(self, folder: str) -> Iterator[tuple[str, float]]:
        """(key, last-modified epoch seconds) of every object under ``folder`` (inputs, results, ...)."""

    @abstractmethod
    def age(self, key: str) -> float | None:
        """Seconds since the object was written, or None when it does not exist."""

    def put_input(self, data: bytes, content_type: str) -> str:
        """Store an input under its digest, unless the store has it, fresh (see INPUT_REFRESH_S).

        The store is asked every time, never this process's memory of earlier submissions: objects
        can be lost behind its back (a storage data loss, an erasure through another API replica),
        and a job accepted on a remembered input would then fail with ``input_missing``. Requests
        with the same image at the same time share one lookup (and one write): a request uses the
        answer of a lookup that started after it arrived, which tells it as much as its own would.
        """
        key = input_key(data)
        flights = self.__dict__.setdefault("_input_flights", InputFlights())
        asked = time.monotonic()
        with flights.join(key) as flight:
            if flight.checked_at is not None and flight.checked_at >= asked:
                return key
            checking = time.monotonic()
            age = self.age(key)
            if age is None or age > INPUT_REFRESH_S:
                self.put(key, data, content_type)
            flight.checked_at = checking
        return key


@dataclass
class InputFlight:
    """The requests storing one input now: one at a time holds ``lock``; ``checked_at`` is when the
    last of them started a lookup that found (or made) the object fresh (``time.monotonic``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    checked_at: float | None = None


class InputFlights:
    """Single flight per input key. An entry lives only while requests for its key overlap, so
    nothing about the store is remembered between submissions that do not."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[str, InputFlight] = {}

    @contextlib.contextmanager
    def join(self, key: str) -> Iterator[InputFlight]:
        """Held while one request looks up and writes ``key``; others with the same key wait."""
        with self._lock:
            flight = self._flights.setdefault(key, InputFlight())
            flight.users += 1
        try:
            with flight.lock:
                yield flight
        finally:
            with self._lock:
                flight.users -= 1
                if flight.users == 0:
                    del self._flights[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)


class LocalBlobStore(BlobStore):
    """Objects as files under ``root``; every write is a temp file in the same directory + rename."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise BlobStoreDown(f"cannot write {key}: {exc}") from exc

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise BlobNotFound(key) from exc
        except OSError as exc:
            raise BlobStoreDown(f"cannot read {key}: {exc}") from exc

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def presigned_url(self, key: str, ttl: int) -> str | None:
        return None

    def local_path(self, key: str) -> Path | None:
        path = self._path(key)
        return path if path.is_file() else None

    def list_objects(self, folder: str) -> Iterator[tuple[str, float]]:
        directory = self.root / folder
        if not directory.is_dir():
            return
        for entry in os.scandir(directory):
            if entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    yield f"{folder}/{entry.name}", entry.stat().st_mtime

    def age(self, key: str) -> float | None:
        try:
            return time.time() - self._path(key).stat().st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise BlobStoreDown(f"cannot read {key}: {exc}") from exc

    def delete_raw(self, key: str) -> None:
        """Delete a file the sweep found (also stale ``.tmp-*`` files a crash left behind)."""
        folder, _, name = key.partition("/")
        if folder in ("inputs", "results", "inversions") and "/" not in name and name not in ("", ".", ".."):
            (self.root / folder / name).unlink(missing_ok=True)

    def ping(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise BlobStoreDown(f"store directory {str(self.root)!r} is not writable")
        except OSError as exc:
            raise BlobStoreDown(f"store directory {str(self.root)!r}: {exc}") from exc


class S3BlobStore(BlobStore):
    """An S3 bucket (AWS, MinIO, moto...); credentials come from boto3's standard chain."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        prefix: str = "",
        max_attempts: int = 4,
    ) -> None:
        import boto3
        from botocore.config import Config

        common = {
            "signature_version": "s3v4",
            # Custom endpoints (MinIO, moto) rarely have wildcard DNS for virtual-host buckets.
            "s3": {"addressing_style": "path" if endpoint_url else "auto"},
        }
        # Data calls retry with exponential backoff (boto3 "standard" mode: throttling, 5xx, resets).
        # A PutObject is atomic: readers see the whole object or none, never a partial one.
        config = Config(
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": max_attempts, "mode": "standard"},
            **common,
        )
        self.bucket, self.prefix = bucket, prefix
        self.client = boto3.client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        # Readiness must answer fast when the store is down: one try, short timeouts.
        self.ping_client = boto3.client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=Config(
                connect_timeout=2, read_timeout=3, retries={"max_attempts": 1, "mode": "standard"}, **common
            ),
        )
        # Presigned URLs are signed for the host the client will call: inside compose the service
        # reaches MinIO as http://minio:9000, clients outside need e.g. http://localhost:9000.
        self.signing_client = (
            boto3.client("s3", endpoint_url=public_endpoint_url, region_name=region, config=config)
            if public_endpoint_url and public_endpoint_url != endpoint_url
            else self.client
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _wrap(self, exc: Exception, what: str) -> Exception:
        from botocore.exceptions import ClientError

        if isinstance(exc, ClientError):
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NotFound"):
                return BlobNotFound(what)
        return BlobStoreDown(f"S3 {what}: {exc}")

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(
                Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
            )
        except (BotoCoreError, ClientError) as exc:
            raise self._wrap(exc, f"put {key}") from exc

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            body: bytes = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
            return body
        except (BotoCoreError, ClientError) as exc:
            raise self._wrap(exc, f"get {key}") from exc

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._wrap(exc, f"delete {key}") from exc

    def presigned_url(self, key: str, ttl: int) -> str | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            url: str = self.signing_client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=ttl
            )
            return url
        except (BotoCoreError, ClientError) as exc:  # e.g. no credentials to sign with
            raise BlobStoreDown(f"S3 presign {key}: {exc}") from exc

    def local_path(self, key: str) -> Path | None:
        return None

    def list_objects(self, folder: str) -> Iterator[tuple[str, float]]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{self.prefix}{folder}/"
            )
            for page in pages:
                for item in page.get("Contents", []):
                    yield item["Key"][len(self.prefix) :], item["LastModified"].timestamp()
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreDown(f"S3 list {folder}: {exc}") from exc

    def age(self, key: str) -> float | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            modified: float = head["LastModified"].timestamp()
            return time.time() - modified
        except (BotoCoreError, ClientError) as exc:
            error = self._wrap(exc, f"head {key}")
            if isinstance(error, BlobNotFound):
                return None
            raise error from exc

    def ping(self) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.ping_client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError) as exc:
            raise BlobStoreDown(f"S3 bucket {self.bucket!r} is not reachable: {exc}") from exc


class BlobInversionCache:
    """Adapts an BlobStore to qalign_core's InversionCache protocol (opaque bytes by key)."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs

    def get(self, key: str) -> bytes | None:
        try:
            return self.blobs.get(inversion_store_key(key))
        except (BlobNotFound, BlobStoreDown):
            return None

    def put(self, key: str, data: bytes) -> None:
        # A cache that cannot be written only costs time, never the job.
        with contextlib.suppress(BlobStoreDown):
            self.blobs.put(inversion_store_key(key), data)


def open_blob_store(settings: Settings) -> BlobStore:
    """S3 when QALIGN_S3_BUCKET is set, else DATA_DIR/objects."""
    if settings.s3_bucket:
        return S3BlobStore(
            settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            prefix=settings.s3_prefix,
            max_attempts=settings.s3_max_attempts,
        )
    return LocalBlobStore(Path(settings.data_dir) / "objects")
