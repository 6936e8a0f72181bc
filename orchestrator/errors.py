"""One exception base for everything caviar refuses, so the CLI can print one line."""

from __future__ import annotations


class CaviarError(Exception):
    """Base class: a user-facing problem with a one-line message."""


class SpaceError(CaviarError, ValueError):
    """An invalid search-space definition; the message names the parameter."""


class TaskError(CaviarError):
    """A task file or attribute that cannot be loaded or lacks required pieces."""


class StorageError(CaviarError):
    """Storage that cannot be reached, written, or read back intact."""


class ConfigError(CaviarError, ValueError):
    """A bad option value from the CLI, TOML or Python API; names the field."""
