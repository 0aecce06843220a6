"""The Client API as a training script sees it, bound to a real in-process session."""

from __future__ import annotations

import enum
import threading

import numpy as np
import pytest

import fl_core.client as flare
from fl_core.client.session import ClientSession, bound_session
from fl_core.errors import FlCoreError
from fl_core.model import FLModel


class RecordingSession(ClientSession):
    def __init__(self) -> None:
        self.sent: list[FLModel] = []
        self.logged: list[tuple[str, float, int | None]] = []

    @property
    def site_name(self) -> str:
        return "site-7"

    @property
    def job_id(self) -> str:
        return "job-9"

    def receive(self, timeout: float | None) -> FLModel | None:
        return FLModel(params={"w": np.zeros(2)})

    def send(self, model: FLModel, *, sent_torch: bool = False) -> None:
        self.sent.append(model)

    def is_running(self) -> bool:
        return not self.sent

    def log(self, key: str, value: float, step: int | None) -> None:
        self.logged.append((key, value, step))


def test_outside_a_runtime_init_says_how_to_run_the_script() -> None:
    with pytest.raises(FlCoreError, match=r"run the script as part of a job \(`fl-core run JOB`\)"):
        flare.init()


def test_calls_before_init_are_refused() -> None:
    with (
        bound_session(RecordingSession()),
        pytest.raises(FlCoreError, match=r"call flare\.init\(\) before"),
    ):
        flare.receive()


def test_a_script_round_trip() -> None:
    session = RecordingSession()
    with bound_session(session):
        flare.init()
        assert (flare.get_site_name(), flare.get_job_id()) == ("site-7", "job-9")
        assert flare.is_running()
        model = flare.receive()
        assert model is not None
        flare.log("loss", np.float32(0.5), step=3)
        flare.send(FLModel(params={"w": model.params["w"] + 1}, meta={"num_samples": 4}))
        assert not flare.is_running()
    assert session.logged == [("loss", 0.5, 3)]
    assert session.sent[0].params["w"].tolist() == [1.0, 1.0]


def test_sessions_are_per_thread() -> None:
    seen: list[str] = []
    with bound_session(RecordingSession()):
        flare.init()

        def other() -> None:
            try:
                flare.get_site_name()
            except FlCoreError as exc:
                seen.append(str(exc))

        thread = threading.Thread(target=other)
        thread.start()
        thread.join()
    assert seen and "no fl-core runtime" in seen[0]


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"w": np.zeros(1)}, "takes an FLModel, got dict"),
        (FLModel(params=[np.zeros(1)]), "params must be a dict, got list"),  # type: ignore[arg-type]
        (FLModel(params={"w": [1.0]}), r"params\['w'\] must be .* tensor, got list"),  # type: ignore[dict-item]
        (FLModel(params={3: np.zeros(1)}), "keys must be str"),  # type: ignore[dict-item]
    ],
)
def test_send_rejects_what_cannot_travel(model: object, message: str) -> None:
    session = RecordingSession()
    with bound_session(session):
        flare.init()
        with pytest.raises(TypeError, match=message):
            flare.send(model)  # type: ignore[arg-type]
    assert session.sent == []


@pytest.mark.parametrize("value", [float("nan"), "0.5", True, None])
def test_log_rejects_non_numbers(value: object) -> None:
    with bound_session(RecordingSession()):
        flare.init()
        with pytest.raises(TypeError, match="must be a finite number"):
            flare.log("loss", value)  # type: ignore[arg-type]


class _DataType(enum.Enum):
    """Like FLARE's AnalyticsDataType: members whose values are the type names."""

    SCALAR = "SCALAR"
    TEXT = "TEXT"


@pytest.mark.parametrize(
    ("args", "kwargs", "logged"),
    [
        (("acc", 0.5, "SCALAR"), {}, ("acc", 0.5, None)),
        (("acc", 0.5, "SCALAR"), {"global_step": 4}, ("acc", 0.5, 4)),
        (("acc", 0.5, _DataType.SCALAR, 2), {"writer": "tb"}, ("acc", 0.5, 2)),
        (("acc", 0.5), {"data_type": "metric", "global_step": np.int64(7)}, ("acc", 0.5, 7)),
        (("acc", 0.5), {"step": 3}, ("acc", 0.5, 3)),
        (("acc", 0.5), {"step": 3, "global_step": 3}, ("acc", 0.5, 3)),
    ],
)
def test_log_takes_flare_s_signature_and_step(
    args: tuple[object, ...], kwargs: dict[str, object], logged: tuple[object, ...]
) -> None:
    session = RecordingSession()
    with bound_session(session):
        flare.init()
        flare.log(*args, **kwargs)  # type: ignore[arg-type]
    assert session.logged == [logged]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("acc", 0.5), {"step": "SCALAR"}, TypeError, r"step must be an int, got 'SCALAR'"),
        (("acc", 0.5), {"step": 1.5}, TypeError, r"step must be an int, got 1\.5"),
        (("acc", 0.5), {"global_step": True}, TypeError, r"global_step must be an int, got True"),
        (("acc", 0.5, 3), {}, TypeError, r"third argument is data_type .* global_step= or step="),
        (("acc", 0.5, _DataType.TEXT), {}, ValueError, r"is not recorded by fl-core"),
        (("acc", 0.5), {"step": 1, "global_step": 2}, ValueError, r"disagree"),
    ],
)
def test_log_refuses_a_step_that_is_not_an_int(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    session = RecordingSession()
    with bound_session(session):
        flare.init()
        with pytest.raises(error, match=message):
            flare.log(*args, **kwargs)  # type: ignore[arg-type]
    assert session.logged == []
