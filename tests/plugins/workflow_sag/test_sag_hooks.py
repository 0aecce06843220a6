"""The workflow_sag plugin registers `sag`, and its factory validates options."""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pluggy
import pytest

from fl_core.config.options import MAX_SECONDS
from fl_core.errors import ConfigError
from fl_core.spec.workflow import Workflow, WorkflowHookSpecs
from fl_core.testing import plugin_manager_with
from fl_plugins.workflow_sag import hooks
from fl_plugins.workflow_sag.workflow import ScatterAndGather


def test_hook_registers_sag_with_a_plain_pluggy_manager() -> None:
    pm = pluggy.PluginManager("fl_core")
    pm.add_hookspecs(WorkflowHookSpecs)
    pm.register(hooks, name="workflow_sag")
    registered: dict[str, Callable[..., Any]] = {}

    def collect(name: str, factory: Callable[..., Any], **_: object) -> None:
        registered[name] = factory

    pm.hook.fl_core_register_workflows(register=collect)

    assert list(registered) == ["sag"]
    workflow = registered["sag"](min_clients=2, rounds=3, task_timeout=5)
    assert isinstance(workflow, ScatterAndGather)
    assert (workflow.min_clients, workflow.rounds, workflow.task_timeout) == (2, 3, 5.0)


def test_registry_of_a_manager_with_only_this_plugin_builds_sag() -> None:
    registry = plugin_manager_with("workflow_sag", hooks).registry()
    assert registry.names("workflow") == {"sag": "workflow_sag"}
    workflow = registry.create(
        "workflow", "sag", {"min_clients": 1, "rounds": 1, "task_name": "fit"}, expect=Workflow
    )
    assert isinstance(workflow, ScatterAndGather)
    assert workflow.task_name == "fit"


def test_importing_hooks_does_not_import_numpy_or_the_workflow() -> None:
    code = (
        "import sys, fl_plugins.workflow_sag.hooks\n"
        "print(sorted(m for m in ('numpy', 'fl_plugins.workflow_sag.workflow') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_defaults() -> None:
    workflow = hooks.make_sag(min_clients=3, rounds=2)
    assert isinstance(workflow, ScatterAndGather)
    assert workflow.task_timeout == 600.0
    assert workflow.task_name == "train"
    assert workflow.min_responses == 3


@pytest.mark.parametrize(
    ("options", "key"),
    [
        ({"round_timeout": 5}, "workflow.options.round_timeout"),
        ({"task_timeout": 0}, "workflow.options.task_timeout"),
        ({"task_timeout": -1.5}, "workflow.options.task_timeout"),
        ({"task_timeout": "10"}, "workflow.options.task_timeout"),
        ({"task_timeout": True}, "workflow.options.task_timeout"),
        ({"task_timeout": math.inf}, "workflow.options.task_timeout"),
        ({"task_timeout": math.nan}, "workflow.options.task_timeout"),
        ({"task_timeout": 10**30}, "workflow.options.task_timeout"),
        ({"task_timeout": 1e30}, "workflow.options.task_timeout"),
        ({"task_timeout": 10**5000}, "workflow.options.task_timeout"),
        ({"task_name": 3}, "workflow.options.task_name"),
        ({"task_name": ""}, "workflow.options.task_name"),
        ({"min_responses": 0}, "workflow.options.min_responses"),
        ({"min_responses": 1.0}, "workflow.options.min_responses"),
        ({"min_responses": True}, "workflow.options.min_responses"),
        ({"min_responses": 3}, "workflow.options.min_responses"),
        ({"min_clients": 0}, "min_clients"),
        ({"min_clients": "2"}, "min_clients"),
        ({"rounds": 0}, "rounds"),
        ({"rounds": 2.0}, "rounds"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(
    options: dict[str, object], key: str
) -> None:
    kwargs: dict[str, Any] = {"min_clients": 2, "rounds": 1, **options}
    with pytest.raises(ConfigError) as info:
        hooks.make_sag(**kwargs)
    assert info.value.source == "job.yaml"
    assert info.value.key == key
    assert info.value.problem


def test_a_task_timeout_is_bounded_like_every_time_in_a_config() -> None:
    # Beyond the bound the run's clock arithmetic overflows; the check says so up front.
    assert hooks.make_sag(min_clients=1, rounds=1, task_timeout=MAX_SECONDS).task_timeout == (
        MAX_SECONDS
    )
    with pytest.raises(ConfigError, match=r"seconds > 0 and <= 1e\+09, got 10{30} \(int\)"):
        hooks.make_sag(min_clients=1, rounds=1, task_timeout=10**30)
