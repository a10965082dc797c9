"""The job runtime shared by the API and the worker: the job model, its pure state transitions,
narrow store protocols (Redis and SQLite), and the runner the Celery task and the embedded thread
both call. No FastAPI and no Celery imports live here.
"""

from qalign_schema.jobs import JobStage, JobStatus
from service.jobs.model import (
    STAGES,
    STATUSES,
    TERMINAL,
    Job,
    JobError,
    JobResult,
    new_job_id,
    utcnow,
    worker_name,
)
from service.jobs.records import JobStoreDown, JobStores

__all__ = [
    "STAGES",
    "STATUSES",
    "TERMINAL",
    "Job",
    "JobError",
    "JobResult",
    "JobStage",
    "JobStatus",
    "JobStores",
    "JobStoreDown",
    "new_job_id",
    "utcnow",
    "worker_name",
]
