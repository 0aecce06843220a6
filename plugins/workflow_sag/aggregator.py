"""Streaming weighted FedAvg: one accumulator per array, results folded as they arrive.

The aggregator never keeps a result. `add_stream` takes a result that is
still arriving (`fl_core.spec.workflow.IncomingResult`): it checks the
weight, the params type and the whole layout (names, shapes, dtype families)
from the header before any array is folded, so a wrong-shaped result is
rejected whole; then it folds each array the moment it arrives and lets it
go. The first result's arrays become the accumulators when they are handed
over (`owns_arrays`, writeable, C-contiguous, of the accumulator's dtype),
which saves one model of memory; otherwise an accumulator starts at zeros.
Weighted folds go through a small reused scratch buffer, so memory stays at
one accumulator per array (plus the global model) however many sites answer.

A result that breaks off part-way cannot be taken back: the arrays already
folded were released. So every array keeps its own total weight (FULL and
DIFF apart, since `finish` adds `global * weight_diff` per array) and is
divided by it alone: a result that broke after k arrays contributed to
exactly those k, and each array of the new global model is the weighted
average of the results that delivered that array whole. Such a site is not
accepted. If no complete result carried params, `finish` returns None (the
global model stays) instead of building a model from fragments; an array no
result delivered keeps its global value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fl_core.model import FLModel, Params, ParamsType
from fl_core.spec.workflow import ArrayLayout, IncomingResult, ResultHeader, WholeResult

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


class _Spec:
    """What one array of every result must look like."""

    __slots__ = ("dtype", "kind", "shape")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype[np.generic]) -> None:
        self.shape = shape
        self.dtype = dtype
        self.kind = _kind(dtype)


class RejectedResult(Exception):
    """Raised by `WeightedAggregator.add` for a result it refuses; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class WeightedAggregator:
    """Weighted average of the results of one round, folded in place.

    `global_params` is the model the round's task carried (may be empty; then
    the first result defines the structure and DIFF results are refused).
    FULL results contribute `w * x`; DIFF results contribute `w * diff`, and
    `finish` adds `global * sum(w_diff)` once per array, so the two may mix.
    Division by each array's total weight happens once at the end, which
    keeps equal-weight averages of integer-valued floats exact.
    """

    def __init__(self, global_params: Params, block_bytes: int = BLOCK_BYTES) -> None:
        self._global = global_params
        self._specs: dict[str, _Spec] | None = (
            {k: _Spec(tuple(v.shape), v.dtype) for k, v in global_params.items()}
            if global_params
            else None
        )
        self._acc: dict[str, np.ndarray] = {}
        self._weight_full: dict[str, float] = {}
        self._weight_diff: dict[str, float] = {}
        self._complete = 0  # accepted results that carried params
        # Raw bytes, viewed as whatever dtype a fold needs, so one buffer serves all.
        self._scratch = np.empty(block_bytes, dtype=np.uint8)
        self._metric_sums: dict[str, list[float]] = {}
        self._metric_weights: dict[str, list[float]] = {}
        self._broken = False
        self._seen: set[str] = set()
        self.accepted: list[str] = []
        """Sites whose result was accepted (folded whole, or counted if metrics-only), in order."""

    @property
    def params_folded(self) -> bool:
        """True once any accepted result carried params."""
        return self._complete > 0

    def add(self, site: str, model: FLModel) -> float:
        """Fold one site's whole result; returns its weight or raises `RejectedResult`.

        Nothing of `model` is kept: arrays are read once (an array nothing
        else refers to may become an accumulator, see `WholeResult`), metrics
        are copied out as floats.
        """
        if self._broken:
            raise RuntimeError("aggregator is unusable after a failed fold")
        if site in self._seen:
            raise RejectedResult("sent a second result in the same round")
        problem = check_params(model.params)
        if problem is not None:
            raise RejectedResult(problem)
        return self.add_stream(site, WholeResult(site, model))

    def add_stream(self, site: str, result: IncomingResult) -> float:
        """Fold a result array by array as it arrives; returns its weight.

        Raises `RejectedResult` for a result refused from its header (nothing
        of it folded), or whose arrays disagree with its header (folded up to
        there). An error from `result.arrays()` (`ResultBrokenError` when the
        stream broke) propagates; the arrays folded before it stay folded
        with their own weights (see the module docstring), and the site is
        not accepted. Either way the site may not send again this round.
        """
        if self._broken:
            raise RuntimeError("aggregator is unusable after a failed fold")
        if site in self._seen:
            raise RejectedResult("sent a second result in the same round")
        header = result.header
        weight = self._weight_of(header)
        if header.arrays:
            kind = self._params_type_of(header.params_type)
            self._validate(header.arrays, kind)
            self._seen.add(site)
            self._fold(result, weight, kind)
            self._complete += 1
        self._seen.add(site)
        self._add_metrics(header.metrics, weight)
        self.accepted.append(site)
        return weight

    def finish(self) -> Params | None:
        """The averaged params, or None if no accepted result carried params.

        Call once; the accumulators become the returned arrays.
        """
        if not self._complete:
            return None  # fragments of broken results alone never make a model
        assert self._specs is not None  # set by the first folded result
        out: Params = {}
        for key, spec in self._specs.items():
            acc = self._acc.pop(key, None)
            weight_diff = self._weight_diff.get(key, 0.0)
            total = self._weight_full.get(key, 0.0) + weight_diff
            if acc is None or total <= 0:
                # Unreachable once a complete result folded every array; kept
                # so that no array is ever divided by zero.
                if key not in self._global:
                    raise RuntimeError(f"no result delivered param {key!r}")
                out[key] = self._global[key]
                continue
            if weight_diff:
                _fold_scaled(acc, self._global[key], weight_diff, self._scratch)
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
    def _weight_of(header: ResultHeader) -> float:
        try:
            weight = header.weight()
        except (TypeError, ValueError) as exc:
            raise RejectedResult(f"invalid weight in meta: {exc}") from None
        if not math.isfinite(weight) or weight <= 0:
            raise RejectedResult(f"weight must be finite and > 0, got {weight!r}")
        return weight

    @staticmethod
    def _params_type_of(params_type: str) -> ParamsType:
        try:
            return ParamsType(params_type)
        except ValueError:
            raise RejectedResult(f"params_type must be FULL or DIFF, got {params_type!r}") from None

    def _validate(self, layouts: Sequence[ArrayLayout], kind: ParamsType) -> None:
        if kind is ParamsType.DIFF and not self._global:
            raise RejectedResult("DIFF result, but there is no global model to apply it to")
        for layout in layouts:
            if _kind(layout.dtype) is None:
                raise RejectedResult(
                    f"param {layout.name!r} has dtype {layout.dtype}, which cannot be averaged"
                )
        names = [layout.name for layout in layouts]
        if len(set(names)) != len(names):
            raise RejectedResult("the result names a param twice")
        specs = self._specs
        if specs is None:
            return  # the first result defines the structure (set when folding)
        missing = sorted(specs.keys() - set(names))
        extra = sorted(set(names) - specs.keys())
        if missing or extra:
            parts = []
            if missing:
                parts.append("missing params " + ", ".join(map(repr, missing[:5])))
            if extra:
                parts.append("unexpected params " + ", ".join(map(repr, extra[:5])))
            raise RejectedResult("; ".join(parts))
        for layout in layouts:
            problem = _mismatch(specs[layout.name], layout.name, layout.shape, layout.dtype)
            if problem is not None:
                raise RejectedResult(problem)

    # --- folding ----------------------------------------------------------

    def _fold(self, result: IncomingResult, weight: float, kind: ParamsType) -> None:
        layouts = result.header.arrays
        if self._specs is None:
            self._specs = {a.name: _Spec(a.shape, a.dtype) for a in layouts}
        specs = self._specs
        weights = self._weight_diff if kind is ParamsType.DIFF else self._weight_full
        owns = result.owns_arrays
        delivered = 0
        # An error raised by the iterator leaves every fold so far whole and
        # counted: it propagates as it is.
        for name, x in result.arrays():
            expected = layouts[delivered].name if delivered < len(layouts) else None
            if name != expected:
                problem: str | None = f"array {name!r} came where the header announced {expected!r}"
            elif not isinstance(x, np.ndarray):
                problem = f"param {name!r} is a {type(x).__name__}, not a numpy array"
            else:
                problem = _mismatch(specs[name], name, x.shape, x.dtype)
            if problem is not None:
                raise RejectedResult(f"its arrays disagree with its header: {problem}")
            try:
                self._fold_one(name, specs[name], x, weight, owns)
            except BaseException:
                # Part of this array may already hold the result: no longer an average.
                self._broken = True
                raise
            weights[name] = weights.get(name, 0.0) + weight
            delivered += 1
            del x  # released before the next array arrives, unless it is an accumulator
        if delivered != len(layouts):
            raise RejectedResult(
                f"its arrays ended after {delivered} of the {len(layouts)} its header announced"
            )

    def _fold_one(self, name: str, spec: _Spec, x: np.ndarray, weight: float, owns: bool) -> None:
        acc = self._acc.get(name)
        if acc is None:
            dtype = _accumulator_dtype(spec.dtype)
            if (
                owns
                and type(x) is np.ndarray
                and x.flags.writeable
                and x.flags.c_contiguous
                and x.dtype == dtype
            ):
                # Handed over and nobody else can see it: it becomes the
                # accumulator, which saves one model of memory.
                if weight != 1.0:
                    np.multiply(x, weight, out=x)
                self._acc[name] = x
                return
            acc = np.zeros(spec.shape, dtype=dtype)
            self._acc[name] = acc
        _fold_scaled(acc, x, weight, self._scratch)

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


def _mismatch(
    spec: _Spec, name: str, shape: tuple[int, ...], dtype: np.dtype[np.generic]
) -> str | None:
    """Why an array of this shape and dtype cannot be folded into `spec`, or None."""
    if tuple(shape) != spec.shape:
        return f"param {name!r}: expected shape {spec.shape}, got {tuple(shape)}"
    if _kind(dtype) != spec.kind:
        return f"param {name!r}: expected a {spec.kind} array, got dtype {dtype}"
    return None


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
