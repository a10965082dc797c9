"""Per-request parameters of a transfer: the one definition lives in ``qalign_schema.params`` (pydantic
only, shared with the Python client); the library re-exports it here. Also the model loaded when none
is named, here rather than in ``pipeline`` so that settings can read it without importing torch."""

from typing import Literal, get_args

from qalign_schema.params import (
    MAX_APPEARANCES,
    MAX_ASPECT_RATIO,
    MAX_STEPS,
    SCHEDULE_UNITS,
    StepRange,
    TransferParams,
)

#: The model ``QAlignPipeline.from_pretrained``, the CLI and the service load when none is named.
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
#: The weight dtypes a pipeline loads in, by name (the CLI's --dtype and QALIGN_DTYPE; "auto" or
#: unset picks float16 on CUDA, else float32).
DtypeName = Literal["float32", "float16", "bfloat16"]
DTYPE_NAMES: tuple[DtypeName, ...] = get_args(DtypeName)

__all__ = [
    "DEFAULT_MODEL",
    "DTYPE_NAMES",
    "DtypeName",
    "MAX_APPEARANCES",
    "MAX_ASPECT_RATIO",
    "MAX_STEPS",
    "SCHEDULE_UNITS",
    "StepRange",
    "TransferParams",
]
