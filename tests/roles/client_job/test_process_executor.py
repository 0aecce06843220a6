"""The process executor: a real training process per site, reached through each real pipe."""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_core.config import LaunchMode
from fl_core.model import FLModel
from fl_core.pids import pid_alive
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.roles.client_job.in_process import Assignment, TaskOutcome
from fl_core.roles.client_job.process_executor import ProcessExecutor
from fl_core.spec.launcher import Launcher
from fl_core.spec.pipe import Pipe
from fl_core.testing.stream_contract import wait_until

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")

WAIT = 60.0

# Each script records its pid, so a test can tell processes apart and check none is left.
PRELUDE = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    import numpy as np
    import fl_core.client as flare

    Path("pids").mkdir(exist_ok=True)
    Path("pids", str(os.getpid())).touch()
    """
)

ECHO = """
flare.init()
while flare.is_running():
    model = flare.receive()
    if model is None:
        break
    flare.log("seen", float(len(model.params)), step=1)
    flare.send(flare.FLModel(
        params={k: v + 1 for k, v in model.params.items()},
        meta={"num_samples": 2, "pid": os.getpid()},
    ))
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return make_plugin_manager().registry()


@pytest.fixture(params=["file", "cell"])
def pipe_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_executor(
    tmp_path: Path, registry: Registry, pipe_name: str
) -> Iterator[Callable[..., ProcessExecutor]]:
    made: list[ProcessExecutor] = []
    logged: list[tuple[str, str, float, int | None]] = []

    def make(
        body: str,
        launch: LaunchMode = LaunchMode.ONCE,
        pipe_options: dict[str, object] | None = None,
        **options: object,
    ) -> ProcessExecutor:
        script = tmp_path / "train.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        chosen = {"heartbeat_interval": 0.2, **(pipe_options or {})}
        if pipe_name == "cell":
            chosen.pop("root", None)  # a file pipe option

        def make_pipe() -> Pipe:
            pipe = registry.create("pipe", pipe_name, chosen, expect=Pipe)
            assert isinstance(pipe, Pipe)
            pipe.use_transports(lambda name, opts: registry.create("transport", name, opts))
            return pipe

        launcher = registry.create("launcher", "process", {}, expect=Launcher)
        executor = ProcessExecutor(
            script,
            launch,
            job_id="job1",
            workspace=Path(str(options.pop("workspace", tmp_path / "ws"))),
            launcher=launcher,
            make_pipe=make_pipe,
            pipe_name=pipe_name,
            logs=lambda *entry: logged.append(entry),
            **options,  # type: ignore[arg-type]
        )
        executor.logged = logged  # type: ignore[attr-defined]
        made.append(executor)
        return executor

    yield make
    for executor in made:
        executor.stop("the test ended", 2.0)
    pids = _pids(tmp_path)
    assert not [p for p in pids if pid_alive(p)], "a training process outlived its executor"


def _pids(tmp_path: Path) -> list[int]:
    folder = tmp_path / "ws" / "trainers"
    return [int(p.name) for p in folder.glob("*/pids/*")] if folder.exists() else []


def _all_end(pids: list[int]) -> None:
    """Wait for every pid to end: a task's outcome comes before its process is ended."""
    wait_until(lambda: not any(pid_alive(p) for p in pids), WAIT, "the training processes to end")


def _task(number: int, params: dict[str, np.ndarray] | None = None) -> Assignment:
    model = FLModel(params=params if params is not None else {"w": np.zeros(3, np.float32)})
    return Assignment(f"task-{number}", "train", number, model)


def _run(executor: ProcessExecutor, task: Assignment, site: str = "site-1") -> TaskOutcome:
    got: list[TaskOutcome] = []
    done = threading.Event()

    def finish(outcome: TaskOutcome) -> None:
        got.append(outcome)
        done.set()

    executor.execute(site, task, finish)
    assert done.wait(WAIT), "the task never finished"
    assert len(got) == 1
    return got[0]


def test_once_runs_every_task_in_one_process_and_forwards_logs(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    executor = make_executor(ECHO)
    results = [_run(executor, _task(n)) for n in range(3)]
    assert all(r.result is not None for r in results), [r.reason for r in results]
    pids = {r.result.meta["pid"] for r in results if r.result is not None}
    assert len(pids) == 1
    result = results[0].result
    assert result is not None
    np.testing.assert_array_equal(result.params["w"], np.ones(3, np.float32))
    assert result.params["w"].dtype == np.float32
    assert ("site-1", "seen", 1.0, 1) in executor.logged  # type: ignore[attr-defined]
    assert executor.stop("done", 5.0) == []
    assert not any(pid_alive(p) for p in _pids(tmp_path))


def test_per_task_starts_a_fresh_process_for_each_task_and_waits_for_its_exit(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    executor = make_executor(ECHO, LaunchMode.PER_TASK)
    results = [_run(executor, _task(n)) for n in range(2)]
    pids = [r.result.meta["pid"] for r in results if r.result is not None]
    assert len(set(pids)) == 2, [r.reason for r in results]
    assert not pid_alive(int(pids[0]))  # ended before the second task began
    _all_end([int(p) for p in pids])


def test_each_site_gets_its_own_process(make_executor: Callable[..., ProcessExecutor]) -> None:
    executor = make_executor(ECHO)
    outcomes: dict[str, TaskOutcome] = {}
    done = threading.Barrier(3)

    def run(site: str) -> None:
        outcomes[site] = _run(executor, _task(1), site)
        done.wait(WAIT)

    for site in ("site-1", "site-2"):
        threading.Thread(target=run, args=(site,)).start()
    done.wait(WAIT)
    pids = {o.result.meta["pid"] for o in outcomes.values() if o.result is not None}
    assert len(pids) == 2


def test_a_crashed_script_fails_the_task_with_its_exit_code_and_stderr_tail(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        print("about to fail", file=sys.stderr)
        raise ZeroDivisionError("the model is empty")
        """
    )
    outcome = _run(executor, _task(1))
    assert outcome.result is None
    assert "exited with code 1" in outcome.reason
    assert "ZeroDivisionError: the model is empty" in outcome.reason
    assert "about to fail" in outcome.detail and "Traceback" in outcome.detail


def test_after_a_crash_the_next_task_gets_a_fresh_process(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    # Crashes on its first task only: the marker file tells the second process apart.
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        if not Path("crashed").exists():
            Path("crashed").touch()
            sys.exit(7)
        flare.send(flare.FLModel(params=model.params, meta={"pid": os.getpid()}))
        """
    )
    first = _run(executor, _task(1))
    assert first.result is None and "exited with code 7" in first.reason
    second = _run(executor, _task(2))
    assert second.result is not None, second.reason
    assert len(_pids(tmp_path)) == 2


def test_a_script_ending_without_a_result_fails_the_task(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor("flare.init()\nmodel = flare.receive()\n")
    outcome = _run(executor, _task(1))
    assert outcome.result is None
    assert "exited with code 0" in outcome.reason and "without sending a result" in outcome.reason


def test_a_killed_script_fails_the_task_naming_the_signal(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    outcome = _run(executor, _task(1))
    assert outcome.result is None
    assert "was killed by SIGKILL" in outcome.reason


def test_a_hanging_script_is_stopped_after_the_task_timeout(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        time.sleep(600)
        """,
        task_timeout=2.0,
    )
    outcome = _run(executor, _task(1))
    assert outcome.result is None
    assert "did not send a result within 2 s; it was stopped" in outcome.reason
    pids = _pids(tmp_path)
    assert pids
    _all_end(pids)


def test_a_script_that_never_opens_the_pipe_is_stopped_after_the_start_timeout(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    executor = make_executor("time.sleep(600)\n", start_timeout=2.0)
    outcome = _run(executor, _task(1))
    assert outcome.result is None
    assert "did not open its end of the pipe within 2 s" in outcome.reason
    assert "flare.init()" in outcome.reason
    _all_end(_pids(tmp_path))


def test_stop_fails_the_running_task_and_ends_the_process_and_its_children(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path
) -> None:
    executor = make_executor(
        """
        import subprocess
        flare.init()
        model = flare.receive()
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        Path("pids", str(child.pid)).touch()
        time.sleep(600)
        """
    )
    got: list[TaskOutcome] = []
    executor.execute("site-1", _task(1), got.append)
    wait_until(lambda: len(_pids(tmp_path)) == 2, WAIT, "the script and its child to start")
    assert executor.stop("the job was aborted", 1.0) == []
    assert [o.reason for o in got] == ["the job was aborted"]
    assert not any(pid_alive(p) for p in _pids(tmp_path))


def test_a_task_after_stop_fails_at_once(make_executor: Callable[..., ProcessExecutor]) -> None:
    executor = make_executor(ECHO)
    executor.stop("the job ended", 1.0)
    assert _run(executor, _task(1)).reason == "the job ended"


def test_the_script_runs_with_this_interpreter_and_its_arguments(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        flare.send(flare.FLModel(meta={"exe": sys.executable, "argv": sys.argv[1:]}))
        """,
        args=["--lr", "0.1"],
    )
    outcome = _run(executor, _task(1))
    assert outcome.result is not None, outcome.reason
    assert os.path.realpath(str(outcome.result.meta["exe"])) == os.path.realpath(sys.executable)
    assert outcome.result.meta["argv"] == ["--lr", "0.1"]


def test_torch_tensors_sent_by_the_script_come_back_as_tensors(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    pytest.importorskip("torch")
    executor = make_executor(
        """
        import torch
        flare.init()
        while (model := flare.receive()) is not None:
            w = model.params["w"]
            kind = type(w).__name__
            flare.send(flare.FLModel(params={"w": torch.as_tensor(w) * 2}, meta={"got": kind}))
        """
    )
    first = _run(executor, _task(1, {"w": np.full(4, 1.5, np.float32)}))
    second = _run(executor, _task(2, {"w": np.full(4, 1.5, np.float32)}))
    assert first.result is not None and second.result is not None
    assert (first.result.meta["got"], second.result.meta["got"]) == ("ndarray", "Tensor")
    w = second.result.params["w"]
    assert isinstance(w, np.ndarray) and w.dtype == np.float32
    np.testing.assert_array_equal(w, np.full(4, 3.0, np.float32))


def test_an_idle_process_is_told_end_and_exits_by_itself(
    make_executor: Callable[..., ProcessExecutor], caplog: pytest.LogCaptureFixture
) -> None:
    executor = make_executor(ECHO)
    assert _run(executor, _task(1)).result is not None
    with caplog.at_level("INFO", logger="fl_core.roles.client_job.process_executor"):
        assert executor.stop("done", 30.0) == []
    assert "training process 1 ended (exited with code 0)" in caplog.text
    assert "did not exit" not in caplog.text


def test_stop_ends_a_hand_over_to_a_script_that_never_receives(
    make_executor: Callable[..., ProcessExecutor],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With the cell pipe the hand-over waits for the script's receive(), which never comes.
    executor = make_executor("flare.init()\ntime.sleep(600)\n")
    got: list[TaskOutcome] = []
    with caplog.at_level(logging.DEBUG, logger="fl_core.roles.client_job.process_executor"):
        executor.execute("site-1", _task(1), got.append)
        wait_until(
            lambda: "handing task task-1 to training process" in caplog.text,
            WAIT,
            "the executor to begin the hand-over",
        )
    assert executor.stop("the job was aborted", 1.0) == []
    assert [o.reason for o in got] == ["the job was aborted"]
    assert not any(pid_alive(p) for p in _pids(tmp_path))


def test_a_relative_workspace_works_though_the_script_runs_in_another_folder(
    make_executor: Callable[..., ProcessExecutor],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    executor = make_executor(ECHO, workspace=Path("ws"))
    outcome = _run(executor, _task(1))
    assert outcome.result is not None, outcome.reason


def test_jobs_sharing_a_pipe_root_never_see_each_others_messages(
    make_executor: Callable[..., ProcessExecutor], tmp_path: Path, pipe_name: str
) -> None:
    if pipe_name != "file":
        pytest.skip("only the file pipe has a root")
    root = tmp_path / "shared"
    root.mkdir()
    # The first job's script never answers: its task and `end` stay unread in the root.
    first = make_executor(
        "flare.init()\ntime.sleep(600)\n", pipe_options={"root": str(root)}, task_timeout=1.0
    )
    assert "did not send a result" in _run(first, _task(1)).reason
    # The outcome comes before the process is ended: stop returns once it is.
    assert first.stop("done", 10.0) == []
    left = set(root.iterdir())  # the killed script's pipe: its messages stay unread
    assert len(left) == 1
    second = make_executor(ECHO, pipe_options={"root": str(root)})
    outcome = _run(second, _task(2, {"w": np.full(2, 5.0)}))
    assert outcome.result is not None, outcome.reason
    np.testing.assert_array_equal(outcome.result.params["w"], np.full(2, 6.0))
    second.stop("done", 5.0)
    assert set(root.iterdir()) == left  # the pipe whose script closed its end went


def test_two_executors_in_one_workspace_get_separate_pipe_folders(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    # A job restarted in the same workspace while the old one's process still runs.
    first = make_executor(ECHO)
    assert _run(first, _task(1)).result is not None
    second = make_executor(ECHO)
    outcome = _run(second, _task(2))
    assert outcome.result is not None, outcome.reason
    assert first.stop("done", 10.0) == [] and second.stop("done", 10.0) == []


def test_threads_bounds_how_many_sites_run_at_once(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    # Each script claims a lock file while it works; a second one at once would find it taken.
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        claim = Path("..", "..", "running")
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            flare.send(flare.FLModel(meta={"overlap": True}))
        else:
            time.sleep(0.5)
            os.close(fd)
            os.unlink(claim)
            flare.send(flare.FLModel(meta={"overlap": False}))
        """,
        LaunchMode.PER_TASK,
        threads=1,
    )
    outcomes: dict[str, TaskOutcome] = {}
    finished = threading.Event()

    def record(site: str) -> Callable[[TaskOutcome], None]:
        def done(outcome: TaskOutcome) -> None:
            outcomes[site] = outcome
            if len(outcomes) == 3:
                finished.set()

        return done

    for site in ("site-1", "site-2", "site-3"):
        executor.execute(site, _task(1), record(site))
    assert finished.wait(WAIT)
    seen = [o.result.meta["overlap"] if o.result else o.reason for o in outcomes.values()]
    assert seen == [False] * 3


def test_a_live_script_that_goes_quiet_is_not_taken_for_dead(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    # A stopped process sends no heartbeats, like one whose long call holds the GIL.
    executor = make_executor(
        """
        import subprocess
        flare.init()
        model = flare.receive()
        wake = f"import os, signal, time; time.sleep(3); os.kill({os.getpid()}, signal.SIGCONT)"
        subprocess.Popen([sys.executable, "-c", wake])
        os.kill(os.getpid(), signal.SIGSTOP)
        flare.send(flare.FLModel(params=model.params))
        """,
        pipe_options={"heartbeat_timeout": 1.0},
    )
    outcome = _run(executor, _task(1))
    assert outcome.result is not None, outcome.reason


def test_a_per_task_result_is_handed_on_before_the_process_is_ended(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor(
        """
        flare.init()
        model = flare.receive()
        flare.send(flare.FLModel(meta={"pid": os.getpid()}))
        time.sleep(600)  # a slow teardown: the result must not wait for it
        """,
        LaunchMode.PER_TASK,
    )
    seen: list[bool] = []
    done = threading.Event()

    def finish(outcome: TaskOutcome) -> None:
        assert outcome.result is not None, outcome.reason
        seen.append(pid_alive(int(outcome.result.meta["pid"])))
        done.set()

    executor.execute("site-1", _task(1), finish)
    assert done.wait(WAIT)
    assert seen == [True]


def test_a_failing_callback_does_not_stop_the_site_from_answering(
    make_executor: Callable[..., ProcessExecutor],
) -> None:
    executor = make_executor(ECHO)

    def broken(outcome: TaskOutcome) -> None:
        raise RuntimeError("the runner broke")

    executor.execute("site-1", _task(1), broken)
    assert _run(executor, _task(2)).result is not None


def test_peer_options_that_are_not_json_fail_the_task_and_leave_nothing_open(
    tmp_path: Path, registry: Registry
) -> None:
    from fl_plugins.pipe_file.pipe import FilePipe

    class Odd(FilePipe):
        def peer_options(self) -> dict[str, object]:
            return {"root": Path("/tmp")}

    script = tmp_path / "train.py"
    script.write_text(PRELUDE + ECHO)
    launcher = registry.create("launcher", "process", {}, expect=Launcher)
    executor = ProcessExecutor(
        script,
        LaunchMode.ONCE,
        job_id="job1",
        workspace=tmp_path / "ws",
        launcher=launcher,
        make_pipe=Odd,
        pipe_name="file",
        logs=lambda *entry: None,
    )
    outcome = _run(executor, _task(1))
    assert "peer_options() are not plain JSON" in outcome.reason
    executor.stop("done", 1.0)
    assert list((tmp_path / "ws" / "trainers" / "site-1").glob("pipe-*")) == []
