"""One dependency-injector container per deployment mode, sharing `BaseContainer`."""

from __future__ import annotations

import enum


class Mode(enum.StrEnum):
    """Deployment modes."""

    SIMULATOR = "simulator"
    POC = "poc"
    PRODUCTION = "production"
