"""Training scripts that end badly when no task is left to fail.

A script that exits non-zero, or is killed, before it answers a task fails
that task. One that does so after sending its result (or at the end of the
job, with `launch: once`) has no task to fail: its client job reports a
`ScriptError` to the server job (`Topic.SCRIPT_ERROR`), which prints a
WARNING, lists it in `summary.json` under `script_errors`, and fails the
job if `executor.fail_on_script_error` is set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fl_core.errors import FlCoreError

__all__ = ["MAX_LINE", "ScriptError", "ScriptErrorSink", "last_line"]

MAX_LINE = 500
"""Characters of a script's last stderr line kept in a report."""
_MAX_WHAT = 200


def last_line(text: str) -> str:
    """The last non-blank line of `text`, bounded to `MAX_LINE` characters."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:MAX_LINE] if lines else ""


@dataclass(frozen=True, slots=True)
class ScriptError:
    """How one site's training script ended badly, with no task left to fail."""

    site: str
    round_number: int | None
    """The (0-based) round of the last result it sent; None if it sent none."""
    exit_code: int | None
    """Its exit code (negative: the signal that killed it); None if unknown."""
    last_line: str
    """The last line of its stderr (in-process: of its traceback)."""
    what: str
    """How it ended, as a phrase: `exited with code 1`, `was killed by SIGKILL`."""

    def describe(self) -> str:
        """One line for a log or the run's output: site, how it ended, when, last line."""
        if self.round_number is None:
            when = "before it sent any result"
        else:
            when = f"after sending its result of round {self.round_number + 1}"
        text = f"{self.site}: the training script {self.what} {when}"
        return f"{text}: {self.last_line}" if self.last_line else text

    def payload(self) -> dict[str, object]:
        """The `Topic.SCRIPT_ERROR` message body (the site is the sender)."""
        return {
            "round": self.round_number,
            "exit_code": self.exit_code,
            "last_line": self.last_line,
            "what": self.what,
        }

    def summary(self) -> dict[str, object]:
        """The entry in `summary.json`'s `script_errors`."""
        return {"site": self.site, **self.payload()}

    @classmethod
    def from_payload(cls, site: str, body: object) -> ScriptError:
        """Read a peer's report; raises `FlCoreError` saying what is wrong with it."""
        if not isinstance(body, dict):
            raise FlCoreError(f"script error report from {site}: not a mapping")
        round_number, code = body.get("round"), body.get("exit_code")
        line, what = body.get("last_line", ""), body.get("what", "")
        for name, value in (("round", round_number), ("exit_code", code)):
            if value is not None and type(value) is not int:
                raise FlCoreError(f"script error report from {site}: {name} is not an int")
        if not isinstance(line, str) or not isinstance(what, str) or not what:
            raise FlCoreError(f"script error report from {site}: last_line and what must be text")
        return cls(site, round_number, code, line[:MAX_LINE], what[:_MAX_WHAT])


ScriptErrorSink = Callable[[ScriptError], None]
"""Where an executor reports a `ScriptError` (the site's client runner)."""
