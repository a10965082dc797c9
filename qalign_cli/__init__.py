"""The ``qalign`` command line."""
