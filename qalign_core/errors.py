"""Errors the library raises on purpose; each message says what was wrong and what is allowed."""


class QAlignError(Exception):
    """Base of every error this library raises deliberately."""


class InvalidImageError(QAlignError):
    """An input is not a decodable image of an allowed format and size."""


class ModelLoadError(QAlignError):
    """The model could not be loaded (not found, offline, incomplete directory)."""


class TransferCanceled(QAlignError):
    """The caller's cancel check asked the transfer to stop; raised between steps."""


class InvalidParametersError(QAlignError, ValueError):
    """Parameters valid on their own that this model cannot run (its scheduler, its sizes)."""
