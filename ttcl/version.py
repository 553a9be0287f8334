"""The version of TTCL, read by the package metadata (pyproject.toml) and written into
compiled artifacts."""

__version__ = "0.1.0"
