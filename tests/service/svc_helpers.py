"""Helpers of the service unit tests (a module, not conftest, so tests can import them)."""

from __future__ import annotations

import hashlib
import io
import threading
from dataclasses import dataclass, field

from PIL import Image
from testkit import free_port, wait_for  # noqa: F401  (re-exported to the tests)

from qalign_core.errors import InvalidParametersError, TransferCanceled
from qalign_core.params import MAX_APPEARANCES, TransferParams
from service.jobs import Job, JobStores, lifecycle, new_job_id, utcnow


@dataclass(frozen=True)
class FakeShape:
    """qalign_core.images.OutputShape's fields."""

    width: int
    height: int
    clamped: bool = False
    crop: tuple[int, int, int, int] | None = None

    @property
    def result_width(self) -> int:
        return self.width

    @property
    def result_height(self) -> int:
        return self.height


@dataclass
class FakeResult:
    """TransferResult's contract: one image per appearance, in order, all of the output shape."""

    images: list[Image.Image]
    params: TransferParams
    timings: dict
    shape: FakeShape
    inversion_cache_hits: int = 0
    diagnostics: dict = field(default_factory=dict)

    @property
    def image(self) -> Image.Image:
        return self.images[0]

    @property
    def rows_per_step(self) -> int:
        return 3 * len(self.images) + 1

    @property
    def unet_rows(self) -> dict:
        return {"inversion": len(self.images) + 1, "denoising": self.rows_per_step}

    @property
    def content_type(self) -> str:
        return self.params.content_type

    def encode(self) -> bytes:
        return self.encode_all()[0]

    def encode_all(self) -> list[bytes]:
        return [encode(image, self.params.output_format.upper()) for image in self.images]


#: Colour of the fake result of appearance k: tests tell the results' order by it.
def fake_colour(k: int) -> tuple[int, int, int]:
    return (200, 100, (50 + 20 * k) % 256)


def fake_shape(structure: bytes, longer: int, aspect: str, unit: int = 8) -> FakeShape:
    """The shape rule (longer side ``longer``, shorter one rounded to ``unit``, ratio clamped at
    2:1) on the structure's size; square when it is no image (unit tests pass placeholder bytes)."""
    try:
        width, height = Image.open(io.BytesIO(structure)).size
    except Exception:
        width = height = 1
    if aspect == "square":
        return FakeShape(longer, longer)
    ratio = max(width, height) / min(width, height)
    clamped = ratio > 2.0
    short = max(unit, round(longer / min(ratio, 2.0) / unit) * unit)
    return FakeShape(longer, short, clamped) if width >= height else FakeShape(short, longer, clamped)


@dataclass
class FakePipeline:
    """Stands in for QAlignPipeline in unit tests: same call shape (one structure, one appearance or
    a list of them), reports stages over all images, honours cancel, one result image per appearance.

    ``gate`` (when set) blocks the run in the denoising stage until released, so tests can observe
    a job while it is running; with ``honour_cancel`` False it then runs on whatever the record says
    (a run that finishes after its job was canceled or erased). With an ``inversion_cache`` it
    reads and writes one entry per input image, keyed like the real one (image bytes and seed).
    """

    native_size: int = 64
    model_id: str = "fake"
    gate: threading.Event | None = None
    fail_with: Exception | None = None
    calls: list = field(default_factory=list)
    running: threading.Event = field(default_factory=threading.Event)
    honour_cancel: bool = True

    def transfer(
        self, structure, appearance, params=None, progress=None, should_cancel=None, inversion_cache=None
    ):
        params = params or TransferParams()
        if params.size is None:
            params = params.model_copy(update={"size": self.native_size})
        appearances = list(appearance) if isinstance(appearance, (list, tuple)) else [appearance]
        if not 1 <= len(appearances) <= MAX_APPEARANCES:
            raise InvalidParametersError(f"1 to {MAX_APPEARANCES} appearance images; got {len(appearances)}")
        self.calls.append((structure, appearances, params))
        progress = progress or (lambda stage, fraction: None)
        hits = 0
        for image in (structure, *appearances) if inversion_cache is not None else ():
            key = "inv-" + hashlib.sha256(image + params.seed.to_bytes(8, "little")).hexdigest()
            if inversion_cache.get(key) is not None:
                hits += 1
            else:
                inversion_cache.put(key, b"inversion of " + key.encode())
        for stage in ("loading", "inverting", "denoising"):
            progress(stage, 0.0)
            if should_cancel and should_cancel():
                raise TransferCanceled(f"canceled during {stage}")
        self.running.set()
        if self.fail_with is not None:
            raise self.fail_with
        while self.gate is not None and not self.gate.wait(0.02):
            if self.honour_cancel and should_cancel and should_cancel():
                raise TransferCanceled("canceled during denoising")
        progress("denoising", 1.0)
        progress("decoding", 0.0)
        shape = fake_shape(structure, params.size, params.aspect)
        images = [
            Image.new("RGB", (shape.width, shape.height), fake_colour(k)) for k in range(len(appearances))
        ]
        timings = {"inversion_s": 0.01, "denoise_s": 0.02, "decode_s": 0.01, "total_s": 0.04}
        diagnostics = {
            "adain_applied": ["plain"] * len(images),
            "object_masks_found": [False] * len(images),
            "output_width": shape.width,
            "output_height": shape.height,
            "aspect_clamped": shape.clamped,
        }
        return FakeResult(images, params, timings, shape, hits, diagnostics)


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def new_job(stores: JobStores, **fields) -> Job:
    """A queued record, created in ``stores``."""
    defaults = {"created_at": utcnow(), "structure_key": "inputs/" + "a" * 64}
    defaults["appearance_keys"] = ["inputs/" + "b" * 64]
    job = Job(id=new_job_id(), **{**defaults, **fields})
    stores.records.create(job)
    return job


def claim(stores: JobStores, job_id: str, worker: str, max_attempts: int = 2) -> Job | None:
    """What a worker's claim does to the record; the claimed job, or None when it must not run."""
    live = stores.workers.live()
    job = stores.records.apply(
        job_id, lambda j: lifecycle.claim(j, worker=worker, live_workers=live, max_attempts=max_attempts)
    )
    return job if job is not None and job.status == "running" and job.worker == worker else None


#: The API key of ``live_keyed_service`` (conftest): the tiny-model service over real HTTP.
LIVE_KEY = "live-service-key"

#: API keys of the keyed test apps (settings fixture ``keyed`` in conftest).
KEYS = {"alice": "alice-secret-key", "bob": "bob-secret-key", "old": "revoked-key"}


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {KEYS[name]}"}


@dataclass
class SseEvent:
    event: str | None
    id: str | None
    data: str


def read_sse(lines, comments: list | None = None):
    """Yield the events of a text/event-stream given its lines; ``comments`` collects ':' lines."""
    event = {"event": None, "id": None, "data": []}
    for line in lines:
        if line == "":
            if event["data"] or event["event"]:
                yield SseEvent(event["event"], event["id"], "\n".join(event["data"]))
            event = {"event": None, "id": None, "data": []}
        elif line.startswith(":"):
            if comments is not None:
                comments.append(line)
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                event["data"].append(value)
            elif name in ("event", "id"):
                event[name] = value
