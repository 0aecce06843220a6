"""The `file` pipe: its hook and options, the pipe contract, and what only it does."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fl_core import testing
from fl_core.errors import ConfigError
from fl_core.model import FLModel
from fl_core.plugins import Registry, make_plugin_manager
from fl_core.spec.pipe import Pipe, PipeError, PipeMessage, PipeSide
from fl_core.testing.pipe_contract import PipeContract, PipeFactory
from fl_plugins.pipe_file import hooks
from fl_plugins.pipe_file.pipe import FilePipe

pytestmark = pytest.mark.usefixtures("fl_no_threads_left")
WAIT = 30.0


class TestFilePipeContract(PipeContract):
    """The contract through the factory `pipe_file` registers; the client job picks the root."""

    component = "file"
    plugin = "pipe_file"
    send_waits_for_receiver = False


class TestFilePipeContractWithARoot(PipeContract):
    """The contract with ends built by hand around one root folder."""

    send_waits_for_receiver = False

    @pytest.fixture
    def make_pipe(self, tmp_path: Path) -> PipeFactory:
        return lambda **options: FilePipe(root=str(tmp_path), **options)

    @pytest.fixture
    def peer_factory_code(self, tmp_path: Path) -> str:
        return (
            "from fl_plugins.pipe_file.pipe import FilePipe\n"
            f"make_pipe = lambda **options: FilePipe(root={str(tmp_path)!r}, **options)\n"
        )


def test_the_contract_is_exported_from_fl_core_testing() -> None:
    assert testing.PipeContract is PipeContract


# --- the hook and options ---------------------------------------------------------


def _registry() -> Registry:
    return make_plugin_manager(autoload=False, extra=[("pipe_file", hooks)]).registry()


def test_the_hook_registers_file_and_the_factory_builds_a_pipe(tmp_path: Path) -> None:
    registry = _registry()
    assert registry.names("pipe") == {"file": "pipe_file"}
    pipe = registry.create(
        "pipe", "file", {"root": str(tmp_path), "heartbeat_interval": 0.5}, expect=Pipe
    )
    assert isinstance(pipe, FilePipe) and pipe.heartbeat_interval == 0.5


@pytest.mark.parametrize(
    ("options", "key", "problem"),
    [
        ({"root": "/x", "colour": "red"}, "colour", "no such option"),
        ({"root": 3}, "root", "expected str"),
        ({"root": "/x", "heartbeat_timeout": 0}, "heartbeat_timeout", "positive"),
        ({"root": "/x", "max_payload": 1.5}, "max_payload", "expected int"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(
    options: dict[str, object], key: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem) as info:
        _registry().create("pipe", "file", options)
    assert info.value.key == f"components.pipe.options.{key}"


def test_a_timeout_not_longer_than_the_interval_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PipeError, match="heartbeat_timeout"):
        FilePipe(str(tmp_path), heartbeat_interval=2.0, heartbeat_timeout=1.0)


def test_a_root_that_does_not_exist_or_is_not_writable_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(PipeError, match="does not exist") as info:
        FilePipe(str(missing)).open("p", PipeSide.ACTIVE)
    assert str(missing) in str(info.value)
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    with pytest.raises(PipeError, match="no folder"):
        FilePipe(str(a_file)).open("p", PipeSide.ACTIVE)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    if os.access(locked, os.W_OK):
        pytest.skip("running as a user who can write anywhere")
    with pytest.raises(PipeError, match="not writable"):
        FilePipe(str(locked)).open("p", PipeSide.ACTIVE)


# --- what only the file pipe does ---------------------------------------------------


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[FilePipe, FilePipe]]:
    active, passive = FilePipe(str(tmp_path)), FilePipe(str(tmp_path))
    active.open("job", PipeSide.ACTIVE)
    passive.open("job", PipeSide.PASSIVE)
    yield active, passive
    active.close()
    passive.close()


def _inbox(tmp_path: Path, side: PipeSide) -> list[str]:
    return sorted(os.listdir(tmp_path / "job" / side.value))


def test_a_consumed_message_file_is_removed(tmp_path: Path, pair: tuple[Pipe, Pipe]) -> None:
    active, passive = pair
    active.send(PipeMessage("a", body=b"x"), 1)
    assert [n.endswith(".msg") for n in _inbox(tmp_path, PipeSide.PASSIVE)] == [True]
    assert passive.receive(WAIT) is not None
    assert _inbox(tmp_path, PipeSide.PASSIVE) == []


def test_stale_temp_files_are_ignored(tmp_path: Path, pair: tuple[Pipe, Pipe]) -> None:
    active, passive = pair
    stale = tmp_path / "job" / "passive" / f".{0:020d}.99999-dead.tmp"
    stale.write_bytes(b"FLPIPE1\n half a message")
    assert passive.receive(0.1) is None
    active.send(PipeMessage("real"), 1)
    got = passive.receive(WAIT)
    assert got is not None and got.topic == "real"
    assert stale.exists()


def test_a_corrupt_message_is_named_moved_aside_and_the_next_one_comes(
    tmp_path: Path, pair: tuple[Pipe, Pipe]
) -> None:
    active, passive = pair
    active.send(PipeMessage("first", body={"a": 1}), 1)
    active.send(PipeMessage("second"), 1)
    first = tmp_path / "job" / "passive" / f"{0:020d}.msg"
    first.write_bytes(first.read_bytes()[:-3])  # truncated, as if the disk lost its tail
    with pytest.raises(PipeError, match=first.name) as info:
        passive.receive(WAIT)
    assert "moved aside" in str(info.value)
    assert (first.parent / (first.name + ".corrupt")).exists()
    got = passive.receive(WAIT)
    assert got is not None and got.topic == "second"


def test_a_restarted_receiver_continues_where_it_was(tmp_path: Path) -> None:
    active = FilePipe(str(tmp_path))
    active.open("job", PipeSide.ACTIVE)
    first = FilePipe(str(tmp_path))
    first.open("job", PipeSide.PASSIVE)
    for i in range(4):
        active.send(PipeMessage(f"m{i}", body=i), 1)
    got = first.receive(WAIT)
    assert got is not None and got.topic == "m0"
    first.close()
    second = FilePipe(str(tmp_path))
    second.open("job", PipeSide.PASSIVE)
    assert active.peer_alive()
    rest = [second.receive(WAIT) for _ in range(3)]
    assert [m.topic if m else None for m in rest] == ["m1", "m2", "m3"]
    second.close()
    active.close()


def test_a_restarted_sender_numbers_after_what_is_waiting(tmp_path: Path) -> None:
    passive = FilePipe(str(tmp_path))
    passive.open("job", PipeSide.PASSIVE)
    first = FilePipe(str(tmp_path))
    first.open("job", PipeSide.ACTIVE)
    first.send(PipeMessage("before"), 1)
    first.close()
    second = FilePipe(str(tmp_path))
    second.open("job", PipeSide.ACTIVE)
    second.send(PipeMessage("after"), 1)
    got = [passive.receive(WAIT) for _ in range(2)]
    assert [m.topic if m else None for m in got] == ["before", "after"]
    second.close()
    passive.close()


SLOW_WRITER = textwrap.dedent(
    """
    import sys, time
    import numpy as np
    from fl_core.cell.payload import encode_payload
    from fl_core.model import FLModel
    import fl_plugins.pipe_file.pipe as pipe_module
    from fl_plugins.pipe_file.pipe import FilePipe
    from fl_core.spec.pipe import PipeMessage, PipeSide

    real_write = pipe_module._write_all
    def slow_write(fd, data):  # a sender on a slow disk: the file grows for a while
        view = memoryview(data).cast("B")
        for start in range(0, view.nbytes, 1 << 20):
            real_write(fd, view[start : start + (1 << 20)])
            time.sleep(0.01)
    pipe_module._write_all = slow_write

    pipe = FilePipe(sys.argv[1])
    pipe.open("job", PipeSide.ACTIVE)
    model = FLModel(params={"a": np.ones(32 << 20, dtype=np.uint8)})
    pipe.send(PipeMessage("slow", body=model), 60)
    pipe.close()
    """
)


def test_a_reader_never_sees_a_message_before_its_rename(tmp_path: Path) -> None:
    passive = FilePipe(str(tmp_path))
    passive.open("job", PipeSide.PASSIVE)
    writer = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(tmp_path)])
    try:
        inbox = tmp_path / "job" / "passive"
        deadline = time.monotonic() + WAIT
        saw_temp = False
        got = None
        while got is None and time.monotonic() < deadline:
            saw_temp = saw_temp or any(n.endswith(".tmp") for n in os.listdir(inbox))
            got = passive.receive(0.001)
        assert saw_temp, "the writer was too fast to watch it write"
        assert got is not None and isinstance(got.body, FLModel)
        assert np.array_equal(got.body.params["a"], np.ones(32 << 20, dtype=np.uint8))
    finally:
        assert writer.wait(WAIT) == 0
        passive.close()
