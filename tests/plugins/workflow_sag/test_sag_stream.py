"""WeightedAggregator.add_stream over real IncomingPayloads fed by hand, chunk by chunk."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from fl_core.cell.incoming import IncomingPayload
from fl_core.cell.payload import PayloadKind, PayloadLimits, encode_payload
from fl_core.errors import CellError
from fl_core.model import FLModel, Params, ParamsType
from fl_core.roles.server_job.streamed_result import StreamedResult
from fl_core.spec.workflow import ResultBrokenError, ResultHeader, WholeResult
from fl_core.testing.stream_contract import wait_until
from fl_plugins.workflow_sag.aggregator import RejectedResult, WeightedAggregator

MiB = 1024 * 1024
CHUNK = 256 * 1024


def encoded(model: FLModel) -> bytes:
    return bytes(encode_payload(model, where="a test").joined())


def incoming(
    data: bytes, *, upto: int | None = None, idle: float = 5.0, lost: bool = True
) -> IncomingPayload:
    """A payload as a cell hands it to a streaming handler, fed `data[:upto]` in chunks.

    With `upto` short of the end the stream then breaks, as when the peer is
    lost, once the consumer has taken every chunk that came (a cell drops
    what is still queued when a stream fails). With `lost` False the rest is
    merely late.
    """
    payload = IncomingPayload(
        PayloadKind.MODEL, len(data), PayloadLimits(), source="site-x", idle_timeout=idle
    )
    end = len(data) if upto is None else upto
    for start in range(0, end, CHUNK):
        payload.put(data[start : min(start + CHUNK, end)])
    if upto is not None and lost:

        def lose_the_link() -> None:
            wait_until(lambda: payload.buffered == 0, 30, "the consumer to take every chunk")
            payload.fail(CellError("the link to site-x was lost"))

        threading.Thread(target=lose_the_link, daemon=True).start()
    return payload


def streamed(site: str, payload: IncomingPayload) -> StreamedResult:
    return StreamedResult(site, payload, payload.layout(), time.monotonic() + 30)


class Recording:
    """An IncomingResult that passes another through and remembers what it yielded."""

    def __init__(self, inner: StreamedResult) -> None:
        self.inner = inner
        self.yielded: dict[str, np.ndarray] = {}

    @property
    def site(self) -> str:
        return self.inner.site

    @property
    def header(self) -> ResultHeader:
        return self.inner.header

    @property
    def owns_arrays(self) -> bool:
        return self.inner.owns_arrays

    def arrays(self) -> Iterator[tuple[str, np.ndarray]]:
        for name, array in self.inner.arrays():
            self.yielded[name] = array
            yield name, array


class Lent(Recording):
    """The same stream, but the arrays are declared only lent."""

    @property
    def owns_arrays(self) -> bool:
        return False


def model(a: float, b: float, c: float, samples: int, n: int = 300_000) -> FLModel:
    """Three float64 arrays (2.4 MB each, so every one spans several chunks)."""
    return FLModel(
        params={k: np.full(n, float(v)) for k, v in zip("abc", (a, b, c), strict=True)},
        meta={"num_samples": samples},
        metrics={"loss": float(samples)},
    )


def zeros(n: int = 300_000) -> Params:
    return {k: np.zeros(n) for k in "abc"}


def offset_of(data: bytes, payload: IncomingPayload, name: str) -> int:
    """Where array `name` ends in the encoded payload (header included)."""
    layout = payload.layout()
    head = len(data) - layout.body_size
    return head + next(a.end for a in layout.arrays if a.name == name)


def test_a_result_that_breaks_off_counts_only_for_the_arrays_it_delivered_whole() -> None:
    agg = WeightedAggregator(zeros())
    agg.add_stream("s1", streamed("s1", incoming(encoded(model(1, 1, 1, samples=1)))))
    broken_data = encoded(model(100, 100, 100, samples=2))
    probe = incoming(broken_data)
    # Everything of a and b, and half of c: then the link is lost.
    cut = offset_of(broken_data, probe, "b") + 1_000_000
    with pytest.raises(ResultBrokenError) as info:
        agg.add_stream("s2", streamed("s2", incoming(broken_data, upto=cut)))
    assert info.value.reason == (
        "its result broke off after 2 of 3 arrays ('c' incomplete): the link to site-x was lost"
    )
    agg.add_stream("s3", streamed("s3", incoming(encoded(model(7, 7, 7, samples=3)))))
    assert agg.accepted == ["s1", "s3"]
    out = agg.finish()
    assert out is not None
    # a and b: (1*1 + 2*100 + 3*7) / 6 = 37; c never arrived from s2: (1*1 + 3*7) / 4 = 5.5
    np.testing.assert_array_equal(out["a"], np.full(300_000, 37.0))
    np.testing.assert_array_equal(out["b"], np.full(300_000, 37.0))
    np.testing.assert_array_equal(out["c"], np.full(300_000, 5.5))
    assert agg.metrics() == {"loss": (1 * 1 + 3 * 3) / 4}  # the broken site reports nothing


def test_per_array_weights_keep_full_and_diff_apart() -> None:
    global_params = {k: np.full(300_000, 10.0) for k in "abc"}
    agg = WeightedAggregator(global_params)
    agg.add_stream("full", streamed("full", incoming(encoded(model(4, 4, 4, samples=1)))))
    diff = model(2, 2, 2, samples=3)
    diff.params_type = ParamsType.DIFF
    data = encoded(diff)
    cut = offset_of(data, incoming(data), "a") + 10
    with pytest.raises(ResultBrokenError):
        agg.add_stream("diff", streamed("diff", incoming(data, upto=cut)))
    out = agg.finish()
    assert out is not None
    # a: (1*4 + 3*(10 + 2)) / 4 = 10; b and c had only the FULL result: 4
    np.testing.assert_array_equal(out["a"], np.full(300_000, 10.0))
    np.testing.assert_array_equal(out["b"], np.full(300_000, 4.0))
    np.testing.assert_array_equal(out["c"], np.full(300_000, 4.0))


def test_fragments_alone_never_make_a_model() -> None:
    agg = WeightedAggregator(zeros())
    data = encoded(model(5, 5, 5, samples=1))
    cut = offset_of(data, incoming(data), "b")
    with pytest.raises(ResultBrokenError, match="after 2 of 3 arrays"):
        agg.add_stream("s1", streamed("s1", incoming(data, upto=cut)))
    assert agg.accepted == []
    assert agg.finish() is None  # the workflow keeps the old global model


def test_a_wrong_layout_is_rejected_from_the_header_before_any_array_is_read() -> None:
    agg = WeightedAggregator(zeros(4))
    agg.add("good", FLModel(params={k: np.full(4, 2.0) for k in "abc"}))
    bad = FLModel(params={"a": np.full(4, 100.0), "b": np.full(4, 100.0), "c": np.zeros(5)})
    data = encoded(bad)
    # Only the header has come (64-byte aligned, well under 1 KiB); reading an
    # array would wait for the rest and fail on the idle timeout instead.
    payload = incoming(data, idle=0.2)
    head = len(data) - payload.layout().body_size
    header_only = incoming(data, upto=head, idle=0.2, lost=False)
    with pytest.raises(RejectedResult, match=r"param 'c': expected shape \(4,\), got \(5,\)"):
        agg.add_stream("bad", streamed("bad", header_only))
    agg.add("good2", FLModel(params={k: np.full(4, 4.0) for k in "abc"}))
    out = agg.finish()
    assert out is not None
    for key in "abc":  # "a" of the bad result, first in its order, was never folded
        np.testing.assert_array_equal(out[key], np.full(4, 3.0))


def test_the_first_results_received_arrays_become_the_accumulators() -> None:
    big = FLModel(
        params={"w": np.full(2 * MiB, 3.0, dtype=np.float32), "b": np.full(8, 3.0)},
        meta={"num_samples": 2},
    )
    other = FLModel(
        params={"w": np.full(2 * MiB, 6.0, dtype=np.float32), "b": np.full(8, 6.0)},
        meta={"num_samples": 1},
    )
    agg = WeightedAggregator({"w": np.zeros(2 * MiB, dtype=np.float32), "b": np.zeros(8)})
    first = Recording(streamed("s1", incoming(encoded(big))))
    agg.add_stream("s1", first)
    agg.add_stream("s2", streamed("s2", incoming(encoded(other))))
    out = agg.finish()
    assert out is not None
    for key in ("w", "b"):  # the big one is a view of receive memory, the small one not
        assert out[key] is first.yielded[key]
        assert np.shares_memory(out[key], first.yielded[key])
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], np.full(2 * MiB, 4.0, dtype=np.float32))
    np.testing.assert_array_equal(out["b"], np.full(8, 4.0))


def test_lent_arrays_are_never_written_or_kept() -> None:
    agg = WeightedAggregator(zeros(4))
    first = Lent(streamed("s1", incoming(encoded(model(3, 3, 3, samples=2, n=4)))))
    agg.add_stream("s1", first)
    agg.add_stream("s2", streamed("s2", incoming(encoded(model(6, 6, 6, samples=1, n=4)))))
    out = agg.finish()
    assert out is not None
    for key in "abc":
        assert not np.shares_memory(out[key], first.yielded[key])
        np.testing.assert_array_equal(first.yielded[key], np.full(4, 3.0))
        np.testing.assert_array_equal(out[key], np.full(4, 4.0))


def test_a_whole_result_lends_arrays_it_cannot_hand_over_read_only() -> None:
    held = np.full(4, 1.0)
    result = WholeResult("s", FLModel(params={"held": held, "free": np.full(4, 2.0)}))
    got = dict(result.arrays())
    assert got["held"] is not held and not got["held"].flags.writeable
    assert np.shares_memory(got["held"], held)
    assert got["free"].flags.writeable  # only the model referred to it: handed over
    with pytest.raises(CellError, match="already consumed"):
        next(result.arrays())
