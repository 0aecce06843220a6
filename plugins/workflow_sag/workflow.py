"""ScatterAndGather: send the global model to every site, average what comes back.

Each round: check enough sites are present, send one task to all of them, fold
every result into a `WeightedAggregator` array by array while it arrives
(`on_stream`, so the server never holds a whole incoming result), fail the job
if fewer than `min_responses` results were usable, then save the new global
model and the round's metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fl_core.config.options import MAX_SECONDS, describe, is_seconds
from fl_core.errors import ConfigError, JobFailedError
from fl_core.model import FLModel, Params, ParamsType
from fl_core.spec.workflow import (
    IncomingResult,
    ResultBrokenError,
    Task,
    WholeResult,
    Workflow,
    WorkflowContext,
    WorkflowEvent,
)

from .aggregator import RejectedResult, WeightedAggregator, check_params

SOURCE = "job.yaml"
"""Where the workflow's settings come from, for `ConfigError`."""

DEFAULT_TASK_TIMEOUT = 600.0
DEFAULT_TASK_NAME = "train"

_OPTIONS = ("task_timeout", "task_name", "min_responses")


def _positive_int(key: str, value: object) -> int:
    # bool is an int subclass; `rounds: true` in YAML is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(SOURCE, key, f"expected an integer >= 1, got {describe(value)}")
    if value < 1:
        raise ConfigError(SOURCE, key, f"expected an integer >= 1, got {value}")
    return value


class ScatterAndGather(Workflow):
    """FedAvg: every round, all sites train on the global model; results are averaged.

    Results are weighted by `FLModel.weight()` (num_samples, else num_steps,
    else 1). FULL and DIFF results may mix. A result whose structure does not
    match the global model, or whose weight is not finite and positive, is
    rejected and counted as failed; the round fails only when fewer than
    `min_responses` results are left.
    """

    def __init__(
        self,
        *,
        min_clients: int,
        rounds: int,
        task_timeout: float = DEFAULT_TASK_TIMEOUT,
        task_name: str = DEFAULT_TASK_NAME,
        min_responses: int | None = None,
    ) -> None:
        self.min_clients = _positive_int("min_clients", min_clients)
        self.rounds = _positive_int("rounds", rounds)
        key = "workflow.options."
        # Bounded like every time in a config: a huge one overflows the clock's arithmetic.
        if not is_seconds(task_timeout):
            raise ConfigError(
                SOURCE,
                key + "task_timeout",
                f"expected a number of seconds > 0 and <= {MAX_SECONDS:g}, "
                f"got {describe(task_timeout)}",
            )
        self.task_timeout = float(task_timeout)
        if not isinstance(task_name, str) or not task_name:
            raise ConfigError(
                SOURCE,
                key + "task_name",
                f"expected a non-empty string, got {describe(task_name)}",
            )
        self.task_name = task_name
        if min_responses is None:
            min_responses = self.min_clients
        self.min_responses = _positive_int(key + "min_responses", min_responses)
        if self.min_responses > self.min_clients:
            # A round starts with as few as min_clients sites; more responses could never come.
            raise ConfigError(
                SOURCE,
                key + "min_responses",
                f"must not exceed min_clients ({self.min_clients}), got {self.min_responses}",
            )

    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        """Run all rounds and return the final global model (see the class docstring)."""
        problem = check_params(initial.params)
        if problem is not None:
            raise JobFailedError(ctx.job_id, f"initial model: {problem}")
        # Take the initial params over (the spec hands `initial` to the
        # workflow), so the first global model is freed once replaced.
        global_params: Params = initial.params
        initial.params = {}
        metrics: dict[str, float] = {}
        for round_number in range(self.rounds):
            global_params, metrics = self._round(ctx, round_number, global_params)
        return FLModel(
            params=global_params,
            params_type=ParamsType.FULL,
            metrics=metrics,
            current_round=self.rounds - 1,
            total_rounds=self.rounds,
        )

    def _round(
        self, ctx: WorkflowContext, round_number: int, global_params: Params
    ) -> tuple[Params, dict[str, float]]:
        """One round; returns the new global params and the averaged metrics."""
        if ctx.aborted():
            raise JobFailedError(ctx.job_id, "aborted")
        targets = ctx.sites()
        if len(targets) < self.min_clients:
            present = ", ".join(targets) or "none"
            raise JobFailedError(
                ctx.job_id,
                f"round {round_number + 1}: {len(targets)} of {self.min_clients} required sites "
                f"present ({present})",
            )
        ctx.emit(WorkflowEvent.ROUND_STARTED, round_number, sites=len(targets))

        aggregator = WeightedAggregator(global_params)
        failed: dict[str, str] = {}
        fold_error: list[tuple[str, BaseException]] = []

        def on_stream(site: str, result: IncomingResult) -> None:
            if fold_error:
                return  # the round is already lost; do not touch the accumulators again
            try:
                weight = aggregator.add_stream(site, result)
            except ResultBrokenError as exc:
                # What it delivered whole stays folded; the site is not counted.
                failed[site] = exc.reason
                ctx.emit(WorkflowEvent.RESULT_FAILED, round_number, site=site, reason=exc.reason)
                return
            except RejectedResult as exc:
                if site not in aggregator.accepted:
                    failed[site] = exc.reason
                ctx.emit(WorkflowEvent.RESULT_FAILED, round_number, site=site, reason=exc.reason)
                return
            except Exception as exc:
                # Raising into the context's gather loop has no defined meaning;
                # keep the error and fail the job with it once send_task returns.
                fold_error.append((site, exc))
                return
            ctx.emit(WorkflowEvent.RESULT_RECEIVED, round_number, site=site, weight=weight)

        task = Task(
            name=self.task_name,
            data=FLModel(
                params=dict(global_params),
                params_type=ParamsType.FULL,
                current_round=round_number,
                total_rounds=self.rounds,
                meta={},
            ),
            round_number=round_number,
        )

        def on_result(site: str, model: FLModel) -> None:
            # Only a context that does not know `on_stream` calls this.
            try:
                whole = WholeResult(site, model)
            except ValueError as exc:
                failed[site] = str(exc)
                ctx.emit(WorkflowEvent.RESULT_FAILED, round_number, site=site, reason=str(exc))
                return
            on_stream(site, whole)

        report = ctx.send_task(task, targets, self.task_timeout, on_result, on_stream=on_stream)

        if fold_error:
            site, exc = fold_error[0]
            raise JobFailedError(
                ctx.job_id,
                f"round {round_number + 1}: folding the result of {site} failed: "
                f"{type(exc).__name__}: {exc}",
            ) from exc
        if ctx.aborted():
            raise JobFailedError(ctx.job_id, "aborted")

        lost = dict(report.failed)
        for site in report.timed_out:
            lost[site] = f"timed out after {self.task_timeout:g} s"
        answered = set(report.received) | lost.keys() | failed.keys()
        for site in targets:
            if site not in answered:
                lost[site] = "no result and no failure reported"
        for site, reason in lost.items():
            if site not in failed and site not in aggregator.accepted:
                failed[site] = reason
                ctx.emit(WorkflowEvent.RESULT_FAILED, round_number, site=site, reason=reason)

        count = len(aggregator.accepted)
        if count < self.min_responses:
            reasons = describe_failures(failed)
            raise JobFailedError(
                ctx.job_id,
                f"round {round_number + 1}: {count} of {self.min_responses} required results"
                + (f"; {reasons}" if reasons else ""),
            )

        new_params = aggregator.finish()
        if new_params is not None:  # None: every result was metrics-only
            global_params = new_params
        metrics = aggregator.metrics()
        ctx.save_model(
            FLModel(
                params=global_params,
                params_type=ParamsType.FULL,
                metrics=dict(metrics),
                current_round=round_number,
                total_rounds=self.rounds,
            ),
            round_number,
        )
        ctx.record_metrics(
            round_number,
            {
                "round": round_number,
                "results": count,
                "sites": list(aggregator.accepted),
                "failed": dict(sorted(failed.items())),
                "metrics": dict(metrics),
            },
        )
        ctx.emit(WorkflowEvent.ROUND_FINISHED, round_number, results=count, metrics=dict(metrics))
        return global_params, metrics


def make_sag(*, min_clients: int, rounds: int, **options: Any) -> ScatterAndGather:
    """Build a `ScatterAndGather` from the job's top level and `workflow.options`.

    Options: `task_timeout` (seconds > 0, default 600), `task_name` (default
    "train"), `min_responses` (results a round needs, default `min_clients`).
    Anything else is a `ConfigError` naming the key.
    """
    for name in options:
        if name not in _OPTIONS:
            raise ConfigError(
                SOURCE,
                f"workflow.options.{name}",
                f"unknown option; expected one of {', '.join(_OPTIONS)}",
            )
    # Values come from YAML and may be of any type; the constructor checks each one.
    return ScatterAndGather(min_clients=min_clients, rounds=rounds, **options)


def describe_failures(failed: Mapping[str, str]) -> str:
    """`site: reason` pairs, sorted by site, as one line."""
    return "; ".join(f"{site}: {reason}" for site, reason in sorted(failed.items()))
