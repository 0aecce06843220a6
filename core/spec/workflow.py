"""Workflows: the server-side controller that drives a job's rounds.

A workflow runs in the server job. It sends tasks to sites through the
`WorkflowContext` the runtime hands it, folds results in as they arrive,
persists the global model and records metrics. It never touches cells,
threads or sockets itself: the context does the messaging, so the same
workflow runs in the simulator, in POC and in production.
"""

from __future__ import annotations

import enum
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fl_core.errors import CellError
from fl_core.spec import Register, hookspec

if TYPE_CHECKING:
    import numpy as np

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
    """Sites whose result was handed to `on_result` (or `on_stream`, and arrived
    whole), in arrival order."""
    failed: dict[str, str] = field(default_factory=dict)
    """Site -> reason, for sites that answered with an error, were lost, or
    whose streamed result broke off (`ResultBrokenError.reason`)."""
    timed_out: list[str] = field(default_factory=list)
    """Sites that had not answered when the timeout passed."""


ResultHandler = Callable[[str, "FLModel"], None]


@dataclass(frozen=True, slots=True)
class ArrayLayout:
    """One array of a result, as its header announces it."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


@dataclass(frozen=True, slots=True)
class ResultHeader:
    """What a result says about itself before any of its array bytes arrive."""

    params_type: str
    """`FULL` or `DIFF` (from a wire header always one of them; from a model
    a site built in-process, whatever it set: check it)."""
    metrics: Mapping[str, object]
    meta: Mapping[str, Any]
    arrays: tuple[ArrayLayout, ...]
    """The arrays in the order `IncomingResult.arrays()` yields them."""
    current_round: int | None = None
    total_rounds: int | None = None

    def weight(self) -> float:
        """The result's weight by `FLModel.weight()`'s rules (samples, else steps, else 1).

        Raises `TypeError` or `ValueError` for a meta value that is not a number.
        """
        from fl_core.model import FLModel

        return FLModel(meta=dict(self.meta)).weight()


class ResultBrokenError(CellError):
    """A streamed result broke off after `delivered` of its `total` arrays.

    Raised by `IncomingResult.arrays()`; `reason` says how far it got, which
    array was incomplete and why (the stream's own error is `cause`).
    """

    def __init__(
        self, site: str, delivered: int, total: int, incomplete: str | None, cause: object
    ) -> None:
        self.site = site
        self.delivered = delivered
        self.total = total
        self.incomplete = incomplete
        self.cause = cause
        where = f" ({incomplete!r} incomplete)" if incomplete is not None else ""
        self.reason = f"its result broke off after {delivered} of {total} arrays{where}: {cause}"
        super().__init__(self.reason)


class IncomingResult(Protocol):
    """A site's result that may still be arriving; handed to `on_stream`.

    The header is there at once; the arrays come one by one. The rules for
    the workflow that receives it:

    - consume it on the thread `on_stream` was called on, before returning;
      after `on_stream` returns the runtime drops whatever is left unread;
    - call `arrays()` at most once; it yields `(name, array)` in the order of
      `header.arrays`, each as soon as it is complete, and keeps no reference;
    - keep an array (or write to it) only if `owns_arrays` is True and, to
      write, the array is writeable; otherwise use it inside the loop only;
    - a result that breaks off (the site died, the stream stalled, the round's
      deadline passed) raises `ResultBrokenError` out of `arrays()`: arrays
      already yielded were complete, the rest never come. Let the error
      propagate out of `on_stream` or catch it; the runtime reports the site
      failed with `ResultBrokenError.reason` either way;
    - the round's deadline applies while you read: a result still arriving
      when `send_task`'s timeout passes breaks off.
    """

    @property
    def site(self) -> str:
        """The site that sent the result."""

    @property
    def header(self) -> ResultHeader:
        """params_type, metrics, meta and the arrays' layout, before any array."""

    @property
    def owns_arrays(self) -> bool:
        """True if every array yielded is handed over: keep it, and write to it if
        `flags.writeable` (one the runtime cannot hand over exclusively comes
        read-only). False: arrays are only lent for the loop body."""

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """The arrays `(name, array)` as each completes; raises `ResultBrokenError`."""


StreamHandler = Callable[[str, IncomingResult], None]

_SOLE_REFCOUNT = 3
"""References to an array held only by its params dict, as `WholeResult` counts
them: the dict's entry, the loop's name, and `sys.getrefcount`'s own argument."""


class WholeResult:
    """An `IncomingResult` over a model that is already whole.

    The runtime uses it for results that came in one piece (the in-process
    transport, small payloads), so a workflow has one path; tests of a
    workflow's `on_stream` can use it too. An array is handed over (yielded
    as is) only if nothing but the model's params dict refers to it and it
    owns its memory; any other comes as a read-only view, so a site script
    that kept its array, or a view of the global model, is never written to.
    """

    def __init__(self, site: str, model: FLModel) -> None:
        """Raises `ValueError` naming the first param that is not a numpy array."""
        import numpy as np

        arrays: list[ArrayLayout] = []
        for name, value in model.params.items():
            if not isinstance(value, np.ndarray):
                raise ValueError(f"param {name!r} is a {type(value).__name__}, not a numpy array")
            arrays.append(ArrayLayout(name, tuple(value.shape), value.dtype))
        self._site = site
        self._params: dict[str, np.ndarray] | None = model.params
        self._header = ResultHeader(
            params_type=str(model.params_type),
            metrics=model.metrics,
            meta=model.meta,
            arrays=tuple(arrays),
            current_round=model.current_round,
            total_rounds=model.total_rounds,
        )

    @property
    def site(self) -> str:
        """The site that sent the result."""
        return self._site

    @property
    def header(self) -> ResultHeader:
        """The model's params_type, metrics, meta and array layout."""
        return self._header

    @property
    def owns_arrays(self) -> bool:
        """Always True: arrays that cannot be handed over come read-only."""
        return True

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        """The model's arrays in order; see the class docstring for which are handed over."""
        params = self._params
        if params is None:
            raise CellError(f"the result of {self._site} was already consumed")
        self._params = None
        for name in list(params):
            # Looked up, not taken from items(): its iterator keeps the last pair alive.
            x = params[name]
            if not (x.flags.owndata and sys.getrefcount(x) <= _SOLE_REFCOUNT):
                x = x.view()
                x.flags.writeable = False
            yield name, x
            del x


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
        *,
        on_stream: StreamHandler | None = None,
    ) -> GatherReport:
        """Send `task` to every target and gather their results.

        Blocks until every target has answered or failed, or `timeout`
        seconds have passed, or the job is aborted. `on_result(site, model)`
        is called once per successful result as it arrives, never for two
        results at once, so an aggregator needs no lock; after it returns
        the runtime drops its reference to the result. Failures and timeouts
        are in the returned report, never raised.

        With `on_stream`, every successful result goes to
        `on_stream(site, result)` instead, as an `IncomingResult` the moment
        its header is there (one that came whole is wrapped the same way),
        and `on_result` is not called. Its arrays are read while they arrive,
        so the server holds the bytes in flight rather than a whole result;
        see `IncomingResult` for what the workflow may do. The site hears
        back after `on_stream` returns: accepted, or not accepted if its
        result broke off (the site is then in `report.failed`).
        """

    def save_model(self, model: FLModel, round_number: int) -> Path:
        """Persist the global model of a round; returns the file that holds it.

        The runtime may write the file after this returns (the next round
        does not wait for the disk), so the model's arrays must not be
        changed in place afterwards; build the next model in new arrays. A
        write that fails fails the job.
        """

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

    @hookspec
    def fl_core_register_workflows(self, register: Register) -> None:
        """Register workflow factories.

        `factory(*, min_clients, rounds, **options)` must return a `Workflow`;
        `min_clients` and `rounds` come from the job's top level, `options` from
        the job's `workflow.options`. The factory must raise
        `fl_core.errors.ConfigError` (source `job.yaml`, key
        `workflow.options.<name>`) for an option it does not accept.
        """
