"""Job configuration: read and validate the `job.yaml` of a job folder.

    from fl_core.config import load_job

    job = load_job("jobs/hello-numpy")
    job.executor.script  # absolute path of train.py inside the job folder

Every problem raises `fl_core.errors.ConfigError` with the file, the dotted key
and what was expected.
"""

from __future__ import annotations

from .job import (
    COMPONENT_KINDS,
    DEFAULT_WORKFLOW,
    JOB_FILE,
    ComponentChoice,
    ExecutorConfig,
    JobConfig,
    LaunchMode,
    load_job,
    parse_job,
)

__all__ = [
    "COMPONENT_KINDS",
    "DEFAULT_WORKFLOW",
    "JOB_FILE",
    "ComponentChoice",
    "ExecutorConfig",
    "JobConfig",
    "LaunchMode",
    "load_job",
    "parse_job",
]
