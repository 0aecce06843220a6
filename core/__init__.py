"""fl-core: a federated-learning runtime built from a slim core and plugins."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
