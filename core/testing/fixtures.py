"""pytest fixtures for plugin authors: `pytest_plugins = ["fl_core.testing.fixtures"]`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fl_core.roles.simulator import Simulator
from fl_core.testing import simulator_for, write_job


@pytest.fixture
def fl_job(tmp_path: Path) -> Callable[..., Path]:
    """Write a job folder under the test's tmp_path: `fl_job(script=..., rounds=3)`."""

    def make(**kwargs: Any) -> Path:
        return write_job(tmp_path / "job", **kwargs)

    return make


@pytest.fixture
def fl_simulator(tmp_path: Path) -> Callable[..., Simulator]:
    """Build a simulator for a job folder with its workspace under tmp_path."""

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
