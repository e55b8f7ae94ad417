"""Optional dependencies: import them lazily and fail with the pip command that fixes it."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


class MissingDependencyError(ImportError):
    """An optional dependency is needed for the feature that was asked for."""


def has(module: str) -> bool:
    """True when ``module`` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(module: str, extra: str, feature: str = "") -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install vistok[extra]``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        what = f" for {feature}" if feature else ""
        raise MissingDependencyError(
            f"'{module}' is needed{what} but is not installed; install it with: pip install 'vistok[{extra}]'"
        ) from e
