"""WeightedAggregator: exact weighted averages, validation, and memory behaviour."""

from __future__ import annotations

import tracemalloc
import weakref
from typing import Any

import numpy as np
import pytest

from fl_core.model import FLModel, Params, ParamsType
from fl_plugins.workflow_sag.aggregator import RejectedResult, WeightedAggregator

MB = 1024 * 1024


def result(
    params: Params,
    samples: float | None = None,
    kind: ParamsType = ParamsType.FULL,
    **metrics: float,
) -> FLModel:
    meta = {} if samples is None else {"num_samples": samples}
    return FLModel(params=params, params_type=kind, metrics=dict(metrics), meta=meta)


def test_weights_one_and_three_average_exactly() -> None:
    agg = WeightedAggregator({"w": np.zeros(3)})
    agg.add("a", result({"w": np.array([0.0, 4.0, 8.0])}, samples=1))
    agg.add("b", result({"w": np.array([4.0, 8.0, 0.0])}, samples=3))
    out = agg.finish()
    assert out is not None
    np.testing.assert_array_equal(out["w"], [3.0, 7.0, 2.0])


def test_equal_weights_sum_first_and_divide_once() -> None:
    rng = np.random.default_rng(7)
    inputs = [rng.integers(-1000, 1000, size=4000).astype(np.float64) for _ in range(7)]
    for samples in (None, 5):  # weight 1 (plain add) and weight 5 (blocked, scaled)
        agg = WeightedAggregator({"w": np.zeros(4000)})
        for i, x in enumerate(inputs):
            agg.add(f"s{i}", result({"w": x}, samples=samples))
        out = agg.finish()
        assert out is not None
        # Integer sums are exact in float64, so this is the correctly rounded mean;
        # scaling each input by 1/7 first would miss it in many places.
        np.testing.assert_array_equal(out["w"], np.sum(inputs, axis=0) / 7)


def test_full_and_diff_results_mix_as_global_plus_diff() -> None:
    global_w = np.array([10.0, 20.0])
    agg = WeightedAggregator({"w": global_w})
    agg.add("a", result({"w": np.array([14.0, 16.0])}, samples=1))
    agg.add("b", result({"w": np.array([2.0, -4.0])}, samples=3, kind=ParamsType.DIFF))
    out = agg.finish()
    assert out is not None
    # (1 * [14, 16] + 3 * ([10, 20] + [2, -4])) / 4
    np.testing.assert_array_equal(out["w"], [12.5, 16.0])
    np.testing.assert_array_equal(global_w, [10.0, 20.0])  # the global is only read


def test_float32_stays_float32_even_with_float64_results() -> None:
    agg = WeightedAggregator({"w": np.zeros(4, dtype=np.float32)})
    agg.add("a", result({"w": np.full(4, 1.0, dtype=np.float32)}, samples=2))
    agg.add("b", result({"w": np.full(4, 4.0, dtype=np.float64)}, samples=1))
    out = agg.finish()
    assert out is not None
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], np.full(4, 2.0, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8])
def test_integer_arrays_are_averaged_in_float64_and_rounded_back(dtype: type) -> None:
    agg = WeightedAggregator({"n": np.zeros(3, dtype=dtype)})
    agg.add("a", result({"n": np.array([0, 10, 200], dtype=dtype)}, samples=1))
    agg.add("b", result({"n": np.array([3, 0, 201], dtype=dtype)}, samples=2))
    out = agg.finish()
    assert out is not None
    assert out["n"].dtype == dtype
    # [6/3, 10/3, 602/3] = [2, 3.33, 200.67]
    np.testing.assert_array_equal(out["n"], np.array([2, 3, 201], dtype=dtype))


def test_non_contiguous_inputs_fold_correctly_through_small_blocks() -> None:
    rng = np.random.default_rng(1)
    shape = (6, 5, 4)
    global_w = rng.standard_normal(shape)
    # 64-byte blocks force every path: flat blocks, row groups, and per-row recursion.
    agg = WeightedAggregator({"w": global_w}, block_bytes=64)
    xs = [
        rng.standard_normal((4, 5, 6)).transpose(2, 1, 0),  # non-contiguous, small rows
        np.asfortranarray(rng.standard_normal(shape)),
        rng.standard_normal((6, 5, 8))[:, :, ::2],  # strided view
        rng.standard_normal(shape),  # contiguous
    ]
    weights = [3.0, 0.5, 7.0, 2.0]
    for i, (x, w) in enumerate(zip(xs, weights, strict=True)):
        kind = ParamsType.DIFF if i == 2 else ParamsType.FULL
        agg.add(f"s{i}", result({"w": x}, samples=w, kind=kind))
    out = agg.finish()
    assert out is not None
    pairs = enumerate(zip(xs, weights, strict=True))
    terms = [w * (global_w + x if i == 2 else x) for i, (x, w) in pairs]
    np.testing.assert_allclose(out["w"], sum(terms) / sum(weights), rtol=1e-12)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"a": np.zeros(2), "b": np.zeros(3)}, "param 'b': expected shape (2,), got (3,)"),
        ({"a": np.zeros(2)}, "missing params 'b'"),
        ({"a": np.zeros(2), "b": np.zeros(2), "c": np.zeros(1)}, "unexpected params 'c'"),
        ({"a": np.zeros(2), "b": np.zeros(2, dtype=np.int64)}, "expected a floating array"),
        ({"a": np.zeros(2), "b": [0.0, 0.0]}, "param 'b' is a list"),
        ({"a": np.zeros(2), "b": np.array(["x", "y"])}, "cannot be averaged"),
    ],
)
def test_a_mismatched_result_is_rejected_whole_and_others_still_fold(
    params: Params, fragment: str
) -> None:
    agg = WeightedAggregator({"a": np.zeros(2), "b": np.zeros(2)})
    agg.add("good", result({"a": np.array([2.0, 2.0]), "b": np.array([1.0, 1.0])}))
    # "a" is valid and comes first: a half-fold would leave 100 in its accumulator.
    bad = {k: (np.full(2, 100.0) if k == "a" else v) for k, v in params.items()}
    with pytest.raises(RejectedResult) as info:
        agg.add("bad", result(bad, samples=5))
    assert fragment in info.value.reason
    agg.add("good2", result({"a": np.array([4.0, 4.0]), "b": np.array([3.0, 3.0])}))
    assert agg.accepted == ["good", "good2"]
    out = agg.finish()
    assert out is not None
    np.testing.assert_array_equal(out["a"], [3.0, 3.0])
    np.testing.assert_array_equal(out["b"], [2.0, 2.0])


@pytest.mark.parametrize("samples", [0, -2, float("nan"), float("inf"), "many"])
def test_an_invalid_weight_rejects_the_result(samples: object) -> None:
    agg = WeightedAggregator({"w": np.zeros(1)})
    model = FLModel(params={"w": np.ones(1)}, meta={"num_samples": samples})
    with pytest.raises(RejectedResult, match="weight"):
        agg.add("a", model)
    assert agg.accepted == []
    assert agg.finish() is None


def test_num_steps_weighs_when_num_samples_is_absent() -> None:
    agg = WeightedAggregator({"w": np.zeros(1)})
    agg.add("a", FLModel(params={"w": np.array([0.0])}, meta={"num_steps": 3}))
    agg.add("b", FLModel(params={"w": np.array([4.0])}))
    out = agg.finish()
    assert out is not None
    np.testing.assert_array_equal(out["w"], [1.0])


def test_a_second_result_from_the_same_site_is_rejected() -> None:
    agg = WeightedAggregator({"w": np.zeros(1)})
    agg.add("a", result({"w": np.array([2.0])}))
    with pytest.raises(RejectedResult, match="second result"):
        agg.add("a", result({"w": np.array([100.0])}))
    out = agg.finish()
    assert out is not None
    np.testing.assert_array_equal(out["w"], [2.0])


def test_empty_global_first_result_defines_structure_and_diff_is_refused() -> None:
    agg = WeightedAggregator({})
    with pytest.raises(RejectedResult, match="no global model"):
        agg.add("d", result({"w": np.ones(2)}, kind=ParamsType.DIFF))
    agg.add("a", result({"w": np.array([1.0, 3.0], dtype=np.float32)}))
    with pytest.raises(RejectedResult, match=r"expected shape \(2,\), got \(3,\)"):
        agg.add("b", result({"w": np.ones(3, dtype=np.float32)}))
    agg.add("c", result({"w": np.array([3.0, 5.0], dtype=np.float32)}))
    out = agg.finish()
    assert out is not None
    assert out["w"].dtype == np.float32
    np.testing.assert_array_equal(out["w"], [2.0, 4.0])


def test_metrics_only_results_leave_no_params() -> None:
    agg = WeightedAggregator({"w": np.zeros(1)})
    agg.add("a", result({}, loss=1.0))
    assert agg.accepted == ["a"]
    assert agg.finish() is None
    assert agg.metrics() == {"loss": 1.0}


def test_metrics_are_weighted_and_skip_non_numbers() -> None:
    agg = WeightedAggregator({})
    a = FLModel(metrics={"loss": 1.0, "acc": 0.5}, meta={"num_samples": 1})
    a.metrics.update({"name": "x", "flag": True, "bad": float("nan")})  # type: ignore[dict-item]
    agg.add("a", a)
    agg.add("b", FLModel(metrics={"loss": 5.0, "only_b": 2}, meta={"num_samples": 3}))
    assert agg.metrics() == {"loss": 4.0, "acc": 0.5, "only_b": 2.0}


def test_the_aggregator_keeps_no_reference_to_a_result() -> None:
    agg = WeightedAggregator({"a": np.zeros(8), "b": np.zeros(8)})
    keep = np.zeros(8)  # a first result the caller still holds: never taken over
    agg.add("s0", result({"a": keep, "b": keep.copy()}))
    for samples in (None, 3):  # both the plain add and the blocked path
        model = result({"a": np.ones(8), "b": np.ones(8)}, samples=samples, loss=1.0)
        refs: list[weakref.ref[Any]] = [weakref.ref(model)]
        refs += [weakref.ref(x) for x in model.params.values()]
        agg.add(f"s{samples}", model)
        del model
        assert [r() for r in refs] == [None, None, None]
    np.testing.assert_array_equal(keep, np.zeros(8))


@pytest.mark.parametrize("samples", [None, 4])
def test_a_first_result_nobody_else_holds_becomes_the_accumulator(samples: int | None) -> None:
    agg = WeightedAggregator({"w": np.zeros(4, dtype=np.float32)})
    model = result({"w": np.full(4, 2.0, dtype=np.float32)}, samples=samples)
    ref = weakref.ref(model.params["w"])
    agg.add("a", model)
    del model
    assert ref() is not None  # kept as the accumulator instead of allocating one
    agg.add("b", result({"w": np.full(4, 6.0, dtype=np.float32)}, samples=samples))
    out = agg.finish()
    assert out is not None
    assert out["w"] is ref()
    np.testing.assert_array_equal(out["w"], np.full(4, 4.0, dtype=np.float32))


def test_a_first_result_still_held_elsewhere_is_left_untouched() -> None:
    agg = WeightedAggregator({"w": np.zeros(4)})
    held = np.full(4, 2.0)
    viewed = np.full(4, 2.0)
    agg.add("a", result({"w": held}, samples=3))
    agg.add("b", result({"w": viewed[:]}, samples=1))  # a view: does not own its memory
    out = agg.finish()
    assert out is not None
    assert out["w"] is not held
    np.testing.assert_array_equal(held, np.full(4, 2.0))
    np.testing.assert_array_equal(viewed, np.full(4, 2.0))
    np.testing.assert_array_equal(out["w"], np.full(4, 2.0))


def test_folding_allocates_no_model_sized_temporary() -> None:
    n = 10 * MB  # 40 MB of float32
    agg = WeightedAggregator({"w": np.zeros(n, dtype=np.float32)})
    first = np.ones(n, dtype=np.float32)
    x = np.full(n, 2.0, dtype=np.float32)
    x64 = x.astype(np.float64)

    tracemalloc.start()
    try:
        agg.add("a", result({"w": first}, samples=1))
        base, peak_first = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()  # the peak restarts from what is held now (the accumulator)
        agg.add("b", result({"w": x}, samples=3))
        agg.add("c", result({"w": x64}, samples=1))  # casting, plain add
        out = agg.finish()
        _, peak = tracemalloc.get_traced_memory()
        peak_fold = peak - base
        # Control: the naive fold is visible to tracemalloc, so the bound above means something.
        naive = np.zeros(n, dtype=np.float32)
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        naive += 3 * x
        _, peak = tracemalloc.get_traced_memory()
        peak_naive = peak - base
    finally:
        tracemalloc.stop()
    assert out is not None
    assert float(out["w"][0]) == pytest.approx((1 + 6 + 2) / 5)
    assert peak_naive > 35 * MB
    assert 35 * MB < peak_first < 45 * MB  # one float32 accumulator, not float64
    assert peak_fold < 4 * MB
