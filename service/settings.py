"""All service and worker settings, read from ``QALIGN_*`` environment variables.

One class so the API, the Celery worker and the embedded runner can never disagree on a default.
S3 credentials are deliberately absent: boto3 finds them the standard way (environment, profile,
instance role), so they never pass through our code or logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qalign_core.params import DEFAULT_MODEL, DTYPE_NAMES, DtypeName
from qalign_schema.params import MAX_APPEARANCES
from qalign_schema.signing import SECRET_PREFIX, signing_key


class Settings(BaseSettings):
    """Deployment settings; every field is ``QALIGN_<FIELD NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="QALIGN_", extra="ignore")

    model: str = Field(
        DEFAULT_MODEL,
        description="Hugging Face id, local diffusers model directory, or one SD 1.x .safetensors file.",
    )
    model_config_dir: str | None = Field(
        None,
        description="Local diffusers-format directory (configs and tokenizer, no weights) describing a "
        "single-file MODEL; unset = SD 1.5's configs from the local Hugging Face cache. Never downloaded.",
    )
    allow_pickle_weights: bool = Field(
        False,
        description="Also load pickle weights (.bin, .ckpt), which can run code when opened; default: "
        "safetensors only.",
    )
    device: str | None = Field(None, description="cpu, cuda, cuda:N; default cuda when present.")
    dtype: Literal["auto", DtypeName] | None = Field(
        None, description=f"{', '.join(DTYPE_NAMES)} or auto; default auto: float16 on CUDA, else float32."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for broker and job records; unset runs the embedded single-process mode."
    )
    data_dir: Path = Field(Path(".qalign-data"), description="Local store and embedded job database.")
    s3_bucket: str | None = Field(None, description="S3 bucket for inputs and results; unset uses DATA_DIR.")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO); unset = AWS.")
    s3_public_endpoint_url: str | None = Field(
        None, description="Endpoint presigned result URLs are signed for; default S3_ENDPOINT_URL."
    )
    s3_region: str | None = Field(None, description="S3 region name.")
    s3_prefix: str = Field("", description="Key prefix inside the bucket, e.g. 'qalign/'.")
    result_url_ttl: int = Field(3600, ge=1, le=7 * 24 * 3600, description="Presigned URL lifetime (s).")
    result_redirect: bool = Field(
        True, description="GET /jobs/{id}/result on S3: redirect (307) to the presigned URL, else stream."
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="Largest accepted image file.")
    max_pixels: int = Field(40_000_000, ge=1, description="Largest accepted image pixel count.")
    max_request_bytes: int | None = Field(
        None,
        ge=1024,
        description=f"Largest POST body; default: room for 1 + {MAX_APPEARANCES} (appearances) "
        "MAX_UPLOAD_BYTES files as base64 plus 1 MiB.",
    )
    max_json_bytes: int | None = Field(
        None,
        ge=1024,
        description="Largest JSON body (parsed in memory, about 3x its size at peak); default: a structure "
        "and one appearance of MAX_UPLOAD_BYTES as base64 plus 1 MiB. More or larger images go as "
        "multipart/form-data (spooled to disk) or URL inputs.",
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="Largest request head (request line + headers), bytes.",
    )
    max_header_count: int = Field(100, ge=10, le=10_000, description="Most request header fields.")
    header_timeout_s: float = Field(
        10.0,
        gt=0.0,
        description="Seconds a client has to send a complete request head, from connecting (or from the "
        "first byte of a later request on a kept-alive connection); then the connection is closed.",
    )
    body_timeout_s: float = Field(
        30.0,
        gt=0.0,
        description="Seconds a request body may stop arriving (between two reads that bring body bytes) "
        "before the request is answered 408 and its connection closed; time the service itself is not "
        "reading does not count.",
    )
    keepalive_timeout_s: float = Field(
        5.0, gt=0.0, description="Seconds an idle kept-alive connection stays open between requests."
    )
    max_connections: int = Field(
        1000, ge=1, description="Open connections per server process; connections over it are closed at once."
    )
    max_queue_depth: int = Field(100, ge=1, description="Queued jobs before POST answers 429.")
    max_inflight_per_key: int | None = Field(
        None, ge=1, description="Queued + running jobs one API key may have before 429; unset = no limit."
    )
    rate_limit_requests: int = Field(
        0,
        ge=0,
        description="Job submissions (POST /transfer) one API key may make per rate_limit_window_s "
        "before 429 with Retry-After; 0 = no rate limit. Open mode (no keys) is not limited.",
    )
    rate_limit_window_s: int = Field(
        60, ge=1, le=86400, description="The rate limit's fixed window in seconds."
    )
    job_ttl: int = Field(
        7 * 24 * 3600,
        ge=60,
        description="How long job records, inputs, results and idempotency keys live (s).",
    )
    cleanup_interval: float = Field(
        3600.0, ge=0.0, description="Seconds between expiry sweeps of the API process; 0 = never."
    )
    api_keys: str | None = Field(
        None, description="Comma list of name:sha256hex API keys (python -m service.auth); unset = open mode."
    )
    revoked_api_keys: str | None = Field(None, description="Comma list of revoked name:sha256hex entries.")
    require_api_keys: bool = Field(
        False,
        description="Refuse to start the API without API_KEYS, so a deployment cannot come up in open mode "
        "by omission (compose and Kubernetes set it; open mode is then chosen by setting it false).",
    )
    readiness_details: bool = Field(
        False,
        description="GET /readyz shows every check's detail to any caller; otherwise only to a caller with a "
        "valid API key (or anyone in open mode) and others see just ready true/false.",
    )
    allowed_hosts: str = Field(
        "",
        description="Comma list of Host names the API answers for (*.example.com allowed) when "
        "PUBLIC_BASE_URL is unset; other Hosts get 400, so no link is built from an untrusted Host; "
        "empty = any Host.",
    )
    cors_allow_origins: str = Field(
        "",
        description="Comma list of browser origins (https://app.example.com) allowed to call the API "
        "cross-origin; empty = no CORS headers (same-origin only).",
    )
    metrics_require_key: bool = Field(False, description="GET /metrics needs an API key like the job routes.")
    webhook_secret: str | None = Field(
        None, description="HMAC-SHA256 key of webhook signatures; unset = webhook_url is refused (422)."
    )
    webhook_allow_hosts: str = Field(
        "",
        description="Comma list of webhook hosts, IPs or CIDR networks allowed although not public.",
    )
    webhook_attempts: int = Field(5, ge=1, le=20, description="Deliveries tried per webhook event.")
    webhook_backoff_s: float = Field(1.0, ge=0.0, description="First retry delay; doubles per attempt.")
    webhook_timeout_s: float = Field(5.0, gt=0.0, description="Timeout of one webhook POST (s).")
    webhook_workers: int = Field(
        4, ge=1, le=64, description="Jobs whose webhooks are delivered at once by the outbox drainer."
    )
    webhook_drain_s: float = Field(
        10.0,
        ge=0.0,
        description="At shutdown, seconds spent delivering pending events; the rest stay in the "
        "durable outbox and go out after the next start.",
    )
    outbox_poll_s: float = Field(
        0.2, gt=0.0, le=10.0, description="How often the outbox drainer looks for new events (s)."
    )
    outbound_ca_bundle: Path | None = Field(
        None,
        description="PEM file of the CAs trusted for outbound HTTPS (webhooks, URL inputs); unset = certifi.",
    )
    input_url_allow_hosts: str = Field(
        "",
        description="Comma list of URL-input hosts, IPs or CIDR networks allowed although not public.",
    )
    input_url_timeout_s: float = Field(
        20.0, gt=0.0, description="Time limit of fetching one URL input, redirects included (s)."
    )
    s3_max_attempts: int = Field(4, ge=1, le=10, description="S3 calls tried (with backoff) before failing.")
    storage_outage_deadline: float = Field(
        300.0,
        ge=0.0,
        description="A worker waits out an object-store or job-store outage (input download, result "
        "upload, final record write) this long, retrying with backoff, before the job fails with "
        "storage_unavailable.",
    )
    max_attempts: int = Field(2, ge=1, description="Runs of one job before an interrupted job is failed.")
    progress_interval: float = Field(0.5, ge=0.0, description="Least seconds between progress writes.")
    cancel_check_interval: float = Field(0.25, ge=0.0, description="Least seconds between cancel checks.")
    heartbeat_interval: float = Field(5.0, gt=0.0, description="Worker heartbeat period (s).")
    heartbeat_ttl: float = Field(15.0, gt=0.0, description="A worker without heartbeat this long is dead.")
    takeover_check_interval: float | None = Field(
        None,
        gt=0.0,
        description="Seconds between a worker's scans for running jobs whose worker stopped heartbeating "
        "(they are republished and taken over); default HEARTBEAT_INTERVAL.",
    )
    stranded_message_after: float = Field(
        60.0,
        gt=0.0,
        description="A queued job whose broker message is in neither the queue nor fresh in a worker's "
        "hands (delivered less than this long ago) for this long is published again by the takeover "
        "scan: a worker that died between taking the message and claiming the job strands it otherwise.",
    )
    accept_without_workers: bool = Field(
        False,
        description="Scale to zero: accept jobs while no worker is live (they wait in the queue until an "
        "autoscaler starts one); readiness then checks only the broker and the stores.",
    )
    readiness_cache_s: float = Field(2.0, ge=0.0, description="How long a readiness verdict is reused.")
    job_time_limit: int = Field(
        3600,
        ge=1,
        description="Seconds one run of a job may take: then it is stopped at its next step and failed "
        "(error time_limit), in both modes; also the Celery soft time limit. The hard limit (process "
        "killed, distributed mode) is job_hard_time_limit.",
    )
    visibility_timeout: int | None = Field(
        None,
        ge=1,
        description="Redis broker: seconds before an unacknowledged job is redelivered to another worker. "
        "Must exceed job_hard_time_limit; default job_hard_time_limit + 300.",
    )
    redelivery_check_interval: float = Field(
        10.0, gt=0.0, description="Seconds between a worker's scans for messages past the visibility timeout."
    )
    worker_shutdown_grace: float = Field(
        300.0,
        ge=0.0,
        description="On SIGTERM a worker lets its running job go on this long, then stops it at its next "
        "step and requeues it; keep it below the orchestrator's kill timeout (compose: stop_grace_period).",
    )
    public_base_url: str | None = Field(
        None,
        pattern=r"^https?://[^\s?#]+$",
        description="Absolute base of the links in job objects and webhook bodies (e.g. "
        "https://qalign.example.com); unset = the base URL of the submitting request.",
    )
    forwarded_allow_ips: str = Field(
        "127.0.0.1",
        description="Comma list of peer addresses or networks whose X-Forwarded-Proto/Host headers are "
        "trusted when building links; * trusts every peer.",
    )
    events_poll_s: float = Field(
        0.25, gt=0.0, le=5.0, description="How often an events stream or Prefer: wait reads the job (s)."
    )
    events_ping_s: float = Field(
        15.0, gt=0.0, description="Seconds between keep-alive comments on an idle events stream."
    )
    inversion_cache: bool = Field(True, description="Keep inversions in the store and reuse them.")
    log_level: str = Field("INFO", description="Log level of the JSON logs.")

    @property
    def request_limit(self) -> int:
        """The POST body limit: MAX_REQUEST_BYTES, or the most files a job takes (a structure and
        MAX_APPEARANCES appearances) as base64 (4/3) plus 1 MiB of fields."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return ((1 + MAX_APPEARANCES) * self.max_upload_bytes * 4) // 3 + 4 + 1024 * 1024

    @property
    def json_limit(self) -> int:
        """The JSON body limit: MAX_JSON_BYTES, or two MAX_UPLOAD_BYTES files as base64 plus 1 MiB of
        fields; never above the POST body limit."""
        if self.max_json_bytes is not None:
            return min(self.max_json_bytes, self.request_limit)
        return min((2 * self.max_upload_bytes * 4) // 3 + 4 + 1024 * 1024, self.request_limit)

    @property
    def allowed_input_url_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.input_url_allow_hosts.split(",") if h.strip())

    @property
    def allowed_host_names(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.allowed_hosts.split(",") if h.strip())

    @property
    def cors_origins(self) -> tuple[str, ...]:
        return tuple(o.strip().rstrip("/") for o in self.cors_allow_origins.split(",") if o.strip())

    @property
    def allowed_webhook_hosts(self) -> tuple[str, ...]:
        return tuple(h.strip().lower() for h in self.webhook_allow_hosts.split(",") if h.strip())

    @property
    def public_base(self) -> str | None:
        """PUBLIC_BASE_URL without a trailing slash."""
        return self.public_base_url.rstrip("/") if self.public_base_url else None

    @property
    def job_hard_time_limit(self) -> int:
        """When the worker process running a job is killed: the soft limit plus 10 % (1-60 s) to clean up."""
        return self.job_time_limit + min(max(self.job_time_limit // 10, 1), 60)

    @property
    def broker_visibility_timeout(self) -> int:
        """Redelivery time of an unacknowledged message; always above the hard time limit."""
        if self.visibility_timeout is not None:
            return self.visibility_timeout
        return self.job_hard_time_limit + 300

    @model_validator(mode="after")
    def _redelivery_after_time_limit(self) -> Settings:
        """A message redelivered while its job may still run would start a second, concurrent run."""
        if self.visibility_timeout is not None and self.visibility_timeout <= self.job_hard_time_limit:
            raise ValueError(
                f"QALIGN_VISIBILITY_TIMEOUT ({self.visibility_timeout} s) must exceed the hard job time "
                f"limit ({self.job_hard_time_limit} s = QALIGN_JOB_TIME_LIMIT {self.job_time_limit} + grace)"
            )
        return self

    @model_validator(mode="after")
    def _webhook_secret_decodes(self) -> Settings:
        """A ``whsec_`` secret is base64 (Standard Webhooks): fail at start, not at the first delivery."""
        if self.webhook_secret:
            try:
                signing_key(self.webhook_secret)
            except ValueError as exc:
                message = f"QALIGN_WEBHOOK_SECRET is not base64 after its {SECRET_PREFIX} prefix"
                raise ValueError(message) from exc
        return self

    def open_mode_refusal(self) -> str | None:
        """Why the API must not start (keys required, none given), or None."""
        if self.require_api_keys and not self.api_keys:
            return (
                "QALIGN_API_KEYS is empty and QALIGN_REQUIRE_API_KEYS is true: the API would be open to "
                "anyone who reaches it. Add keys ('qalign hash-key NAME' prints an entry) or choose open "
                "mode explicitly with QALIGN_REQUIRE_API_KEYS=false."
            )
        return None

    @property
    def embedded(self) -> bool:
        """No Redis configured: API, worker thread and SQLite job store share one process."""
        return not self.redis_url
