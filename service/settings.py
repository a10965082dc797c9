"""All service and worker settings, read from ``QALIGN_*`` environment variables.

One class so the API, the Celery worker and the embedded runner can never disagree on a default.
S3 credentials are deliberately absent: boto3 finds them the standard way (environment, profile,
instance role), so they never pass through our code or logs.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

#: Same value as qalign_core.pipeline.DEFAULT_MODEL, repeated so reading settings never imports torch.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


class Settings(BaseSettings):
    """Deployment settings; every field is ``QALIGN_<FIELD NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="QALIGN_", extra="ignore")

    model: str = Field(DEFAULT_MODEL, description="Hugging Face id or local model directory.")
    device: str | None = Field(None, description="cpu, cuda, cuda:N; default cuda when present.")
    dtype: str | None = Field(None, description="float32, float16, bfloat16 or auto.")
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
    max_queue_depth: int = Field(100, ge=1, description="Queued jobs before POST answers 429.")
    job_ttl: int = Field(7 * 24 * 3600, ge=60, description="How long job records are kept (s).")
    max_attempts: int = Field(2, ge=1, description="Runs of one job before an interrupted job is failed.")
    progress_interval: float = Field(0.5, ge=0.0, description="Least seconds between progress writes.")
    cancel_check_interval: float = Field(0.25, ge=0.0, description="Least seconds between cancel checks.")
    heartbeat_interval: float = Field(5.0, gt=0.0, description="Worker heartbeat period (s).")
    heartbeat_ttl: float = Field(15.0, gt=0.0, description="A worker without heartbeat this long is dead.")
    readiness_cache_s: float = Field(2.0, ge=0.0, description="How long a readiness verdict is reused.")
    visibility_timeout: int = Field(
        3 * 3600, ge=60, description="Redis broker: seconds before an unacknowledged job is redelivered."
    )
    inversion_cache: bool = Field(True, description="Keep inversions in the store and reuse them.")
    log_level: str = Field("INFO", description="Log level of the JSON logs.")

    @property
    def embedded(self) -> bool:
        """No Redis configured: API, worker thread and SQLite job store share one process."""
        return not self.redis_url
