"""The server job's task protocol over real cells, driven the way a client job drives it."""

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
from fl_core.errors import RemoteError
from fl_core.model import FLModel
from fl_core.roles.protocol.task import Outcome, TaskHeader, TaskKind, Topic
from fl_core.roles.server_job.runner import ServerRunner
from fl_core.spec.workflow import Task, Workflow, WorkflowContext
from fl_plugins.transport_inprocess.transport import InProcessTransport


class NoWorkflow(Workflow):
    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        return initial


SITES = ("site-a", "site-b")


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[tuple[ServerRunner, Cell, Cell]]:
    transport = InProcessTransport()
    resources = CellResources()
    server = Cell("server", transport, resources)
    url = server.listen("inprocess://")
    job = Cell("server.j", transport, resources)
    job.connect_parent(url)
    site_a = Cell("site-a.j", transport, resources)
    site_a.connect_parent(url)
    site_b = Cell("site-b.j", transport, resources)
    site_b.connect_parent(url)
    runner = ServerRunner(job, "j", tmp_path, NoWorkflow(), SITES, poll_timeout=0.3)
    for cell in (site_a, site_b):
        cell.request("server.j", Channel.SERVER_MAIN, Topic.JOIN)
    yield runner, site_a, site_b
    for cell in (site_b, site_a, job, server):
        cell.close()
    resources.close()


def poll(cell: Cell) -> Future[Message]:
    return cell.request_async("server.j", Channel.SERVER_MAIN, Topic.GET_TASK, timeout=5)


def submit(cell: Cell, task_id: str, model: FLModel) -> Message:
    headers = {TaskHeader.TASK_ID: task_id, TaskHeader.OUTCOME: Outcome.OK}
    return cell.request("server.j", Channel.SERVER_MAIN, Topic.SUBMIT_RESULT, model, 5, headers)


def test_an_idle_poll_is_told_to_wait_after_the_poll_timeout(federation) -> None:  # type: ignore[no-untyped-def]
    _, site_a, _ = federation
    reply = poll(site_a).result()
    assert reply.get(TaskHeader.KIND) == TaskKind.WAIT


def test_a_waiting_poll_gets_the_task_the_moment_it_exists(federation) -> None:  # type: ignore[no-untyped-def]
    runner, site_a, site_b = federation
    pending = {cell.fqcn: poll(cell) for cell in (site_a, site_b)}
    folded: list[tuple[str, list[float]]] = []

    def sites_answer() -> None:
        for cell in (site_a, site_b):
            reply = pending[cell.fqcn].result()
            assert reply.get(TaskHeader.KIND) == TaskKind.TASK
            assert isinstance(reply.payload, FLModel)
            params = {"w": reply.payload.params["w"] + 1}
            ack = submit(cell, reply.get(TaskHeader.TASK_ID), FLModel(params=params))
            assert ack.get(TaskHeader.ACCEPTED) == "yes"

    answering = threading.Thread(target=sites_answer)
    answering.start()
    task = Task("train", FLModel(params={"w": np.zeros(2)}), 0)
    report = runner.send_task(
        task, ["site-a", "site-b"], 10, lambda s, m: folded.append((s, m.params["w"].tolist()))
    )
    answering.join()
    assert sorted(report.received) == ["site-a", "site-b"]
    assert report.failed == {} and report.timed_out == []
    assert sorted(folded) == [("site-a", [1.0, 1.0]), ("site-b", [1.0, 1.0])]


def test_a_late_result_is_refused_and_the_site_reported_timed_out(federation) -> None:  # type: ignore[no-untyped-def]
    runner, site_a, _ = federation
    waiting = poll(site_a)
    report = runner.send_task(Task("train", FLModel(), 0), ["site-a"], 0.2, lambda s, m: None)
    assert report.timed_out == ["site-a"]
    reply = waiting.result()
    late = submit(site_a, reply.get(TaskHeader.TASK_ID), FLModel())
    assert late.get(TaskHeader.ACCEPTED) == "no"
    assert late.get(TaskHeader.REASON) == f"task {reply.get(TaskHeader.TASK_ID)} is no longer open"


def test_after_the_end_every_poll_hears_end(federation) -> None:  # type: ignore[no-untyped-def]
    runner, site_a, site_b = federation
    pending = poll(site_a)
    runner.end()
    assert pending.result().get(TaskHeader.KIND) == TaskKind.END
    assert poll(site_b).result().get(TaskHeader.KIND) == TaskKind.END


def test_a_failed_task_keeps_the_reason_and_traceback(federation) -> None:  # type: ignore[no-untyped-def]
    runner, site_a, _ = federation
    waiting = poll(site_a)

    def fail() -> None:
        reply = waiting.result()
        headers = {
            TaskHeader.TASK_ID: reply.get(TaskHeader.TASK_ID),
            TaskHeader.OUTCOME: Outcome.FAILED,
            TaskHeader.REASON: "KeyError: 'x'",
        }
        site_a.request(
            "server.j", Channel.SERVER_MAIN, Topic.SUBMIT_RESULT, "Traceback ...", 5, headers
        )

    thread = threading.Thread(target=fail)
    thread.start()
    report = runner.send_task(Task("train", FLModel(), 2), ["site-a"], 10, lambda s, m: None)
    thread.join()
    assert report.failed == {"site-a": "KeyError: 'x'"}
    failure = runner.record.failures["site-a"]
    assert (failure.round_number, failure.detail) == (2, "Traceback ...")


class BytesOnly(InProcessTransport):
    """A wire transport's contract in one process: payloads are encoded and streamed."""

    carries_objects: ClassVar[bool] = False


def test_big_results_stream_in_over_a_wire_and_are_folded_whole(tmp_path: Path) -> None:
    transport, resources = BytesOnly(), CellResources()
    server = Cell("server", transport, resources)
    url = server.listen("inprocess://")
    cells = [Cell(name, transport, resources) for name in ("server.j", "site-a.j", "site-b.j")]
    job, *sites = cells
    try:
        for cell in cells:
            cell.connect_parent(url)
        runner = ServerRunner(job, "j", tmp_path, NoWorkflow(), SITES, poll_timeout=5)
        for cell in sites:
            cell.request("server.j", Channel.SERVER_MAIN, Topic.JOIN)
        pending = {cell.fqcn: poll(cell) for cell in sites}
        errors: list[BaseException] = []

        def site_answers(cell: Cell) -> None:
            try:
                reply = pending[cell.fqcn].result()
                assert isinstance(reply.payload, FLModel)  # 8 MiB: it came as a stream
                params = {"w": reply.payload.params["w"] + (1 if cell.fqcn == "site-a.j" else 2)}
                ack = submit(cell, reply.get(TaskHeader.TASK_ID), FLModel(params=params))
                assert ack.get(TaskHeader.ACCEPTED) == "yes"
            except BaseException as exc:
                errors.append(exc)

        answering = [threading.Thread(target=site_answers, args=(c,)) for c in sites]
        for thread in answering:
            thread.start()
        folded: dict[str, float] = {}

        def fold(site: str, model: FLModel) -> None:
            folded[site] = float(model.params["w"].mean())

        task = Task("train", FLModel(params={"w": np.zeros(1 << 21, dtype=np.float32)}), 0)
        report = runner.send_task(task, ["site-a", "site-b"], 30, fold)
        for thread in answering:
            thread.join()
        assert errors == []
        assert sorted(report.received) == ["site-a", "site-b"] and report.failed == {}
        assert folded == {"site-a": 1.0, "site-b": 2.0}
        # Both results were taken as streams; none is left open at the server job.
        assert job.streams_in_flight() == {"out": 0, "in": 0, "relayed": 0}
    finally:
        for cell in reversed(cells):
            cell.close()
        server.close()
        resources.close()


@pytest.mark.parametrize(
    "name", ["mallory.j", "site-a", "site-a.j.trainer", "site-a.k", "server.j2"]
)
def test_only_the_client_jobs_of_its_own_sites_take_part(
    federation, name: str, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    # A cell that got into the network under another name (a site's parent, a
    # trainer, another job's process, one that never was a site) is refused:
    # it joins nothing, polls nothing, sends no result and no metric.
    runner, site_a, _ = federation
    rogue = Cell(name, site_a.transport, site_a.resources)
    url = site_a.links.parent_url
    assert url is not None
    rogue.connect_parent(url)
    try:
        for topic, payload in (
            (Topic.JOIN, None),
            (Topic.GET_TASK, None),
            (Topic.LOG, {"key": "loss", "value": 1e6}),
        ):
            with pytest.raises(RemoteError, match=f"{name} is not a client job of job j"):
                rogue.request("server.j", Channel.SERVER_MAIN, topic, payload, 5)
        headers = {TaskHeader.TASK_ID: "t", TaskHeader.OUTCOME: Outcome.OK}
        with pytest.raises(RemoteError, match="is not a client job"):
            rogue.request(
                "server.j", Channel.SERVER_MAIN, Topic.SUBMIT_RESULT, FLModel(), 5, headers
            )
    finally:
        rogue.close()
    assert runner.sites() == ["site-a", "site-b"]
    assert any("is not a client job" in r.getMessage() for r in caplog.records)
