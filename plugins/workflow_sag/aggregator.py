"""Streaming weighted FedAvg: one accumulator per array, results folded as they arrive.

The aggregator never keeps a result. `add` validates every array of a result
against the expected structure first and only then folds it, so a bad result
is rejected whole and a good one is never half-applied. Folding a weighted
array goes through a small reused scratch buffer, so memory stays at one
accumulator per array (plus the global model) however many sites answer.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from fl_core.model import FLModel, Params, ParamsType

BLOCK_BYTES = 256 * 1024
"""Size of the scratch buffer for weighted folds: small enough to stay in cache."""

_KIND_NAMES = {"f": "floating", "c": "complex", "i": "integer", "u": "integer"}


def _kind(dtype: np.dtype[np.generic]) -> str | None:
    """The dtype family results are compared by, or None if it cannot be averaged."""
    return _KIND_NAMES.get(dtype.kind)


def _accumulator_dtype(dtype: np.dtype[np.generic]) -> np.dtype[np.generic]:
    """Float32 and wider accumulate in their own dtype, so memory stays at one model;
    float16 would lose too much, integers must not overflow or truncate."""
    if dtype.kind in "fc":
        return np.result_type(dtype, np.float32)
    return np.dtype(np.float64)


def check_params(params: Mapping[str, object]) -> str | None:
    """Why `params` cannot be averaged (non-array or non-numeric value), or None."""
    for key, value in params.items():
        if not isinstance(value, np.ndarray):
            return f"param {key!r} is a {type(value).__name__}, not a numpy array"
        if _kind(value.dtype) is None:
            return f"param {key!r} has dtype {value.dtype}, which cannot be averaged"
    return None


@dataclass(frozen=True, slots=True)
class _Spec:
    """What one array of every result must look like."""

    shape: tuple[int, ...]
    dtype: np.dtype[np.generic]

    @property
    def kind(self) -> str | None:
        return _kind(self.dtype)


class RejectedResult(Exception):
    """Raised by `WeightedAggregator.add` for a result it refuses; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class WeightedAggregator:
    """Weighted average of the results of one round, folded in place.

    `global_params` is the model the round's task carried (may be empty; then
    the first accepted result defines the structure and DIFF results are
    refused). FULL results contribute `w * x`; DIFF results contribute
    `w * diff`, and `finish` adds `global * sum(w_diff)` once, so the two may
    mix. Division by the total weight happens once at the end, which keeps
    equal-weight averages of integer-valued floats exact.
    """

    def __init__(self, global_params: Params, block_bytes: int = BLOCK_BYTES) -> None:
        self._global = global_params
        self._specs: dict[str, _Spec] | None = (
            {k: _Spec(tuple(v.shape), v.dtype) for k, v in global_params.items()}
            if global_params
            else None
        )
        self._acc: dict[str, np.ndarray] = {}
        # Raw bytes, viewed as whatever dtype a fold needs, so one buffer serves all.
        self._scratch = np.empty(block_bytes, dtype=np.uint8)
        self._weight_full = 0.0
        self._weight_diff = 0.0
        self._metric_sums: dict[str, list[float]] = {}
        self._metric_weights: dict[str, list[float]] = {}
        self._broken = False
        self._seen: set[str] = set()
        self.accepted: list[str] = []
        """Sites whose result was accepted (folded, or counted if metrics-only), in order."""

    @property
    def params_folded(self) -> bool:
        """True once any accepted result carried params."""
        return bool(self._acc)

    def add(self, site: str, model: FLModel) -> float:
        """Fold one site's result; returns its weight or raises `RejectedResult`.

        Nothing of `model` is kept: arrays are read once, metrics are copied
        out as floats.
        """
        if self._broken:
            raise RuntimeError("aggregator is unusable after a failed fold")
        if site in self._seen:
            raise RejectedResult("sent a second result in the same round")
        weight = self._weight_of(model)
        params = model.params
        if params:
            kind = self._params_type_of(model)
            self._validate(params, kind)
            self._fold(params, weight, kind)
        self._add_metrics(model.metrics, weight)
        self._seen.add(site)
        self.accepted.append(site)
        return weight

    def finish(self) -> Params | None:
        """The averaged params, or None if no accepted result carried params.

        Call once; the accumulators become the returned arrays.
        """
        if not self._acc:
            return None
        assert self._specs is not None  # set by the first folded result
        total = self._weight_full + self._weight_diff
        out: Params = {}
        for key, spec in self._specs.items():
            acc = self._acc.pop(key)
            if self._weight_diff:
                _fold_scaled(acc, self._global[key], self._weight_diff, self._scratch)
            np.divide(acc, total, out=acc)
            if spec.kind == "integer":
                np.rint(acc, out=acc)
            out[key] = acc if acc.dtype == spec.dtype else acc.astype(spec.dtype)
        return out

    def metrics(self) -> dict[str, float]:
        """Weighted average of each metric over the accepted results that reported it."""
        return {
            name: math.fsum(sums) / math.fsum(self._metric_weights[name])
            for name, sums in self._metric_sums.items()
        }

    # --- validation -------------------------------------------------------

    @staticmethod
    def _weight_of(model: FLModel) -> float:
        try:
            weight = model.weight()
        except (TypeError, ValueError) as exc:
            raise RejectedResult(f"invalid weight in meta: {exc}") from None
        if not math.isfinite(weight) or weight <= 0:
            raise RejectedResult(f"weight must be finite and > 0, got {weight!r}")
        return weight

    @staticmethod
    def _params_type_of(model: FLModel) -> ParamsType:
        try:
            return ParamsType(model.params_type)
        except ValueError:
            raise RejectedResult(
                f"params_type must be FULL or DIFF, got {model.params_type!r}"
            ) from None

    def _validate(self, params: Mapping[str, object], kind: ParamsType) -> None:
        if kind is ParamsType.DIFF and not self._global:
            raise RejectedResult("DIFF result, but there is no global model to apply it to")
        problem = check_params(params)
        if problem is not None:
            raise RejectedResult(problem)
        specs = self._specs
        if specs is None:
            return  # the first result defines the structure (set when folding)
        missing = sorted(specs.keys() - params.keys())
        extra = sorted(params.keys() - specs.keys())
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing params " + ", ".join(map(repr, missing[:5])))
            if extra:
                parts.append("unexpected params " + ", ".join(map(repr, extra[:5])))
            raise RejectedResult("; ".join(parts))
        for key, spec in specs.items():
            value = params[key]
            assert isinstance(value, np.ndarray)  # check_params proved it
            if value.shape != spec.shape:
                raise RejectedResult(
                    f"param {key!r}: expected shape {spec.shape}, got {value.shape}"
                )
            if _kind(value.dtype) != spec.kind:
                raise RejectedResult(
                    f"param {key!r}: expected a {spec.kind} array, got dtype {value.dtype}"
                )

    # --- folding ----------------------------------------------------------

    def _fold(self, params: Mapping[str, np.ndarray], weight: float, kind: ParamsType) -> None:
        if self._specs is None:
            self._specs = {k: _Spec(tuple(v.shape), v.dtype) for k, v in params.items()}
        try:
            for key, spec in self._specs.items():
                acc = self._acc.get(key)
                if acc is None:
                    dtype = _accumulator_dtype(spec.dtype)
                    if _sole_owner(params, key, dtype):
                        # Nobody else can see this array: it becomes the
                        # accumulator, which saves one model of memory.
                        acc = params[key]
                        if weight != 1.0:
                            np.multiply(acc, weight, out=acc)
                        self._acc[key] = acc
                        continue
                    acc = np.zeros(spec.shape, dtype=dtype)
                    self._acc[key] = acc
                _fold_scaled(acc, params[key], weight, self._scratch)
        except BaseException:
            # Some arrays may already hold this result: the sums are no longer an average.
            self._broken = True
            raise
        if kind is ParamsType.DIFF:
            self._weight_diff += weight
        else:
            self._weight_full += weight

    def _add_metrics(self, metrics: Mapping[str, object], weight: float) -> None:
        for name, value in metrics.items():
            # bool is an int, but averaging True/False is not what a metric means.
            if isinstance(value, bool | np.bool_) or not isinstance(
                value, int | float | np.integer | np.floating
            ):
                continue
            number = float(value)
            if not math.isfinite(number):
                continue
            self._metric_sums.setdefault(name, []).append(weight * number)
            self._metric_weights.setdefault(name, []).append(weight)


_SOLE_REFCOUNT = 3
"""References to an array held only by its params dict, as `_sole_owner` counts them:
the dict's entry, the local name, and `sys.getrefcount`'s own argument."""


def _sole_owner(params: Mapping[str, np.ndarray], key: str, dtype: np.dtype[np.generic]) -> bool:
    """True if `params[key]` may be taken over as an accumulator and written to.

    Only a C-contiguous, writable array of the accumulator's dtype that owns
    its memory (not a view of the global model, of a torch tensor or of any
    other buffer) and that nothing but `params` refers to. A site script that
    kept the array, or the FLModel it sent, holds a reference and so keeps
    its array untouched.
    """
    x = params[key]
    return (
        type(x) is np.ndarray
        and x.flags.owndata
        and x.flags.writeable
        and x.flags.c_contiguous
        and x.dtype == dtype
        and sys.getrefcount(x) <= _SOLE_REFCOUNT
    )


def _fold_scaled(acc: np.ndarray, x: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """`acc += weight * x` without a temporary the size of `x`.

    `acc` is C-contiguous (it is ours); `x` may have any layout and any dtype
    of the same family. The weighted product goes block by block through
    `scratch` (raw bytes), reused for every block and every array.
    """
    if x.size == 0:
        return
    if weight == 1.0:
        # ufuncs stream through small internal buffers, even when casting.
        np.add(acc, x, out=acc)
        return
    block = scratch.nbytes // acc.itemsize
    buf = scratch[: block * acc.itemsize].view(acc.dtype)
    if x.ndim <= 1 or x.flags.c_contiguous:
        flat_x, flat_acc = x.reshape(-1), acc.reshape(-1)  # views, never copies here
        for start in range(0, flat_x.size, block):
            stop = min(start + block, flat_x.size)
            part = buf[: stop - start]
            np.multiply(flat_x[start:stop], weight, out=part)
            np.add(flat_acc[start:stop], part, out=flat_acc[start:stop])
        return
    # A non-contiguous x cannot be flattened without a copy: walk its leading axis.
    row = x[0].size
    if row > block:
        for i in range(x.shape[0]):
            _fold_scaled(acc[i], x[i], weight, scratch)
        return
    rows = max(1, block // max(row, 1))
    for start in range(0, x.shape[0], rows):
        xs, accs = x[start : start + rows], acc[start : start + rows]
        part = buf[: xs.size].reshape(xs.shape)
        np.multiply(xs, weight, out=part)
        np.add(accs, part, out=accs)
