"""The service's public data shapes, defined once and shared by the server, the library and the
Python client: transfer parameters, the job object, problem details, every limit and enumeration of
the API (``submission``, ``limits``, ``jobs.ErrorType``) and the version. Pydantic only (no torch,
no web framework), so ``qalign-client`` installs with httpx and pydantic alone."""

from qalign_schema.jobs import (
    ErrorOut,
    ErrorType,
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
from qalign_schema.limits import Limits
from qalign_schema.params import TransferParams
from qalign_schema.problems import FieldProblem, Problem

__all__ = [
    "ErrorOut",
    "ErrorType",
    "FieldProblem",
    "JobList",
    "JobMetricsOut",
    "JobOut",
    "JobUsageOut",
    "JobParams",
    "JobUrls",
    "Limits",
    "OutputOut",
    "Problem",
    "ResultOut",
    "UsageOut",
    "TransferParams",
]
