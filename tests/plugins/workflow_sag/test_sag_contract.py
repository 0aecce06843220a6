"""The workflow contract, run against `sag` through the factory `workflow_sag` registers."""

from __future__ import annotations

from fl_core.testing.workflow_contract import WorkflowContract


class TestSagWorkflowContract(WorkflowContract):
    component = "sag"
    plugin = "workflow_sag"
    workflow_options = {"task_timeout": 5}
    fedavg = True
