"""Where `fl-core run` writes a run's results, and what it does with an earlier run there.

A run starts in an empty workspace, so that `log.txt`, `site_metrics.jsonl`
and `trainers/` hold this run only. An earlier run's workspace is moved aside
to the first free `<workspace>.1`, `<workspace>.2`, ..., and the command says
where. A folder that holds something other than an fl-core run is left alone
and refused: moving a folder the user did not mean (`--workspace .`) would be
worse than stopping.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Final

from fl_core.errors import FlCoreError

__all__ = ["RUN_FILES", "WorkspaceInUseError", "empty_model_warning", "fresh_workspace"]

RUN_FILES: Final = frozenset(
    {"log.txt", "summary.json", "metrics.json", "final_model.npz", "site_metrics.jsonl", "trainers"}
)
"""Names that only an fl-core run writes into its workspace."""


class WorkspaceInUseError(FlCoreError):
    """`--workspace` names something that is not an fl-core run's workspace."""


def fresh_workspace(workspace: Path) -> Path | None:
    """Make sure `workspace` is free for a new run; return where an earlier run went, if moved.

    Raises `WorkspaceInUseError` when `workspace` is a file, or a folder that
    holds files no fl-core run wrote.
    """
    if workspace.is_symlink() or (workspace.exists() and not workspace.is_dir()):
        raise WorkspaceInUseError(
            f"--workspace {workspace} is not a folder; choose another --workspace"
        )
    if not workspace.exists() or not any(workspace.iterdir()):
        return None
    if not any((workspace / name).exists() for name in RUN_FILES):
        raise WorkspaceInUseError(
            f"--workspace {workspace} is not empty and holds no earlier fl-core run; "
            "choose an empty or new folder"
        )
    number = 1
    while (aside := workspace.with_name(f"{workspace.name}.{number}")).exists():
        number += 1
    workspace.rename(aside)
    return aside


def empty_model_warning(final_model: Path) -> str:
    """A warning for the run's output if `final_model` holds no arrays, else ''.

    A job without `initial_model` sends its sites an empty model; a script that
    only updates what it receives sends nothing back, and the job "finishes"
    with nothing learned. That must not pass silently.
    """
    from fl_core.model import load_params

    try:
        params = load_params(final_model)
    except (OSError, ValueError, zipfile.BadZipFile):
        return ""  # no model, or not ours to judge: the run reports its own errors
    if params:
        return ""
    return (
        f"warning: the final model {final_model} is empty: no site sent any parameters. "
        "A job without initial_model starts from an empty model, so its training script "
        "must send weights of its own"
    )
