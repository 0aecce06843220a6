"""The fixtures of `fl_core.testing.pytest_plugin`, under the name older conftests use.

pytest loads that plugin by itself wherever fl-core is installed, so a
conftest needs nothing. `pytest_plugins = ["fl_core.testing.fixtures"]` still
works: it registers the same fixture functions again, which changes nothing.
"""

from __future__ import annotations

from fl_core.testing.pytest_plugin import (
    THREAD_JOIN_WAIT,
    fl_job,
    fl_no_threads_left,
    fl_simulator,
)

__all__ = ["THREAD_JOIN_WAIT", "fl_job", "fl_no_threads_left", "fl_simulator"]
