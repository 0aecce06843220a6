"""The pipe contract: one test suite that every `Pipe` must pass.

Subclass `PipeContract` in a test module and name the pipe as a job config
would: `component` (its registered name) and `plugin` (the entry-point name
of the plugin that registers it, or `(name, hooks_module)`). The suite then
builds ends the way a client job does: the ACTIVE end from the registered
factory with the `pipe_options` fixture's options (default none), given its
transport maker (`Pipe.use_transports`) and a `PipeContext` (`prepare`); every
PASSIVE end, in this process or a peer process, from the registered factory
with nothing but the open ACTIVE end's `peer_options()`::

    from fl_core.testing import PipeContract

    class TestMyPipe(PipeContract):
        component = "mypipe"
        plugin = "my_plugin"
        send_waits_for_receiver = True

To build ends another way, give the class two fixtures instead:

- `make_pipe`: a factory `(**options) -> Pipe`; each call returns a fresh,
  unopened end configured to meet the others (sharing a folder, an
  address); `options` are the common pipe options (`heartbeat_interval`,
  `heartbeat_timeout`, `max_payload`) that some cases set;
- `peer_factory_code`: Python source that, run in a separate process, binds
  `make_pipe` (same signature) to build an end that meets the test's ends::

    class TestMyPipe(PipeContract):
        @pytest.fixture
        def make_pipe(self, tmp_path):
            return lambda **options: MyPipe(address=str(tmp_path / "sock"), **options)

        @pytest.fixture
        def peer_factory_code(self, tmp_path):
            return f"from my_plugin.pipe import MyPipe\\n" \\
                   f"make_pipe = lambda **o: MyPipe(address={str(tmp_path / 'sock')!r}, **o)"

Capability flags: `send_waits_for_receiver` (True if `send` returns False
when nobody receives in time; a pipe that just publishes sets False).
A case also builds an end in a peer process from nothing but an ACTIVE
end's `peer_options()` (through the registered factory; with `make_pipe`,
`pipe_class`, by default the end's own class, called with them), as a
client job does for its training process. Like the runtime, the peer
process hands every end it builds the installed transports
(`Pipe.use_transports`).
`big_model_bytes` sizes the large-model case; `wait` bounds every wait
(reached only when something is broken). The ends a case opens are closed
after it, so a suite run with `fl_no_threads_left` catches leaked threads.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fl_core.model import FLModel
from fl_core.spec.pipe import (
    PeerGoneError,
    Pipe,
    PipeContext,
    PipeError,
    PipeMessage,
    PipeSide,
)
from fl_core.testing.registered import PluginRef, pipe_factory, plugin_source
from fl_core.testing.stream_contract import RssPeak, wait_until

__all__ = ["PipeContract", "PipeFactory", "RegisteredEnds"]

PipeFactory = Callable[..., Pipe]
"""`make_pipe(**options)`: a fresh unopened end."""

PEER = textwrap.dedent(
    """
    import hashlib, json, sys, time
    import numpy as np
    from fl_core.model import FLModel
    from fl_core.spec.pipe import PipeMessage, PipeSide

    from fl_core.plugins import make_plugin_manager

    config = json.loads(sys.argv[1])
    exec(config["factory"])
    pipe = make_pipe(**config["options"])
    # As the training process does: transports by name from what is installed.
    registry = make_plugin_manager().registry()
    pipe.use_transports(lambda name, opts: registry.create("transport", name, opts))
    pipe.open(config["name"], PipeSide(config["side"]))
    if not pipe.send(PipeMessage("hello"), config["wait"]):
        sys.exit("nobody took the hello")
    if config["action"] == "big":
        big = np.arange(config["bytes"] // 4, dtype=np.float32)
        small = np.arange(10, dtype=np.int64)
        digest = hashlib.sha256(big.data).hexdigest()
        model = FLModel(params={"big": big, "small": small})
        if not pipe.send(PipeMessage("big", {"sha256": digest}, model), config["wait"]):
            sys.exit("nobody took the big model")
        del model, big
        pipe.receive(config["wait"])  # the test's goodbye
    else:
        time.sleep(config["wait"])  # until the test kills this process
    pipe.close()
    """
)
"""The peer process: opens the PASSIVE end, says hello, then does `action`."""


def _model() -> FLModel:
    return FLModel(
        params={
            "w": np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4),
            "steps": np.arange(-5, 5, dtype=np.int64),
            "half": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
            "scalar": np.array(7.25, dtype=np.float32),
        },
        metrics={"loss": 0.25},
        meta={"num_samples": 3},
    )


def _same_body(got: object, sent: object) -> bool:
    if isinstance(sent, FLModel):
        if not isinstance(got, FLModel) or set(got.params) != set(sent.params):
            return False
        for key, array in sent.params.items():
            other = got.params[key]
            if other.dtype != array.dtype or other.shape != array.shape:
                return False
            if not np.array_equal(other, array):
                return False
        return got.metrics == sent.metrics and got.meta == sent.meta
    if isinstance(sent, bytes):
        return isinstance(got, bytes | bytearray | memoryview) and bytes(got) == sent
    return got == sent


class RegisteredEnds:
    """Pipe ends from a registered factory, built as a client job and its trainer build them.

    Calling it builds an end to open ACTIVE: the factory with the given
    options, then `use_transports` and `prepare` with a fresh folder and
    token. `passive(**options)` builds an end from the newest open ACTIVE
    end's `peer_options()` (with `options` over them); `peer_code()` is the
    source that does the same in another process.
    """

    FQCN = "site-1.contract"

    def __init__(
        self, component: str, plugin: PluginRef | None, folder: Path, **options: Any
    ) -> None:
        self.component = component
        self.plugin = plugin
        self.folder = folder
        self.options = options
        self._make = pipe_factory(component, plugin)
        self._made: list[Pipe] = []

    def __call__(self, **options: Any) -> Pipe:
        pipe = self._make(**{**self.options, **options})
        folder = self.folder / f"end-{len(self._made)}"
        folder.mkdir(parents=True)
        pipe.prepare(PipeContext(folder=folder, fqcn=self.FQCN, token=secrets.token_hex(16)))
        self._made.append(pipe)
        return pipe

    def peer_options(self) -> dict[str, Any]:
        """The newest open ACTIVE end's `peer_options()`, as JSON carries them."""
        for pipe in reversed(self._made):
            try:
                options = pipe.peer_options()
            except PipeError:
                continue  # not an open ACTIVE end
            return dict(json.loads(json.dumps(options)))
        pytest.fail("no ACTIVE end is open to take peer_options from")

    def passive(self, **options: Any) -> Pipe:
        """An end to open PASSIVE, meeting the newest open ACTIVE end."""
        pipe = self._make(**{**self.peer_options(), **options})
        self._made.append(pipe)
        return pipe

    def peer_code(self) -> str:
        """Source binding `make_pipe(**options)` in a peer process, like `passive`."""
        return (
            "from fl_core.testing.registered import pipe_factory\n"
            f"make_pipe = pipe_factory({self.component!r}, {plugin_source(self.plugin)}, "
            f"**{self.peer_options()!r})\n"
        )


class PipeContract:
    """What every pipe must do; see the module docstring for how to use it."""

    plugin: ClassVar[PluginRef | None] = None
    """The plugin that registers the pipe; None: every installed plugin."""
    component: ClassVar[str] = ""
    """The pipe's registered name (what a job config writes)."""

    send_waits_for_receiver: ClassVar[bool] = False
    big_model_bytes: ClassVar[int] = 256 * 1024 * 1024
    wait: ClassVar[float] = 60.0
    name: ClassVar[str] = "contract"
    pipe_class: ClassVar[type[Pipe] | None] = None
    """The class `peer_options()` are passed to in the peer process (default: the end's own)."""

    @pytest.fixture
    def pipe_options(self) -> dict[str, Any]:
        """The options of the ACTIVE ends the registered factory builds (default none)."""
        return {}

    @pytest.fixture
    def make_pipe(self, tmp_path: Path, pipe_options: dict[str, Any]) -> PipeFactory:
        """`(**options) -> Pipe`: by default `RegisteredEnds` of `component`."""
        if not self.component:
            raise NotImplementedError(
                "a PipeContract subclass must set `component` (and `plugin`) "
                "or define the make_pipe fixture"
            )
        return RegisteredEnds(self.component, self.plugin, tmp_path / "ends", **pipe_options)

    @pytest.fixture
    def peer_factory_code(self) -> str:
        """Python source binding `make_pipe(**options)` in a peer process.

        Empty by default: the peer builds its end from the open ACTIVE end's
        `peer_options()` (`RegisteredEnds.peer_code`).
        """
        if not self.component:
            raise NotImplementedError("a PipeContract subclass must define peer_factory_code")
        return ""

    @pytest.fixture
    def ends(self, make_pipe: PipeFactory) -> Iterator[Callable[..., Pipe]]:
        """`ends(side, **options)`: an opened end, closed after the test."""
        opened: list[Pipe] = []

        def open_end(side: PipeSide, **options: Any) -> Pipe:
            if side is PipeSide.PASSIVE and isinstance(make_pipe, RegisteredEnds):
                pipe = make_pipe.passive(**options)
            else:
                pipe = make_pipe(**options)
            pipe.open(self.name, side)
            opened.append(pipe)
            return pipe

        yield open_end
        for pipe in reversed(opened):
            pipe.close()

    @pytest.fixture
    def peer(
        self, peer_factory_code: str, make_pipe: PipeFactory
    ) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
        """`peer(action, **options)`: a process holding the PASSIVE end; killed after the test."""
        started: list[subprocess.Popen[bytes]] = []

        def start(action: str, factory: str = "", **options: Any) -> subprocess.Popen[bytes]:
            code = factory or peer_factory_code
            if not code and isinstance(make_pipe, RegisteredEnds):
                code = make_pipe.peer_code()
            config = {
                "factory": code,
                "options": options,
                "name": self.name,
                "side": PipeSide.PASSIVE.value,
                "action": action,
                "wait": self.wait,
                "bytes": self.big_model_bytes,
            }
            process = subprocess.Popen([sys.executable, "-c", PEER, json.dumps(config)])
            started.append(process)
            return process

        yield start
        for process in started:
            if process.poll() is None:
                process.kill()
            process.wait(self.wait)

    def _exchange(self, sender: Pipe, receiver: Pipe, message: PipeMessage) -> PipeMessage:
        """Send on a thread (a pipe may wait for its receiver), receive here."""
        sent: list[bool] = []
        thread = threading.Thread(target=lambda: sent.append(sender.send(message, self.wait)))
        thread.start()
        try:
            got = receiver.receive(self.wait)
        finally:
            thread.join(self.wait)
        assert sent == [True], "send did not report the message taken"
        assert got is not None, f"message {message.topic!r} did not arrive"
        return got

    def _wait_gone(self, pipe: Pipe) -> PeerGoneError:
        """Receive until `PeerGoneError`; fail if it does not come within `wait`."""
        with pytest.raises(PeerGoneError) as info:
            for _ in range(int(self.wait / 0.5)):
                if pipe.receive(0.5) is not None:
                    pytest.fail("a message came from a peer that is gone")
        return info.value

    def test_every_body_kind_goes_both_ways_unchanged(self, ends: Callable[..., Pipe]) -> None:
        active, passive = ends(PipeSide.ACTIVE), ends(PipeSide.PASSIVE)
        bodies: list[object] = [None, b"\x00raw\xffbytes", {"a": [1, 2.5, "x"], "b": None}]
        bodies.append(_model())
        for sender, receiver in ((active, passive), (passive, active)):
            for index, body in enumerate(bodies):
                message = PipeMessage(f"t{index}", {"k": str(index)}, body)
                got = self._exchange(sender, receiver, message)
                assert (got.topic, got.headers) == (message.topic, message.headers)
                assert _same_body(got.body, body), f"body {index} changed: {got.body!r}"

    def test_messages_arrive_in_order(self, ends: Callable[..., Pipe]) -> None:
        active, passive = ends(PipeSide.ACTIVE), ends(PipeSide.PASSIVE)
        sent: list[bool] = []

        def send_all() -> None:
            sent.extend(active.send(PipeMessage(f"m{i}", body=i), self.wait) for i in range(100))

        thread = threading.Thread(target=send_all)
        thread.start()
        got = [passive.receive(self.wait) for _ in range(100)]
        thread.join(self.wait)
        assert all(sent) and len(sent) == 100
        assert [(m.topic, m.body) if m else None for m in got] == [(f"m{i}", i) for i in range(100)]

    def test_receive_returns_none_when_nothing_was_sent(self, ends: Callable[..., Pipe]) -> None:
        ends(PipeSide.ACTIVE)
        passive = ends(PipeSide.PASSIVE)
        assert passive.receive(0.2) is None

    def test_send_is_false_when_nobody_receives(self, ends: Callable[..., Pipe]) -> None:
        if not self.send_waits_for_receiver:
            pytest.skip("this pipe publishes without waiting for a receiver")
        active = ends(PipeSide.ACTIVE)
        ends(PipeSide.PASSIVE)
        assert active.send(PipeMessage("unheard"), 0.2) is False

    def test_both_ends_see_each_other_alive(self, ends: Callable[..., Pipe]) -> None:
        active, passive = ends(PipeSide.ACTIVE), ends(PipeSide.PASSIVE)
        wait_until(lambda: active.peer_alive() and passive.peer_alive(), self.wait, "heartbeats")

    def test_a_big_model_costs_the_receiver_about_its_size(
        self, ends: Callable[..., Pipe], peer: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        active = ends(PipeSide.ACTIVE)
        peer("big")
        hello = active.receive(self.wait)
        assert hello is not None and hello.topic == "hello"
        with RssPeak() as rss:
            got = active.receive(self.wait)
        assert got is not None and got.topic == "big"
        assert isinstance(got.body, FLModel)
        big = got.body.params["big"]
        assert big.dtype == np.float32 and big.nbytes == self.big_model_bytes // 4 * 4
        assert hashlib.sha256(big.data).hexdigest() == got.headers["sha256"]
        assert np.array_equal(got.body.params["small"], np.arange(10, dtype=np.int64))
        assert rss.growth < 1.5 * self.big_model_bytes, (
            f"receiving a {self.big_model_bytes >> 20} MiB model grew RSS by {rss.growth >> 20} MiB"
        )
        active.send(PipeMessage("bye"), self.wait)

    def test_the_peer_closing_makes_receive_raise(self, ends: Callable[..., Pipe]) -> None:
        active, passive = ends(PipeSide.ACTIVE), ends(PipeSide.PASSIVE)
        if not self.send_waits_for_receiver:  # a waiting send would need a receiver thread
            passive.send(PipeMessage("last"), self.wait)
        passive.close()
        if not self.send_waits_for_receiver:
            last = active.receive(self.wait)
            assert last is not None and last.topic == "last", "a message sent before close is lost"
        error = self._wait_gone(active)
        assert error.side is PipeSide.ACTIVE and error.name == self.name
        assert self.name in str(error) and "active" in str(error)

    def test_a_killed_peer_makes_receive_raise(
        self, ends: Callable[..., Pipe], peer: Callable[..., subprocess.Popen[bytes]]
    ) -> None:
        options = {"heartbeat_interval": 0.2, "heartbeat_timeout": 2.0}
        active = ends(PipeSide.ACTIVE, **options)
        process = peer("sleep", **options)
        hello = active.receive(self.wait)
        assert hello is not None and hello.topic == "hello"
        wait_until(active.peer_alive, self.wait, "the peer's heartbeat")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(self.wait)
        error = self._wait_gone(active)
        assert error.side is PipeSide.ACTIVE
        assert not active.peer_alive()

    def test_a_body_over_max_payload_is_refused_by_the_sender(
        self, ends: Callable[..., Pipe]
    ) -> None:
        active = ends(PipeSide.ACTIVE, max_payload=1024)
        ends(PipeSide.PASSIVE)
        with pytest.raises(PipeError, match="1024"):
            active.send(PipeMessage("huge", body=b"x" * 4096), self.wait)

    def test_a_body_over_max_payload_is_refused_by_the_receiver(
        self, ends: Callable[..., Pipe]
    ) -> None:
        active, passive = ends(PipeSide.ACTIVE), ends(PipeSide.PASSIVE, max_payload=1024)
        outcome: list[object] = []

        def send() -> None:
            try:
                outcome.append(active.send(PipeMessage("huge", body=b"x" * 4096), self.wait))
            except PipeError as exc:
                outcome.append(exc)

        thread = threading.Thread(target=send)
        thread.start()
        with pytest.raises(PipeError, match="1024"):
            passive.receive(self.wait)
        thread.join(self.wait)
        assert outcome and outcome[0] is not None
        # The refused message does not break the pipe.
        got = self._exchange(active, passive, PipeMessage("small", body=b"ok"))
        assert got.topic == "small"

    def test_peer_options_build_an_end_that_meets_this_one_in_another_process(
        self,
        make_pipe: PipeFactory,
        peer: Callable[..., subprocess.Popen[bytes]],
        tmp_path: Path,
    ) -> None:
        # What a client job does: prepare, open ACTIVE, hand peer_options to the trainer.
        active = make_pipe()
        folder = tmp_path / "pipe-context"
        folder.mkdir()
        active.prepare(PipeContext(folder=folder, fqcn="site-1.contract", token="s3cret"))
        active.open(self.name, PipeSide.ACTIVE)
        try:
            options = json.loads(json.dumps(active.peer_options()))
            if isinstance(make_pipe, RegisteredEnds):
                code = make_pipe.peer_code()  # the registered factory, as a trainer does
            else:
                cls = self.pipe_class or type(active)
                code = (
                    f"from {cls.__module__} import {cls.__qualname__} as _Pipe\n"
                    f"make_pipe = lambda **o: _Pipe(**{{**{options!r}, **o}})"
                )
            peer("sleep", factory=code)
            hello = active.receive(self.wait)
            assert hello is not None and hello.topic == "hello"
        finally:
            active.close()

    def test_peer_options_need_an_open_active_end(self, make_pipe: PipeFactory) -> None:
        unopened = make_pipe()
        with pytest.raises(PipeError):
            unopened.peer_options()
        unopened.close()

    def test_close_is_idempotent_and_a_closed_end_refuses_work(
        self, make_pipe: PipeFactory
    ) -> None:
        never_opened = make_pipe()
        never_opened.close()
        pipe = make_pipe()
        pipe.open(self.name, PipeSide.ACTIVE)
        pipe.close()
        pipe.close()
        with pytest.raises(PipeError):
            pipe.send(PipeMessage("late"), 0.1)
        assert not pipe.peer_alive()
