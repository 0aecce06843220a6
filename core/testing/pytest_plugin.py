"""The pytest plugin of fl-core: fixtures for plugin authors, with no conftest needed.

Installing fl-core registers this module with pytest (entry point `fl_core`
in the group `pytest11`), so every test of a plugin package can ask for:

- `fl_job`: writes a job folder under the test's `tmp_path`;
- `fl_simulator`: builds a simulator for a job folder, its workspace under `tmp_path`;
- `fl_no_threads_left`: fails a test that leaves a thread running.

pytest imports this module in every run of an environment where fl-core is
installed, so it imports nothing but pytest at import time: the runtime is
imported only when a fixture that needs it is used. `-p no:fl_core`
disables it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from fl_core.roles.simulator import Simulator

__all__ = ["THREAD_JOIN_WAIT", "fl_job", "fl_no_threads_left", "fl_simulator"]


@pytest.fixture
def fl_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job folder under the test's tmp_path: `fl_job(script=..., rounds=3)`."""
    from fl_core.testing import write_job

    def make(**kwargs: Any) -> Path:
        return write_job(tmp_path / "job", **kwargs)

    return make


@pytest.fixture
def fl_simulator(tmp_path: Path) -> Callable[..., Simulator]:
    """Build a simulator for a job folder with its workspace under tmp_path."""
    from fl_core.testing import simulator_for

    def make(job: Path, **kwargs: Any) -> Simulator:
        kwargs.setdefault("workspace", tmp_path / "workspace")
        return simulator_for(job, **kwargs)

    return make


THREAD_JOIN_WAIT = 10.0
"""How long a test's leftover thread may take to end; reached only when something is broken."""


@pytest.fixture
def fl_no_threads_left() -> Iterator[None]:
    """Fail the test if a thread it started (timer, dispatcher, event loop) outlives it.

    Use it module-wide with `pytestmark = pytest.mark.usefixtures("fl_no_threads_left")`.
    """
    before = set(threading.enumerate())
    yield
    leftover = [t for t in threading.enumerate() if t not in before]
    for thread in leftover:
        thread.join(THREAD_JOIN_WAIT)
    assert [t.name for t in leftover if t.is_alive()] == []
