"""The ``lmcache`` command line (typer)."""
