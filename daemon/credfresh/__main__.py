"""Entry point for `python -m credfresh`."""

from __future__ import annotations

from credfresh.cli import main

raise SystemExit(main())
