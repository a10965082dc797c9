"""The client's version: the project's, from its one home (the client ships qalign_schema)."""

from qalign_schema.version import __version__

__all__ = ["__version__"]
