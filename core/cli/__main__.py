"""`python -m fl_core.cli`: the same as the `fl-core` command."""

from __future__ import annotations

import sys

from fl_core.cli import main

sys.exit(main())
