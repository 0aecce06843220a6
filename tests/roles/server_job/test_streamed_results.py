"""The server job hands streamed results to `on_stream` array by array, over real cells."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from fl_core.cell.cell import Cell, CellResources
from fl_core.cell.channels import Channel
from fl_core.cell.message import Message
from fl_core.errors import CellError
from fl_core.model import FLModel
from fl_core.roles.protocol.task import Outcome, TaskHeader, TaskKind, Topic
from fl_core.roles.server_job.runner import ServerRunner
from fl_core.spec.workflow import IncomingResult, Task, Workflow, WorkflowContext
from fl_core.testing.stream_contract import wait_until
from fl_plugins.transport_inprocess.transport import InProcessTransport
from fl_plugins.workflow_sag.aggregator import WeightedAggregator

MiB = 1024 * 1024
N = 2 * MiB  # float32 elements: 8 MiB per array


class NoWorkflow(Workflow):
    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        return initial


class BytesOnly(InProcessTransport):
    """A wire transport's contract in one process: payloads are encoded and streamed."""

    carries_objects: ClassVar[bool] = False


Federation = tuple[ServerRunner, dict[str, Cell]]


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    transport, resources = BytesOnly(), CellResources()
    server = Cell("server", transport, resources)
    url = server.listen("inprocess://")
    # Keyed by site; the cells are the sites' client jobs of job j.
    cells = {"server.j": Cell("server.j", transport, resources)}
    cells.update({site: Cell(f"{site}.j", transport, resources) for site in ("site-a", "site-b")})
    for cell in cells.values():
        cell.connect_parent(url)
    runner = ServerRunner(
        cells["server.j"], "j", tmp_path, NoWorkflow(), ["site-a", "site-b"], poll_timeout=5
    )
    for name in ("site-a", "site-b"):
        cells[name].request("server.j", Channel.SERVER_MAIN, Topic.JOIN)
    yield runner, cells
    for cell in reversed(list(cells.values())):
        cell.close()
    server.close()
    resources.close()


def answer(cell: Cell, poll: Future[Message], params: dict[str, np.ndarray]) -> Future[Message]:
    """A site's client job: take the task, send `params` back as its result."""
    reply = poll.result()
    assert reply.get(TaskHeader.KIND) == TaskKind.TASK
    headers = {TaskHeader.TASK_ID: reply.get(TaskHeader.TASK_ID), TaskHeader.OUTCOME: Outcome.OK}
    return cell.request_async(
        "server.j", Channel.SERVER_MAIN, Topic.SUBMIT_RESULT, FLModel(params=params), 30, headers
    )


def test_a_site_lost_mid_stream_is_failed_and_the_others_average_exactly(
    federation: Federation,
) -> None:
    runner, cells = federation
    names = ("w0", "w1", "w2", "w3")  # 32 MiB: twice the stream window, so it cannot be all in
    polls = {
        s: cells[s].request_async("server.j", Channel.SERVER_MAIN, Topic.GET_TASK)
        for s in ("site-a", "site-b")
    }
    acks: dict[str, Future[Message]] = {}

    def sites() -> None:
        acks["site-a"] = answer(
            cells["site-a"], polls["site-a"], {k: np.full(N, 3.0, np.float32) for k in names}
        )
        acks["site-b"] = answer(
            cells["site-b"], polls["site-b"], {k: np.full(N, 100.0, np.float32) for k in names}
        )

    thread = threading.Thread(target=sites)
    thread.start()
    aggregator = WeightedAggregator({k: np.zeros(N, np.float32) for k in names})
    seen: dict[str, int] = {}
    owned: dict[str, bool] = {}

    def on_stream(site: str, result: IncomingResult) -> None:
        owned[site] = result.owns_arrays
        if site == "site-a":
            aggregator.add_stream(site, result)
            return
        for name, _ in result.arrays():
            seen[site] = seen.get(site, 0) + 1
            if name == "w0":
                cells["site-b"].close()  # the site dies while its result is on the way

    task = Task("train", FLModel(params={"w": np.zeros(4, np.float32)}), 0)
    report = runner.send_task(
        task,
        ["site-a", "site-b"],
        60,
        lambda s, m: pytest.fail("on_result called"),
        on_stream=on_stream,
    )
    thread.join()
    assert report.received == ["site-a"]
    assert list(report.failed) == ["site-b"]
    delivered = seen["site-b"]
    assert 1 <= delivered < 4
    assert report.failed["site-b"].startswith(
        f"its result broke off after {delivered} of 4 arrays ('w{delivered}' incomplete): "
    )
    assert acks["site-a"].result().get(TaskHeader.ACCEPTED) == "yes"
    with pytest.raises(CellError):
        acks["site-b"].result()  # its own cell is closed: no answer reaches it, nothing raised here
    assert owned == {"site-a": True, "site-b": True}
    out = aggregator.finish()
    assert out is not None
    for name in names:
        np.testing.assert_array_equal(out[name], np.full(N, 3.0, np.float32))
    assert runner.cell.streams_in_flight() == {"out": 0, "in": 0, "relayed": 0}


def test_a_result_refused_from_its_header_is_dropped_unread_and_the_site_answered(
    federation: Federation,
) -> None:
    runner, cells = federation
    poll = cells["site-a"].request_async("server.j", Channel.SERVER_MAIN, Topic.GET_TASK)
    acks: list[Future[Message]] = []
    thread = threading.Thread(
        target=lambda: acks.append(answer(cells["site-a"], poll, {"w": np.ones(3 * N, np.float32)}))
    )
    thread.start()
    layouts: list[tuple[str, tuple[int, ...]]] = []

    def on_stream(site: str, result: IncomingResult) -> None:
        layouts.extend((a.name, a.shape) for a in result.header.arrays)  # and read nothing

    task = Task("train", FLModel(), 0)
    report = runner.send_task(
        task, ["site-a"], 60, lambda s, m: pytest.fail("on_result called"), on_stream=on_stream
    )
    thread.join()
    assert layouts == [("w", (3 * N,))]
    assert report.received == ["site-a"] and report.failed == {}
    assert acks[0].result().get(TaskHeader.ACCEPTED) == "yes"
    # The unread rest is dropped as it comes; then no stream is left open.
    wait_until(lambda: not any(runner.cell.streams_in_flight().values()), 30, "the stream to end")
