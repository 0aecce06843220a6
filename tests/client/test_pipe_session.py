"""The Client API in a training process of its own, reaching its client job through a pipe.

The test plays the client job (the ACTIVE end) and runs a real training
script as a real subprocess with `FL_CORE_PIPE` set.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.client.pipe_session import (
    ENV_VAR,
    NoTaskError,
    PipeSession,
    PipeTopic,
    session_from_environment,
)
from fl_core.errors import FlCoreError
from fl_core.model import FLModel
from fl_core.plugins import make_plugin_manager
from fl_core.roles.client_job.in_process import _OnceSession
from fl_core.spec.pipe import Pipe, PipeMessage, PipeSide
from fl_core.testing.stream_contract import wait_until

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
WAIT = 60.0
PIPE = "job1-site-1"
FQCN = "site-1.job1"
TOKEN = "t0ken-for-the-trainer"

TRAINER = textwrap.dedent(
    """
    import json

    import fl_core.client as flare

    flare.init()
    answered = 0
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        flare.log("loss", 0.25 * (answered + 1), step=answered)
        new = {name: value + 1 for name, value in model.params.items()}
        flare.send(flare.FLModel(params=new, meta={"num_samples": 10 + answered}))
        answered += 1
    print(json.dumps({
        "site": flare.get_site_name(),
        "job": flare.get_job_id(),
        "answered": answered,
        "running": flare.is_running(),
        "after_end": flare.receive(1.0) is None,
    }))
    """
)


def _create(name: str, options: dict[str, Any]) -> Pipe:
    registry = make_plugin_manager().registry()
    pipe: Pipe = registry.create("pipe", name, options, expect=Pipe)
    pipe.use_transports(lambda kind, opts: registry.create("transport", kind, opts))
    return pipe


@pytest.fixture(params=["file", "cell"])
def ends(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Pipe, dict[str, Any]]]:
    """An open ACTIVE end and the `FL_CORE_PIPE` value that reaches it."""
    name = str(request.param)
    if name == "file":
        options: dict[str, Any] = {
            "root": str(tmp_path),
            "heartbeat_interval": 0.2,
            "heartbeat_timeout": WAIT,
        }
        active = _create("file", options)
        active.open(PIPE, PipeSide.ACTIVE)
        passive = dict(options)
    else:
        common = {"fqcn": FQCN, "token": TOKEN, "heartbeat_interval": 0.2}
        common["heartbeat_timeout"] = WAIT
        active = _create("cell", {**common, "url": "tcp://127.0.0.1:0"})
        active.open(PIPE, PipeSide.ACTIVE)
        passive = {**common, "url": active.address}  # type: ignore[attr-defined]
    env = {"name": name, "options": passive, "pipe": PIPE, "site": "site-1", "job_id": "job1"}
    try:
        yield active, env
    finally:
        active.close()


def _start(tmp_path: Path, value: str, script: str = TRAINER) -> subprocess.Popen[str]:
    path = tmp_path / "train.py"
    path.write_text(script)
    env = {**os.environ, ENV_VAR: value}
    return subprocess.Popen(
        [sys.executable, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=WAIT)
    return proc.returncode, out, err


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def _next(active: Pipe) -> PipeMessage:
    message = active.receive(WAIT)
    assert message is not None, "the trainer sent nothing"
    return message


def _task(active: Pipe, task_id: str, round_: int, params: dict[str, np.ndarray]) -> None:
    # A cell pipe's ACTIVE end cannot reach a trainer that has not connected yet.
    wait_until(active.peer_alive, WAIT, "the trainer to open its end")
    headers = {"task_id": task_id, "task_name": "train", "round": str(round_)}
    assert active.send(PipeMessage(PipeTopic.TASK, headers, FLModel(params=params)), WAIT)


def test_a_trainer_process_answers_two_tasks_logs_and_ends(
    ends: tuple[Pipe, dict[str, Any]], tmp_path: Path
) -> None:
    active, env = ends
    proc = _start(tmp_path, json.dumps(env))
    try:
        rounds: list[dict[str, np.ndarray]] = [
            {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([-1, 7], np.int64)},
            {"w": np.full((2, 3), 0.5, np.float32), "b": np.array([100, 0], np.int64)},
        ]
        for i, params in enumerate(rounds):
            _task(active, f"task-{i}", i, params)
            logged = _next(active)
            assert logged.topic == PipeTopic.LOG
            assert logged.body == {"key": "loss", "value": 0.25 * (i + 1), "step": i}
            result = _next(active)
            assert result.topic == PipeTopic.RESULT
            assert result.headers == {"task_id": f"task-{i}"}
            assert isinstance(result.body, FLModel)
            assert result.body.params.keys() == params.keys()
            for key, sent in params.items():
                got = result.body.params[key]
                assert got.dtype == sent.dtype and got.shape == sent.shape
                np.testing.assert_array_equal(got, sent + 1)
            assert result.body.meta == {"num_samples": 10 + i}
        assert active.send(PipeMessage(PipeTopic.END), WAIT)
        code, out, err = _finish(proc)
        assert code == 0, err
        assert json.loads(out) == {
            "site": "site-1",
            "job": "job1",
            "answered": 2,
            "running": False,
            "after_end": True,
        }
    finally:
        _kill(proc)


def test_the_client_job_going_away_ends_the_trainer_cleanly(
    ends: tuple[Pipe, dict[str, Any]], tmp_path: Path
) -> None:
    active, env = ends
    proc = _start(tmp_path, json.dumps(env))
    try:
        _task(active, "task-0", 0, {"w": np.zeros(3)})
        assert _next(active).topic == PipeTopic.LOG
        assert _next(active).topic == PipeTopic.RESULT
        active.close()
        code, out, err = _finish(proc)
        assert code == 0, err
        report = json.loads(out)
        assert (report["answered"], report["running"], report["after_end"]) == (1, False, True)
        assert "no more tasks" in err and "gone" in err
    finally:
        _kill(proc)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("{not json", r"not valid JSON"),
        ("[1, 2]", r"must be a JSON object, got list"),
        ('{"name": "file", "pipe": "p", "site": "s"}', r"missing 'job_id'"),
        (
            '{"name": "file", "pipe": "p", "site": "s", "job_id": "j", "colour": 1}',
            r"unknown 'colour'",
        ),
        ('{"name": "", "pipe": "p", "site": "s", "job_id": "j"}', r"'name' must be a non-empty"),
        (
            '{"name": "file", "options": [], "pipe": "p", "site": "s", "job_id": "j"}',
            r"'options' must be a JSON object, got list",
        ),
        (
            '{"name": "carrier-pigeon", "pipe": "p", "site": "s", "job_id": "j"}',
            r"cannot build pipe 'carrier-pigeon': unknown pipe .*file \(plugin pipe_file\)",
        ),
        (
            '{"name": "file", "pipe": "p", "site": "s", "job_id": "j"}',
            r"cannot open pipe 'p': .*no root folder",
        ),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_the_problem(
    value: str, problem: str
) -> None:
    with pytest.raises(FlCoreError, match=rf"^environment variable FL_CORE_PIPE: {problem}"):
        session_from_environment({ENV_VAR: value})


def test_a_pipe_that_cannot_open_is_reported_against_the_variable(tmp_path: Path) -> None:
    value = {
        "name": "file",
        "options": {"root": str(tmp_path / "nowhere")},
        "pipe": "p",
        "site": "s",
        "job_id": "j",
    }
    with pytest.raises(FlCoreError, match=r"FL_CORE_PIPE: cannot open pipe 'p': .*does not exist"):
        session_from_environment({ENV_VAR: json.dumps(value)})


def test_without_the_variable_there_is_no_session() -> None:
    assert session_from_environment({}) is None


def test_a_trainer_started_with_a_bad_value_fails_saying_so(tmp_path: Path) -> None:
    proc = _start(tmp_path, '{"name": "file"}')
    try:
        code, _, err = _finish(proc)
        assert code != 0
        assert "environment variable FL_CORE_PIPE: missing 'job_id', 'pipe', 'site'" in err
    finally:
        _kill(proc)


def test_send_before_receive_is_refused_as_in_process(tmp_path: Path) -> None:
    in_process = _OnceSession("site-1", "job1", lambda *args: None, set())
    with pytest.raises(RuntimeError) as expected:
        in_process.send(FLModel(params={}))
    active = _create("file", {"root": str(tmp_path)})
    passive = _create("file", {"root": str(tmp_path)})
    active.open(PIPE, PipeSide.ACTIVE)
    passive.open(PIPE, PipeSide.PASSIVE)
    session = PipeSession(passive, "site-1", "job1")
    try:
        with pytest.raises(NoTaskError) as refused:
            session.send(FLModel(params={}))
        assert isinstance(refused.value, RuntimeError)
        assert str(refused.value) == str(expected.value)
        # A task answered once cannot be answered again.
        _task(active, "task-0", 0, {"w": np.zeros(1)})
        assert session.receive(WAIT) is not None
        session.send(FLModel(params={}))
        with pytest.raises(NoTaskError, match=r"call receive\(\) first"):
            session.send(FLModel(params={}))
        assert _next(active).headers == {"task_id": "task-0"}
    finally:
        session.close()
        active.close()
