"""`fl-core job check` reports every problem of a job, not only the first."""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_core.cli import main


def _job(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "badjob"
    folder.mkdir()
    (folder / "train.py").write_text("")
    (folder / "job.yaml").write_text(text)
    return folder


def test_every_config_problem_is_shown_each_with_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(
        tmp_path,
        "name: bad\nround: 5\nmin_clients: .nan\nexecutor:\n  script: train.py\n"
        "  task_timeout: " + "9" * 5000 + "\n",
    )
    assert main(["job", "check", str(job)]) == 1
    lines = capsys.readouterr().err.splitlines()
    source = f"error: {job / 'job.yaml'}: "
    assert [line.removeprefix(source).split(":")[0] for line in lines] == [
        "round",
        "rounds",
        "min_clients",
        "executor.task_timeout",
    ], lines
    assert all(line.startswith(source) for line in lines)
    assert "got a number of 5000 digits" in lines[-1]


def test_every_unknown_plugin_is_shown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _job(
        tmp_path,
        "name: bad\nrounds: 1\nmin_clients: 1\nworkflow: fedx\nexecutor:\n  script: train.py\n"
        "components:\n  transport: nope\n",
    )
    assert main(["job", "check", str(job), "--mode", "poc"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("error: unknown transport 'nope'")
    assert lines[1].startswith("error: unknown workflow 'fedx'")
