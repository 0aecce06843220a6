"""The command line's usage error, shared by its command modules."""

from __future__ import annotations

from fl_core.errors import FlCoreError


class UsageError(FlCoreError):
    """Options that do not go together, or name nothing installed; exits 2, like argparse."""
