"""ScatterAndGather against a fake WorkflowContext: rounds, failures, events, memory."""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.errors import JobFailedError
from fl_core.model import FLModel, ParamsType
from fl_core.spec.workflow import (
    GatherReport,
    ResultHandler,
    StreamHandler,
    Task,
    WholeResult,
    WorkflowContext,
    WorkflowEvent,
)
from fl_plugins.workflow_sag.workflow import ScatterAndGather, make_sag

MakeResult = Callable[[str, Task], FLModel]


class FakeContext:
    """A WorkflowContext that answers tasks with `make_result(site, task)`.

    Sites in `failures` answer with that error, sites in `timed_out` never
    answer; everything the workflow saves, records and emits is kept.
    `abort_when(tasks_sent)` decides what `aborted()` says.
    """

    def __init__(
        self,
        sites: Sequence[str],
        make_result: MakeResult,
        *,
        failures: Mapping[str, str] | None = None,
        timed_out: Sequence[str] = (),
        abort_when: Callable[[int], bool] = lambda _: False,
    ) -> None:
        self._sites = list(sites)
        self.make_result = make_result
        self.failures = dict(failures or {})
        self.timed_out = list(timed_out)
        self.abort_when = abort_when
        self.tasks: list[Task] = []
        self.timeouts: list[float] = []
        self.saved: list[tuple[int, FLModel]] = []
        self.metrics: list[tuple[int, dict[str, object]]] = []
        self.events: list[tuple[WorkflowEvent, int, dict[str, object]]] = []
        self.after_result: Callable[[str], None] = lambda _: None

    @property
    def job_id(self) -> str:
        return "job-1"

    @property
    def workspace(self) -> Path:
        return Path("/nonexistent")

    def sites(self) -> list[str]:
        return list(self._sites)

    def send_task(
        self,
        task: Task,
        targets: Sequence[str],
        timeout: float,
        on_result: ResultHandler,
        *,
        on_stream: StreamHandler | None = None,
    ) -> GatherReport:
        self.tasks.append(task)
        self.timeouts.append(timeout)
        report = GatherReport()
        for site in targets:
            if site in self.failures:
                report.failed[site] = self.failures[site]
            elif site in self.timed_out:
                report.timed_out.append(site)
            else:
                if on_stream is None:
                    on_result(site, self.make_result(site, task))  # no reference kept here
                else:
                    on_stream(site, WholeResult(site, self.make_result(site, task)))
                report.received.append(site)
                self.after_result(site)
        return report

    def save_model(self, model: FLModel, round_number: int) -> Path:
        copy = FLModel(
            params={k: v.copy() for k, v in model.params.items()},
            params_type=model.params_type,
            metrics=dict(model.metrics),
            current_round=model.current_round,
            total_rounds=model.total_rounds,
        )
        self.saved.append((round_number, copy))
        return Path(f"/nonexistent/round-{round_number}.npz")

    def record_metrics(self, round_number: int, metrics: Mapping[str, object]) -> None:
        self.metrics.append((round_number, dict(metrics)))

    def emit(self, event: WorkflowEvent, round_number: int, **data: object) -> None:
        self.events.append((event, round_number, data))

    def aborted(self) -> bool:
        return self.abort_when(len(self.tasks))

    def events_of(self, kind: WorkflowEvent) -> list[tuple[int, dict[str, object]]]:
        return [(r, data) for event, r, data in self.events if event is kind]


def _typed(ctx: FakeContext) -> WorkflowContext:
    return ctx  # mypy proves FakeContext satisfies the protocol


def plus(delta: float, samples: int = 1) -> MakeResult:
    """A site that trains by adding `delta` to every weight."""

    def make(site: str, task: Task) -> FLModel:
        params = {k: v + delta for k, v in task.data.params.items()}
        return FLModel(params=params, metrics={"loss": delta}, meta={"num_samples": samples})

    return make


def per_site(table: Mapping[str, MakeResult]) -> MakeResult:
    return lambda site, task: table[site](site, task)


INITIAL_W = np.array([0.0, 8.0])


def initial() -> FLModel:
    """A fresh initial model: `run` takes its params over (see Workflow.run)."""
    return FLModel(params={"w": INITIAL_W.copy()})


def test_rounds_chain_global_models_save_each_round_and_return_the_last() -> None:
    ctx = FakeContext(
        ["site-1", "site-2"], per_site({"site-1": plus(1.0, 1), "site-2": plus(5.0, 3)})
    )
    final = ScatterAndGather(min_clients=2, rounds=3, task_timeout=30).run(_typed(ctx), initial())

    # each round adds (1 * 1 + 3 * 5) / 4 = 4
    assert [r for r, _ in ctx.saved] == [0, 1, 2]
    for r, model in ctx.saved:
        np.testing.assert_array_equal(model.params["w"], [4.0 * (r + 1), 8.0 + 4.0 * (r + 1)])
        assert (model.params_type, model.current_round, model.total_rounds) == ("FULL", r, 3)
    for r, task in enumerate(ctx.tasks):
        assert (task.name, task.round_number) == ("train", r)
        assert (task.data.current_round, task.data.total_rounds) == (r, 3)
        assert task.data.params_type is ParamsType.FULL
        expected = INITIAL_W if r == 0 else ctx.saved[r - 1][1].params["w"]
        np.testing.assert_array_equal(task.data.params["w"], expected)
    assert ctx.timeouts == [30.0, 30.0, 30.0]
    np.testing.assert_array_equal(final.params["w"], [12.0, 20.0])
    assert final.params_type is ParamsType.FULL
    assert (final.current_round, final.total_rounds) == (2, 3)
    assert final.metrics == {"loss": 4.0}


def test_the_initial_model_is_taken_over_and_never_written() -> None:
    ctx = FakeContext(["a", "b"], plus(1.0))
    start = initial()
    w0 = start.params["w"]
    make_sag(min_clients=2, rounds=2).run(_typed(ctx), start)
    assert start.params == {}  # handed over, so the first model can be freed
    np.testing.assert_array_equal(w0, INITIAL_W)


def test_metrics_events_and_records_of_a_round() -> None:
    def site_a(site: str, task: Task) -> FLModel:
        return FLModel(
            params={"w": np.zeros(2)},
            metrics={"loss": 1.0, "acc": 0.5, "bad": float("nan")},
            meta={"num_samples": 1},
        )

    def site_b(site: str, task: Task) -> FLModel:
        return FLModel(
            params={"w": np.zeros(2)}, metrics={"loss": 5.0, "f1": 2}, meta={"num_samples": 3}
        )

    ctx = FakeContext(["a", "b"], per_site({"a": site_a, "b": site_b}))
    final = make_sag(min_clients=2, rounds=1).run(_typed(ctx), initial())

    averaged = {"loss": 4.0, "acc": 0.5, "f1": 2.0}
    assert final.metrics == averaged
    assert ctx.metrics == [
        (0, {"round": 0, "results": 2, "sites": ["a", "b"], "failed": {}, "metrics": averaged})
    ]
    assert [(e, r) for e, r, _ in ctx.events] == [
        (WorkflowEvent.ROUND_STARTED, 0),
        (WorkflowEvent.RESULT_RECEIVED, 0),
        (WorkflowEvent.RESULT_RECEIVED, 0),
        (WorkflowEvent.ROUND_FINISHED, 0),
    ]
    assert ctx.events[0][2] == {"sites": 2}
    assert [d["site"] for _, d in ctx.events_of(WorkflowEvent.RESULT_RECEIVED)] == ["a", "b"]
    assert ctx.events[-1][2] == {"results": 2, "metrics": averaged}


def test_full_and_diff_results_mix_in_a_round() -> None:
    def diff(site: str, task: Task) -> FLModel:
        return FLModel(
            params={"w": np.array([2.0, -4.0])},
            params_type=ParamsType.DIFF,
            meta={"num_samples": 3},
        )

    ctx = FakeContext(["a", "b"], per_site({"a": plus(4.0), "b": diff}))
    final = make_sag(min_clients=2, rounds=1).run(_typed(ctx), initial())
    # (1 * ([0, 8] + 4) + 3 * ([0, 8] + [2, -4])) / 4
    np.testing.assert_array_equal(final.params["w"], [2.5, 6.0])


def test_a_mismatched_result_is_reported_and_the_rest_still_count() -> None:
    def wrong_shape(site: str, task: Task) -> FLModel:
        return FLModel(params={"w": np.zeros(3)})

    def wrong_key(site: str, task: Task) -> FLModel:
        return FLModel(params={"v": np.zeros(2)})

    ctx = FakeContext(
        ["a", "b", "c", "d"],
        per_site({"a": plus(2.0), "b": wrong_shape, "c": wrong_key, "d": plus(4.0)}),
    )
    final = make_sag(min_clients=4, rounds=1, min_responses=2).run(_typed(ctx), initial())

    np.testing.assert_array_equal(final.params["w"], [3.0, 11.0])
    record = ctx.metrics[0][1]
    assert record["sites"] == ["a", "d"]
    assert record["results"] == 2
    failed = record["failed"]
    assert isinstance(failed, dict)
    assert failed.keys() == {"b", "c"}
    assert "param 'w': expected shape (2,), got (3,)" in failed["b"]
    assert "missing params 'w'" in failed["c"] and "unexpected params 'v'" in failed["c"]
    reported = {d["site"]: d["reason"] for _, d in ctx.events_of(WorkflowEvent.RESULT_FAILED)}
    assert reported == failed


def test_too_few_results_fail_the_job_naming_each_site_and_reason() -> None:
    ctx = FakeContext(
        ["site-1", "site-2", "site-3"],
        plus(1.0),
        failures={"site-2": "ZeroDivisionError: division by zero"},
        timed_out=["site-3"],
    )
    workflow = make_sag(min_clients=3, rounds=2, min_responses=2, task_timeout=30)
    with pytest.raises(JobFailedError) as info:
        workflow.run(_typed(ctx), initial())
    assert info.value.job == "job-1"
    assert info.value.reason == (
        "round 1: 1 of 2 required results; "
        "site-2: ZeroDivisionError: division by zero; site-3: timed out after 30 s"
    )
    assert ctx.saved == []
    assert {d["site"] for _, d in ctx.events_of(WorkflowEvent.RESULT_FAILED)} == {
        "site-2",
        "site-3",
    }


def test_failed_sites_are_tolerated_while_enough_results_remain() -> None:
    ctx = FakeContext(["a", "b", "c"], plus(1.0), failures={"c": "RuntimeError: disk full"})
    final = make_sag(min_clients=2, rounds=2).run(_typed(ctx), initial())
    np.testing.assert_array_equal(final.params["w"], [2.0, 10.0])
    assert [m["failed"] for _, m in ctx.metrics] == [{"c": "RuntimeError: disk full"}] * 2


def test_fewer_sites_than_min_clients_fail_before_sending() -> None:
    ctx = FakeContext(["site-1"], plus(1.0))
    with pytest.raises(JobFailedError) as info:
        make_sag(min_clients=2, rounds=1).run(_typed(ctx), initial())
    assert info.value.reason == "round 1: 1 of 2 required sites present (site-1)"
    assert ctx.tasks == []


def test_an_abort_during_a_round_stops_the_job_without_saving() -> None:
    ctx = FakeContext(["a"], plus(1.0), abort_when=lambda sent: sent >= 1)
    with pytest.raises(JobFailedError) as info:
        make_sag(min_clients=1, rounds=3).run(_typed(ctx), initial())
    assert info.value.reason == "aborted"
    assert len(ctx.tasks) == 1
    assert ctx.saved == []


def test_an_abort_before_the_next_round_keeps_finished_rounds() -> None:
    state = {"rounds_done": 0}
    ctx = FakeContext(["a"], plus(1.0), abort_when=lambda sent: state["rounds_done"] >= 1)

    def save(model: FLModel, round_number: int) -> Path:
        state["rounds_done"] += 1
        return FakeContext.save_model(ctx, model, round_number)

    ctx.save_model = save  # type: ignore[method-assign]
    with pytest.raises(JobFailedError, match="aborted"):
        make_sag(min_clients=1, rounds=3).run(_typed(ctx), initial())
    assert [r for r, _ in ctx.saved] == [0]
    assert len(ctx.tasks) == 1


def test_metrics_only_results_keep_the_old_global() -> None:
    def metrics_only(site: str, task: Task) -> FLModel:
        return FLModel(metrics={"loss": 0.25})

    ctx = FakeContext(["a", "b"], metrics_only)
    final = make_sag(min_clients=2, rounds=2).run(_typed(ctx), initial())
    np.testing.assert_array_equal(final.params["w"], INITIAL_W)
    assert final.metrics == {"loss": 0.25}
    assert [r for r, _ in ctx.saved] == [0, 1]


def test_an_empty_initial_model_takes_the_structure_of_the_first_result() -> None:
    def fresh(value: float) -> MakeResult:
        return lambda site, task: FLModel(params={"w": np.full(2, value, dtype=np.float32)})

    ctx = FakeContext(["a", "b"], per_site({"a": fresh(1.0), "b": fresh(3.0)}))
    final = make_sag(min_clients=2, rounds=1).run(_typed(ctx), FLModel())
    assert final.params["w"].dtype == np.float32
    np.testing.assert_array_equal(final.params["w"], [2.0, 2.0])


def test_an_unusable_initial_model_fails_the_job() -> None:
    ctx = FakeContext(["a"], plus(1.0))
    with pytest.raises(JobFailedError, match="initial model: param 'w' has dtype <U1"):
        make_sag(min_clients=1, rounds=1).run(_typed(ctx), FLModel(params={"w": np.array(["x"])}))


def test_results_are_released_as_soon_as_they_are_folded() -> None:
    refs: dict[str, list[weakref.ref[Any]]] = {}
    alive: dict[str, list[bool]] = {}

    def make(site: str, task: Task) -> FLModel:
        model = plus(1.0, samples=2 if site == "b" else 1)(site, task)
        refs[site] = [weakref.ref(model), *[weakref.ref(a) for a in model.params.values()]]
        return model

    ctx = FakeContext(["a", "b"], make)
    # Checked inside the round, while the workflow and its aggregator are still alive.
    ctx.after_result = lambda site: alive.__setitem__(site, [r() is not None for r in refs[site]])
    final = make_sag(min_clients=2, rounds=1).run(_typed(ctx), initial())
    # The FLModels are gone; the first result's array, which nothing else
    # referenced, lives on only as the accumulator, now the new global model.
    assert alive == {"a": [False, True], "b": [False, False]}
    assert refs["a"][1]() is final.params["w"]
