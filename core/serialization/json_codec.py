"""Strict, bounded JSON: `FLModel.meta`, model headers and JSON frame bodies.

Python's `json` module is lenient in ways a wire format must not be: it
writes and reads `NaN`/`Infinity` (not JSON), lets a later duplicate key
silently win, turns tuples into lists (so a round trip changes the value),
and nests as deep as the stack allows. Everything here is strict instead, so
what a peer decodes equals what was encoded, and a hostile document costs at
most its size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from fl_core.serialization import WireFormatError

__all__ = ["JsonLimits", "check_jsonable", "decode_json", "encode_json", "loads_strict"]


@dataclass(frozen=True, slots=True)
class JsonLimits:
    """Bounds on a JSON value's shape.

    `max_depth` counts nested containers (a flat dict has depth 1);
    `max_items` counts every value, containers and scalars alike.
    """

    max_depth: int = 32
    max_items: int = 100_000


def _describe(value: object) -> str:
    kind = type(value)
    name = (
        kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    )
    return name


def check_jsonable(
    value: object, *, where: str = "value", limits: JsonLimits | None = None
) -> None:
    """Raise `WireFormatError` unless `value` survives a JSON round trip unchanged.

    Allowed: str, int, finite float, bool, None, list, and dict with str keys
    (str and int subclasses such as `StrEnum` members count as their base).
    The message names the offending path, e.g. `meta['hist'][2]`.
    """
    limits = limits or JsonLimits()
    # An explicit stack instead of recursion: a hostile document must not be
    # able to exhaust the interpreter's stack.
    stack: list[tuple[object, str, int]] = [(value, where, 1)]
    items = 0
    while stack:
        item, path, depth = stack.pop()
        items += 1
        if items > limits.max_items:
            raise WireFormatError(f"{where} has more than {limits.max_items} values")
        if item is None or isinstance(item, bool | str | int):
            continue
        if isinstance(item, float):
            if not math.isfinite(item):
                raise WireFormatError(f"{path} is {item!r}; only finite numbers are allowed")
            continue
        if isinstance(item, list | dict):
            if depth > limits.max_depth:
                raise WireFormatError(
                    f"{path} is nested more than {limits.max_depth} containers deep"
                )
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for key, v in item.items():
                if not isinstance(key, str):
                    raise WireFormatError(
                        f"{path} has a key {key!r} of type {_describe(key)}; keys must be str"
                    )
                stack.append((v, f"{path}[{key!r}]", depth + 1))
            continue
        hint = ""
        if isinstance(item, tuple):
            hint = "; use a list"
        elif type(item).__module__ == "numpy":
            hint = "; convert it with .item() or .tolist()"
        raise WireFormatError(
            f"{path} is a {_describe(item)}, which is not JSON; allowed are str, int, float, "
            f"bool, None, list and dict{hint}"
        )


def encode_json(value: object, *, where: str = "value", limits: JsonLimits | None = None) -> bytes:
    """Check `value` with `check_jsonable` and return it as compact UTF-8 JSON."""
    check_jsonable(value, where=where, limits=limits)
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
        return text.encode("utf-8")
    except (ValueError, UnicodeEncodeError) as exc:
        # Lone surrogates in a str, or an int too long for Python to print.
        raise WireFormatError(f"{where} cannot be encoded as JSON: {exc}") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


def loads_strict(data: bytes | bytearray | memoryview, *, where: str = "JSON") -> object:
    """Parse UTF-8 JSON, rejecting NaN/Infinity and duplicate keys.

    Does not bound the shape: callers bound `len(data)` first, then check
    the parts they hand on with `check_jsonable`.
    """
    try:
        text = bytes(data).decode("utf-8")
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except UnicodeDecodeError as exc:
        raise WireFormatError(f"undecodable {where}: not UTF-8 ({exc.reason})") from exc
    except RecursionError as exc:
        raise WireFormatError(f"undecodable {where}: nested too deeply") from exc
    except ValueError as exc:
        # JSONDecodeError, our own rejections, and over-long integers.
        raise WireFormatError(f"undecodable {where}: {exc}") from exc


def decode_json(
    data: bytes | bytearray | memoryview,
    *,
    max_size: int,
    where: str = "JSON body",
    limits: JsonLimits | None = None,
) -> object:
    """Parse a JSON document of at most `max_size` bytes and check its shape."""
    size = memoryview(data).nbytes
    if size > max_size:
        raise WireFormatError(f"{where} is {size} bytes, over the limit of {max_size}")
    value = loads_strict(data, where=where)
    check_jsonable(value, where=where, limits=limits)
    return value
