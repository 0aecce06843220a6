"""The workflow contract: a third-party workflow passes it, and it catches broken workflows."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fl_core.model import FLModel
from fl_core.spec.workflow import Task, Workflow, WorkflowContext
from fl_core.testing.workflow_contract import WorkflowContract


class TestEvaluateFromItsInstalledPlugin(WorkflowContract):
    """`evaluate` (tests/thirdparty_plugin), found through its entry point like any plugin."""

    component = "evaluate"
    plugin = "evaluate"


class Naive(Workflow):
    """Averages without weights; `ignore_abort` and `extra_site` break the spec on purpose."""

    def __init__(self, rounds: int, *, ignore_abort: bool = False, extra_site: bool = False):
        self.rounds = rounds
        self.ignore_abort = ignore_abort
        self.extra_site = extra_site

    def run(self, ctx: WorkflowContext, initial: FLModel) -> FLModel:
        params = initial.params
        for round_number in range(self.rounds):
            if ctx.aborted() and not self.ignore_abort:
                break
            results: list[FLModel] = []
            targets = ctx.sites() + (["site-9"] if self.extra_site else [])
            task = Task("train", FLModel(params=params), round_number)
            ctx.send_task(task, targets, 5.0, lambda site, model, into=results: into.append(model))
            params = {n: np.mean([r.params[n] for r in results], axis=0) for n in params}
        return FLModel(params=params)


def naive(**broken: bool) -> Callable[..., Workflow]:
    def build(min_clients: int, rounds: int, **options: Any) -> Workflow:
        return Naive(rounds, **broken)

    return build


class Claims(WorkflowContract):
    fedavg = True


def test_an_unweighted_mean_fails_the_fedavg_check(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        Claims().test_fedavg_makes_the_weighted_mean_the_next_global_model(naive(), tmp_path)


def test_a_workflow_that_ignores_an_abort_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError):
        Claims().test_an_abort_ends_the_run_before_another_task(naive(ignore_abort=True), tmp_path)
    Claims().test_an_abort_ends_the_run_before_another_task(naive(), tmp_path)


def test_a_task_to_a_site_that_is_not_present_fails(tmp_path: Path) -> None:
    with pytest.raises(AssertionError, match="not present: \\['site-9'\\]"):
        Claims().test_tasks_carry_round_numbers_within_the_job(naive(extra_site=True), tmp_path)
