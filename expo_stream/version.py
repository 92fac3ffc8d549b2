"""The installed package's version, read from its metadata (pyproject.toml is the one source)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("expo-stream")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
