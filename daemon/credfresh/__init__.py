"""credfresh keeps AWS temporary credentials fresh in the shared credentials file."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
