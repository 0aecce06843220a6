"""The workflow contract: what every `Workflow` must do, against an in-memory context.

Subclass `WorkflowContract`, name the workflow as a job config would
(`component`, `plugin`; see `fl_core.testing.registered`) and give the
`workflow.options` the suite should use in `workflow_options`. The suite
builds the workflow through the registered factory
(`factory(min_clients=..., rounds=..., **options)`) and runs it against a
`ContractContext`: sites that answer each task from a function, at once and
on the calling thread, results handed over as the runtime hands them
(`on_stream` with a `WholeResult` when the workflow gives one, else
`on_result`). It checks what `fl_core.spec.workflow` asks of every workflow:
tasks only to present sites, a final model, progress as `WorkflowEvent`s,
JSON metrics, saved models left alone, a job failed with a reason when too
few results come, and an end soon after an abort.

A workflow that says it is FedAvg-like sets `fedavg = True`: each round it
sends the global model to every site and makes the mean of the results,
weighted by `FLModel.weight()`, the next global model. The suite then
checks the numbers::

    from fl_core.testing import WorkflowContract

    class TestMyFlow(WorkflowContract):
        component = "myflow"
        plugin = "my_plugin"
        workflow_options = {"task_timeout": 5}
        fedavg = True
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

from fl_core.errors import ConfigError, JobFailedError
from fl_core.model import FLModel
from fl_core.spec import ComponentKind
from fl_core.spec.workflow import (
    GatherReport,
    ResultHandler,
    StreamHandler,
    Task,
    WholeResult,
    Workflow,
    WorkflowEvent,
)
from fl_core.testing.registered import PluginRef, component_factory

__all__ = ["ContractContext", "Sent", "SiteAnswer", "WorkflowContract"]

SiteAnswer = Callable[[str, Task], FLModel | BaseException | None]
"""`answer(site, task)`: the site's result, an error it reports, or None (it never answers)."""


@dataclass
class Sent:
    """One `send_task` call as the context saw it."""

    task: Task
    targets: list[str]
    timeout: float
    report: GatherReport = field(default_factory=GatherReport)


class ContractContext:
    """An in-memory `WorkflowContext`: fake sites, and a record of everything the workflow did."""

    def __init__(
        self,
        workspace: Path,
        sites: Mapping[str, SiteAnswer],
        *,
        job_id: str = "contract-job",
        abort_after_sends: int | None = None,
    ) -> None:
        self._job_id = job_id
        self._workspace = workspace
        self.answers = dict(sites)
        self.abort_after_sends = abort_after_sends
        """Set `aborted()` once this many `send_task` calls have returned their results."""
        self.sent: list[Sent] = []
        self.saved: list[tuple[int, dict[str, np.ndarray], dict[str, np.ndarray]]] = []
        """(round, the arrays saved, a copy taken when saved)."""
        self.metrics: list[tuple[int, Mapping[str, object]]] = []
        self.events: list[tuple[WorkflowEvent, int, dict[str, object]]] = []
        self.abort = False

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._job_id

    @property
    def workspace(self) -> Path:
        """A folder the workflow may write into."""
        return self._workspace

    def sites(self) -> list[str]:
        """The fake sites, sorted."""
        return sorted(self.answers)

    def send_task(
        self,
        task: Task,
        targets: Sequence[str],
        timeout: float,
        on_result: ResultHandler,
        *,
        on_stream: StreamHandler | None = None,
    ) -> GatherReport:
        """Ask each target's answer function, in order, and hand over the results."""
        sent = Sent(task, list(targets), timeout)
        self.sent.append(sent)
        strangers = sorted(set(targets) - set(self.answers))
        assert not strangers, f"a task went to sites that are not present: {strangers}"
        for site in targets:
            answer = self.answers[site](site, task)
            if answer is None:
                sent.report.timed_out.append(site)
            elif isinstance(answer, BaseException):
                sent.report.failed[site] = f"{type(answer).__name__}: {answer}"
            else:
                self._hand_over(site, answer, on_result, on_stream, sent.report)
        if self.abort_after_sends is not None and len(self.sent) >= self.abort_after_sends:
            self.abort = True
        return sent.report

    @staticmethod
    def _hand_over(
        site: str,
        model: FLModel,
        on_result: ResultHandler,
        on_stream: StreamHandler | None,
        report: GatherReport,
    ) -> None:
        if on_stream is None:
            on_result(site, model)
        else:
            on_stream(site, WholeResult(site, model))
        report.received.append(site)

    def save_model(self, model: FLModel, round_number: int) -> Path:
        """Keep the arrays and a copy, so the suite can tell if they change later."""
        copies = {name: np.array(array, copy=True) for name, array in model.params.items()}
        self.saved.append((round_number, dict(model.params), copies))
        return self._workspace / f"model-round-{round_number}.npz"

    def record_metrics(self, round_number: int, metrics: Mapping[str, object]) -> None:
        """Keep the metrics; they must be JSON, as the runtime writes them."""
        json.dumps(metrics)
        self.metrics.append((round_number, metrics))

    def emit(self, event: WorkflowEvent, round_number: int, **data: object) -> None:
        """Keep the event."""
        self.events.append((event, round_number, data))

    def aborted(self) -> bool:
        """True once `abort` is set."""
        return self.abort


def _initial() -> FLModel:
    return FLModel(
        params={
            "w": np.arange(6, dtype=np.float64).reshape(2, 3),
            "b": np.array([0.5, -1.5], dtype=np.float64),
        }
    )


def trainer(offset: Mapping[str, float], samples: Mapping[str, int]) -> SiteAnswer:
    """Sites that add `offset[site]` to every array of the task's model, with `samples[site]`."""

    def answer(site: str, task: Task) -> FLModel:
        params = {name: np.asarray(a) + offset[site] for name, a in task.data.params.items()}
        return FLModel(
            params=params, metrics={"loss": offset[site]}, meta={"num_samples": samples[site]}
        )

    return answer


class WorkflowContract:
    """What every workflow must do; see the module docstring."""

    plugin: ClassVar[PluginRef | None] = None
    """The plugin that registers the workflow; None: every installed plugin."""
    component: ClassVar[str] = ""
    """The workflow's registered name (what a job config writes)."""
    workflow_options: ClassVar[Mapping[str, object]] = {}
    """The `workflow.options` the suite builds it with."""
    fedavg: ClassVar[bool] = False
    """The workflow claims FedAvg: the suite checks its weighted means exactly."""

    @pytest.fixture
    def workflow_factory(self) -> Callable[..., Workflow]:
        """`(min_clients, rounds, **options) -> Workflow`: by default the registered factory."""
        if not self.component:
            pytest.fail(
                f"{type(self).__name__} must set `component` (and `plugin`) or define a "
                "workflow_factory fixture"
            )
        make = component_factory(ComponentKind.WORKFLOW, self.component, self.plugin)

        def build(min_clients: int, rounds: int, **options: Any) -> Workflow:
            workflow = make(
                min_clients=min_clients, rounds=rounds, **{**self.workflow_options, **options}
            )
            assert isinstance(workflow, Workflow)
            return workflow

        return build

    def _run(
        self,
        workflow_factory: Callable[..., Workflow],
        ctx: ContractContext,
        *,
        min_clients: int,
        rounds: int,
    ) -> FLModel:
        return workflow_factory(min_clients, rounds).run(ctx, _initial())

    # --- the factory -----------------------------------------------------------------

    def test_an_unknown_option_is_a_config_error_naming_its_key(
        self, workflow_factory: Callable[..., Workflow]
    ) -> None:
        with pytest.raises(ConfigError) as info:
            workflow_factory(2, 1, no_such_option_xyz=1)
        assert info.value.source == "job.yaml"
        assert info.value.key == "workflow.options.no_such_option_xyz"

    # --- a run where every site answers ----------------------------------------------

    def test_a_run_returns_a_model_of_the_initial_arrays(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        sites = ("site-1", "site-2", "site-3")
        answer = trainer({"site-1": 1.0, "site-2": 2.0, "site-3": 3.0}, dict.fromkeys(sites, 1))
        ctx = ContractContext(tmp_path, dict.fromkeys(sites, answer))
        final = self._run(workflow_factory, ctx, min_clients=2, rounds=2)
        assert isinstance(final, FLModel)
        initial = _initial().params
        assert sorted(final.params) == sorted(initial)
        for name, array in initial.items():
            assert np.shape(final.params[name]) == array.shape, name
        assert ctx.sent, "the workflow sent no task"

    def test_tasks_carry_round_numbers_within_the_job(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        answer = trainer({"site-1": 1.0, "site-2": 2.0}, {"site-1": 1, "site-2": 1})
        ctx = ContractContext(tmp_path, dict.fromkeys(("site-1", "site-2"), answer))
        self._run(workflow_factory, ctx, min_clients=2, rounds=3)
        rounds = [sent.task.round_number for sent in ctx.sent]
        assert rounds == sorted(rounds), "round numbers went backwards"
        assert all(0 <= r < 3 for r in rounds), rounds
        assert all(sent.timeout > 0 for sent in ctx.sent)

    def test_progress_is_reported_as_workflow_events(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        answer = trainer({"site-1": 1.0, "site-2": 2.0}, {"site-1": 1, "site-2": 1})
        ctx = ContractContext(tmp_path, dict.fromkeys(("site-1", "site-2"), answer))
        self._run(workflow_factory, ctx, min_clients=2, rounds=2)
        for event, round_number, _ in ctx.events:
            assert isinstance(event, WorkflowEvent), event
            assert isinstance(round_number, int) and 0 <= round_number < 2, round_number

    def test_saved_models_are_never_changed_afterwards(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        answer = trainer({"site-1": 1.0, "site-2": 2.0}, {"site-1": 1, "site-2": 1})
        ctx = ContractContext(tmp_path, dict.fromkeys(("site-1", "site-2"), answer))
        self._run(workflow_factory, ctx, min_clients=2, rounds=3)
        for round_number, arrays, copies in ctx.saved:
            for name, copy in copies.items():
                assert np.array_equal(arrays[name], copy), f"round {round_number}: {name}"

    # --- failures and aborts -----------------------------------------------------------

    @pytest.mark.parametrize("failure", ["error", "timeout"])
    def test_too_few_results_fail_the_job_with_a_reason(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path, failure: str
    ) -> None:
        good = trainer({"site-1": 1.0}, {"site-1": 1})

        def bad(site: str, task: Task) -> FLModel | BaseException | None:
            return RuntimeError("out of memory") if failure == "error" else None

        ctx = ContractContext(tmp_path, {"site-1": good, "site-2": bad, "site-3": bad})
        with pytest.raises(JobFailedError) as info:
            self._run(workflow_factory, ctx, min_clients=3, rounds=2)
        assert info.value.reason
        assert len(ctx.sent) == 1, "the workflow went on after a round it could not finish"

    def test_an_abort_ends_the_run_before_another_task(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        answer = trainer({"site-1": 1.0, "site-2": 2.0}, {"site-1": 1, "site-2": 1})
        ctx = ContractContext(
            tmp_path, dict.fromkeys(("site-1", "site-2"), answer), abort_after_sends=1
        )
        try:
            self._run(workflow_factory, ctx, min_clients=2, rounds=5)
        except JobFailedError as exc:
            assert exc.reason
        assert len(ctx.sent) == 1

    # --- FedAvg ------------------------------------------------------------------------

    def test_fedavg_makes_the_weighted_mean_the_next_global_model(
        self, workflow_factory: Callable[..., Workflow], tmp_path: Path
    ) -> None:
        if not self.fedavg:
            pytest.skip("the workflow does not claim FedAvg")
        offsets = {"site-1": 1.0, "site-2": -2.0, "site-3": 4.0}
        samples = {"site-1": 1, "site-2": 3, "site-3": 4}
        answer = trainer(offsets, samples)
        ctx = ContractContext(tmp_path, dict.fromkeys(offsets, answer))
        final = self._run(workflow_factory, ctx, min_clients=3, rounds=2)
        # Each round adds the weighted mean of the offsets to every array.
        shift = sum(offsets[s] * samples[s] for s in offsets) / sum(samples.values())
        expected = {name: array + 2 * shift for name, array in _initial().params.items()}
        for name, array in expected.items():
            np.testing.assert_allclose(final.params[name], array, rtol=1e-12, err_msg=name)
        assert [sorted(sent.targets) for sent in ctx.sent] == [sorted(offsets)] * 2
        # The second round's task carries the first round's mean.
        second = ctx.sent[1].task.data.params
        for name, array in _initial().params.items():
            np.testing.assert_allclose(second[name], array + shift, rtol=1e-12, err_msg=name)
