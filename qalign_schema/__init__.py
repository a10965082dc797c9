"""The service's public data shapes, defined once and shared by the server, the library and the
Python client: transfer parameters, the job object, problem details. Pydantic only (no torch, no web
framework), so ``qalign-client`` installs with httpx and pydantic alone."""

from qalign_schema.jobs import (
    ErrorOut,
    JobList,
    JobMetricsOut,
    JobOut,
    JobParams,
    JobUrls,
    JobUsageOut,
    OutputOut,
    ResultOut,
    UsageOut,
)
from qalign_schema.params import TransferParams
from qalign_schema.problems import FieldProblem, Problem

__all__ = [
    "ErrorOut",
    "FieldProblem",
    "JobList",
    "JobMetricsOut",
    "JobOut",
    "JobUsageOut",
    "JobParams",
    "JobUrls",
    "OutputOut",
    "Problem",
    "ResultOut",
    "UsageOut",
    "TransferParams",
]
