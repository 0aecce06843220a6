"""Workflows: the server-side controller that drives a job's rounds.

A workflow runs in the server job. It sends tasks to sites through the
`WorkflowContext` the runtime hands it, folds results in as they arrive,
persists the global model and records metrics. It never touches cells,
threads or sockets itself: the context does the messaging, so the same
workflow runs in the simulator, in POC and in production.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from fl_core.spec import Register, hookspec

if TYPE_CHECKING:
    from fl_core.model import FLModel


class WorkflowEvent(enum.StrEnum):
    """Progress a workflow reports; the CLI shows these to the user."""

    ROUND_STARTED = "round_started"
    RESULT_RECEIVED = "result_received"
    RESULT_FAILED = "result_failed"
    ROUND_FINISHED = "round_finished"


@dataclass(frozen=True, slots=True)
class Task:
    """Work for a site: a name the site's executor knows, and the model to work on."""

    name: str
    data: FLModel
    round_number: int


@dataclass(slots=True)
class GatherReport:
    """How a `send_task` call ended, per site."""

    received: list[str] = field(default_factory=list)
    """Sites whose result was handed to `on_result`, in arrival order."""
    failed: dict[str, str] = field(default_factory=dict)
    """Site -> reason, for sites that answered with an error or were lost."""
    timed_out: list[str] = field(default_factory=list)
    """Sites that had not answered when the timeout passed."""


ResultHandler = Callable[[str, "FLModel"], None]


class WorkflowContext(Protocol):
    """What the runtime offers a workflow. Implemented by the server job."""

    @property
    def job_id(self) -> str:
        """The job's id."""

    @property
    def workspace(self) -> Path:
        """A folder the workflow may write into (models, metrics)."""

    def sites(self) -> list[str]:
        """Names of the sites currently taking part in the job, sorted."""

    def send_task(
        self,
        task: Task,
        targets: Sequence[str],
        timeout: float,
        on_result: ResultHandler,
    ) -> GatherReport:
        """Send `task` to every target and gather their results.

        Blocks until every target has answered or failed, or `timeout`
        seconds have passed, or the job is aborted. `on_result(site, model)`
        is called once per successful result as it arrives, never for two
        results at once, so an aggregator needs no lock; after it returns
        the runtime drops its reference to the result. Failures and timeouts
        are in the returned report, never raised.
        """

    def save_model(self, model: FLModel, round_number: int) -> Path:
        """Persist the global model of a round; returns the file written."""

    def record_metrics(self, round_number: int, metrics: Mapping[str, object]) -> None:
        """Keep the metrics of a round (written to the workspace as JSON)."""

    def emit(self, event: WorkflowEvent, round_number: int, **data: object) -> None:
        """Report progress (shown to the user; never affects the run)."""

    def aborted(self) -> bool:
        """True once the job has been asked to stop; a workflow should return soon."""


class Workflow(ABC):
    """Drives a job from start to finish on the server."""

    @abstractmethod
    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        """Run the whole job and return the final global model.

        `initial` is the job's initial model (possibly with empty params). It
        is handed over: the workflow may take its params and empty it, so that
        no stale copy of the first model stays alive for the whole run.
        Raise `fl_core.errors.JobFailedError` with a reason when the job cannot
        go on (for example fewer than `min_clients` results in a round).
        """


class WorkflowHookSpecs:
    """Hooks for workflow plugins."""

    @hookspec(historic=True)
    def fl_core_register_workflows(self, register: Register) -> None:
        """Register workflow factories.

        `factory(*, min_clients, rounds, **options)` must return a `Workflow`;
        `min_clients` and `rounds` come from the job's top level, `options` from
        the job's `workflow.options`. The factory must raise
        `fl_core.errors.ConfigError` (source `job.yaml`, key
        `workflow.options.<name>`) for an option it does not accept.
        """
