"""aMCP: the framework core shared by every tier (wire types, crypto, store, rules, runtime)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cybernetic-edge")
except PackageNotFoundError:  # running from a source tree without an install
    __version__ = "0.0.0+unknown"
