"""Q-Align: zero-shot appearance transfer in a Stable Diffusion UNet.

The library is usable alone: it imports no web, queue or storage code.
"""

from qalign_core.errors import InvalidImageError, ModelLoadError, QAlignError, TransferCanceled
from qalign_core.params import TransferParams
from qalign_schema.version import __version__

__all__ = [
    "InvalidImageError",
    "ModelLoadError",
    "QAlignError",
    "TransferCanceled",
    "TransferParams",
    "__version__",
]
