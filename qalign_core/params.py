"""Per-request parameters of a transfer: the one definition lives in ``qalign_schema.params`` (pydantic
only, shared with the Python client); the library re-exports it here."""

from qalign_schema.params import (
    MAX_APPEARANCES,
    MAX_ASPECT_RATIO,
    MAX_STEPS,
    SCHEDULE_UNITS,
    StepRange,
    TransferParams,
)

__all__ = [
    "MAX_APPEARANCES",
    "MAX_ASPECT_RATIO",
    "MAX_STEPS",
    "SCHEDULE_UNITS",
    "StepRange",
    "TransferParams",
]
