"""Global models written in the background: newest wins, flush waits, errors fail the job."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import fl_core.roles.server_job.model_writer as model_writer
from fl_core.errors import FlCoreError
from fl_core.model import Params, load_params
from fl_core.roles.server_job.model_writer import ModelWriter


def test_flush_waits_until_the_newest_model_is_on_disk(tmp_path: Path) -> None:
    writer = ModelWriter()
    path = tmp_path / "m.npz"
    for value in range(5):
        writer.submit(path, {"w": np.full(1000, value, np.float32)})
    writer.flush()
    assert np.all(load_params(path)["w"] == 4)


def test_a_model_waiting_to_be_written_is_replaced_by_a_newer_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    written: list[float] = []

    def slow_save(path: Path, params: Params) -> None:
        release.wait(60)
        written.append(float(params["w"][0]))

    monkeypatch.setattr(model_writer, "save_params", slow_save)
    writer = ModelWriter()
    writer.submit(tmp_path / "m.npz", {"w": np.zeros(1)})  # taken by the thread, blocked
    with writer._cond:  # until the thread has taken the first one
        assert writer._cond.wait_for(lambda: writer._writing, 10)
    writer.submit(tmp_path / "m.npz", {"w": np.ones(1)})
    writer.submit(tmp_path / "m.npz", {"w": np.full(1, 2.0)})
    release.set()
    writer.flush()
    assert written == [0.0, 2.0]  # round 1 skipped: the file holds the newest either way


def test_a_failed_write_is_raised_by_flush_and_by_the_next_submit(tmp_path: Path) -> None:
    writer = ModelWriter()
    missing = tmp_path / "no-such-folder" / "m.npz"
    writer.submit(missing, {"w": np.zeros(3)})
    with pytest.raises(FlCoreError, match="could not write the model"):
        writer.flush()
    with pytest.raises(FlCoreError, match="no-such-folder"):
        writer.submit(tmp_path / "m.npz", {"w": np.zeros(3)})
