"""Threadlog: a self-hosted server for the OpenAI Assistants API v2."""

from importlib import metadata

try:
    __version__ = metadata.version("threadlog")
except metadata.PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0.0.0+unknown"
