"""Registers the `evaluate` workflow, as any third-party plugin would."""

from __future__ import annotations

from typing import Any

from fl_core.errors import ConfigError, JobFailedError
from fl_core.model import FLModel
from fl_core.spec import Register, hookimpl
from fl_core.spec.workflow import Task, Workflow, WorkflowContext, WorkflowEvent


class Evaluate(Workflow):
    """Sends the initial model once as task `validate` and averages the metrics."""

    def __init__(self, min_clients: int, timeout: float) -> None:
        self.min_clients = min_clients
        self.timeout = timeout

    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        sums: dict[str, float] = {}
        count = 0

        def fold(site: str, result: FLModel) -> None:
            nonlocal count
            count += 1
            for key, value in result.metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value)

        ctx.emit(WorkflowEvent.ROUND_STARTED, 0, sites=len(ctx.sites()))
        report = ctx.send_task(
            Task("validate", FLModel(params=initial.params, current_round=0, total_rounds=1), 0),
            ctx.sites(),
            self.timeout,
            fold,
        )
        if count < self.min_clients:
            raise JobFailedError(ctx.job_id, f"only {count} evaluations: {report.failed}")
        metrics = {k: v / count for k, v in sums.items()}
        ctx.record_metrics(0, {"metrics": metrics, "results": count})
        ctx.emit(WorkflowEvent.ROUND_FINISHED, 0, results=count, metrics=metrics)
        return FLModel(params=initial.params, metrics=metrics)


def make_evaluate(*, min_clients: int, rounds: int, timeout: float = 60.0, **rest: Any) -> Evaluate:
    """Build the workflow; `rounds` is ignored (evaluation is one pass)."""
    if rest:
        raise ConfigError("job.yaml", f"workflow.options.{sorted(rest)[0]}", "unknown option")
    return Evaluate(min_clients, float(timeout))


@hookimpl
def fl_core_register_workflows(register: Register) -> None:
    """Provide the `evaluate` workflow."""
    register("evaluate", make_evaluate)


EVENTS_ENV = "FLCORE_EVALUATE_EVENTS"
"""A file to which the event hooks below append one JSON line per event, when set."""


def _record(event: str, **fields: str) -> None:
    import json
    import os

    path = os.environ.get(EVENTS_ENV)
    if path:
        with open(path, "a") as out:
            out.write(json.dumps({"event": event, "pid": os.getpid(), **fields}) + "\n")


@hookimpl
def fl_core_job_started(job_id: str, mode: str) -> None:
    """Note that a job started (in the process that runs its workflow)."""
    _record("started", job_id=job_id, mode=mode)


@hookimpl
def fl_core_job_finished(job_id: str, mode: str, status: str, reason: str) -> None:
    """Note how a job ended."""
    _record("finished", job_id=job_id, mode=mode, status=status, reason=reason)
