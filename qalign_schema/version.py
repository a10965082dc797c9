"""The release version of the project: the one home of it. Both distributions (``pyproject.toml``
and ``client/pyproject.toml``) read it from here, and the library, the client and the service
report it."""

__version__ = "0.1.0"
