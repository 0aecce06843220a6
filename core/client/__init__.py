"""The Client API: what a training script uses to take part in a job.

    import fl_core.client as flare

    flare.init()
    while flare.is_running():
        model = flare.receive()
        if model is None:
            break
        new_params = {k: v + 1 for k, v in model.params.items()}
        flare.send(flare.FLModel(params=new_params, meta={"num_samples": 100}))

The same script runs unchanged in the simulator and in a training process of
its own (a job that names a pipe). Arrays received in-process are read-only
views of the server's model: copy one (`v.copy()`) before changing it in
place. A script may send torch tensors; its later tasks then arrive as
tensors too (writable copies in-process).
"""

from __future__ import annotations

import atexit
import math
import threading
from contextlib import ExitStack
from dataclasses import replace
from numbers import Integral, Real

import numpy as np

from fl_core.client.session import ClientSession, bound_session, current_session
from fl_core.client.torch_params import to_numpy
from fl_core.errors import FlCoreError
from fl_core.model import FLModel, MetaKey, ParamsType

__all__ = [
    "FLModel",
    "MetaKey",
    "ParamsType",
    "get_job_id",
    "get_site_name",
    "init",
    "is_running",
    "log",
    "receive",
    "send",
]

_state = threading.local()


def _session() -> ClientSession:
    session = current_session()
    initialized: ClientSession | None = getattr(_state, "initialized", None)
    if initialized is not session:
        raise FlCoreError("call flare.init() before any other Client API function")
    return session


_env_lock = threading.Lock()
_env_session: ClientSession | None = None
"""The session made from `FL_CORE_PIPE`, once: a training process has one client job."""


def _bind_from_environment() -> None:
    """Bind the `FL_CORE_PIPE` session to this thread if no runtime bound one."""
    global _env_session
    if getattr(_state, "bindings", None) is not None:
        return
    try:
        current_session()
        return
    except FlCoreError:
        pass  # nothing bound: maybe this is a training process started with a pipe
    from fl_core.client.pipe_session import session_from_environment

    with _env_lock:
        if _env_session is None:
            made = session_from_environment()
            if made is None:
                return
            atexit.register(made.close)
            _env_session = made
        session = _env_session
    # Bound for the thread's lifetime, so later calls from it reach the session.
    bindings = ExitStack()
    bindings.enter_context(bound_session(session))
    _state.bindings = bindings


def init() -> None:
    """Attach this script to the fl-core runtime that started it. Call once, first.

    In a training process of its own, the runtime is reached through the pipe
    that `FL_CORE_PIPE` names (see `fl_core.client.pipe_session`).
    """
    _bind_from_environment()
    _state.initialized = current_session()


def receive(timeout: float | None = None) -> FLModel | None:
    """Wait for the next task and return its model; None when there is no more work.

    Params are numpy arrays, or torch tensors once this site's script has
    sent torch tensors (its next tasks come back in the form it sent).
    """
    session = _session()
    model = session.receive(timeout)
    if model is not None and session.wants_torch():
        from fl_core.client.torch_params import to_torch

        model = replace(model, params=to_torch(model.params))  # type: ignore[arg-type]
    return model


def send(model: FLModel) -> None:
    """Return the result of the last received task to the server.

    `model.params` must map names to numpy arrays or torch tensors (or be
    empty, to send metrics only); `meta["num_samples"]` weights this site's
    result. Arrays sent belong to the runtime afterwards: do not change them.
    """
    if not isinstance(model, FLModel):
        raise TypeError(f"flare.send() takes an FLModel, got {type(model).__name__}")
    if not isinstance(model.params, dict):
        raise TypeError(f"FLModel.params must be a dict, got {type(model.params).__name__}")
    params, sent_torch = to_numpy(model.params)
    for name, value in params.items():
        if not isinstance(name, str):
            raise TypeError(f"FLModel.params keys must be str, got {name!r}")
        if not isinstance(value, np.ndarray):
            raise TypeError(
                f"FLModel.params[{name!r}] must be a numpy array or a torch tensor, "
                f"got {type(value).__name__}"
            )
    converted = replace(model, params=params) if sent_torch else model
    _session().send(converted, sent_torch=sent_torch)


def is_running() -> bool:
    """True while the job has work for this script."""
    return _session().is_running()


def get_site_name() -> str:
    """The name of the site this script trains for."""
    return _session().site_name


def get_job_id() -> str:
    """The id of the running job."""
    return _session().job_id


LOGGED_TYPES = ("SCALAR", "METRIC")
"""The `data_type`s `log` records: fl-core keeps numbers, one per call."""


def log(
    key: str,
    value: float,
    data_type: object = "SCALAR",
    global_step: int | None = None,
    *,
    step: int | None = None,
    **kwargs: object,
) -> None:
    """Record a metric (`loss`, `accuracy`) at a step; kept in the job's workspace.

    The signature is the FLARE Client API's, `log(key, value, data_type,
    global_step=..., **kwargs)`: `data_type` is `"SCALAR"` or `"METRIC"`
    (or an enum whose name or value is one of them); the step is
    `global_step`, or `step` as earlier fl-core scripts wrote it. Other
    keyword arguments (a FLARE writer name, for example) are accepted and
    not recorded.
    """
    del kwargs  # accepted so FLARE-style calls work; nothing here uses them
    if not isinstance(key, str) or not key:
        raise TypeError("flare.log() needs a non-empty str key")
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise TypeError(f"flare.log({key!r}): value must be a finite number, got {value!r}")
    _check_data_type(key, data_type)
    chosen = _step(key, "global_step", global_step)
    given = _step(key, "step", step)
    if chosen is not None and given is not None and chosen != given:
        raise ValueError(
            f"flare.log({key!r}): global_step={chosen} and step={given} disagree; pass one"
        )
    _session().log(key, float(value), given if chosen is None else chosen)


def _check_data_type(key: str, data_type: object) -> None:
    if isinstance(data_type, bool | Integral):
        # log(key, value, 3) meant a step before data_type took this place, as in FLARE.
        raise TypeError(
            f"flare.log({key!r}): the third argument is data_type (e.g. 'SCALAR'), "
            f"got {data_type!r}; pass a step as global_step= or step="
        )
    names = {str(data_type).upper()}
    for attribute in ("name", "value"):  # an enum, such as FLARE's AnalyticsDataType
        part = getattr(data_type, attribute, None)
        if isinstance(part, str):
            names.add(part.upper())
    if not names & set(LOGGED_TYPES):
        raise ValueError(
            f"flare.log({key!r}): data_type {data_type!r} is not recorded by fl-core; "
            f"use one of {', '.join(LOGGED_TYPES)} with a number"
        )


def _step(key: str, name: str, value: object) -> int | None:
    if value is None:
        return None
    # bool is an Integral, but `step=True` is a mistake, not step 1.
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"flare.log({key!r}): {name} must be an int, got {value!r}")
    return int(value)
