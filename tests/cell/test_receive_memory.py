"""Receive memory: reused once nobody uses it, never while anyone still does."""

from __future__ import annotations

import gc
import threading

import numpy as np
import pytest

from fl_core.cell.payload import PayloadAssembler, PayloadKind, PayloadLimits, encode_payload
from fl_core.cell.receive_memory import (
    POOL_ENV,
    POPULATE_MIN,
    ReceiveMemory,
    ReceivePool,
    receive_pool,
)
from fl_core.errors import CellError
from fl_core.model import FLModel

BIG = (POPULATE_MIN // 4) * 2  # float32 elements: two mappings' worth of the threshold


def _address(array: np.ndarray) -> int:
    return int(array.ctypes.data)


def test_dropped_array_memory_is_reused_for_the_next_array_of_its_size() -> None:
    pool = ReceivePool(64 * 1024 * 1024)
    memory = ReceiveMemory(pool)
    first = memory.allocate("w", (BIG,), np.dtype(np.float32))
    address = _address(first)
    del first
    gc.collect()
    assert pool.free_bytes >= BIG * 4
    second = ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))
    assert _address(second) == address
    assert (pool.created, pool.reused) == (1, 1)


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a[10:],  # a numpy view
        lambda a: a.reshape(2, -1),
        lambda a: memoryview(a),
        lambda a: np.asarray(a).view(np.uint8),
    ],
    ids=["slice", "reshape", "memoryview", "reinterpreted"],
)
def test_memory_still_referenced_through_any_view_is_never_handed_out(keep: object) -> None:
    pool = ReceivePool(64 * 1024 * 1024)
    array = ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))
    array[:] = 7.0
    kept = keep(array)  # type: ignore[operator]
    del array
    gc.collect()
    other = ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))
    other[:] = -1.0
    assert pool.reused == 0
    assert np.all(np.frombuffer(memoryview(kept).cast("B"), dtype=np.uint8)[:4] != 0xFF)
    del kept
    gc.collect()
    assert pool.free_bytes > 0  # the kept view was the last user


def test_torch_tensor_over_a_received_array_keeps_its_memory() -> None:
    torch = pytest.importorskip("torch")
    pool = ReceivePool(64 * 1024 * 1024)
    array = ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))
    array[:] = 3.0
    tensor = torch.from_numpy(array)
    del array
    gc.collect()
    assert pool.free_bytes == 0
    assert float(tensor[5]) == 3.0
    del tensor
    gc.collect()
    assert pool.free_bytes > 0


def test_the_pool_keeps_no_more_than_its_bound() -> None:
    size = BIG * 4
    pool = ReceivePool(size * 2)
    arrays = [ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32)) for _ in range(4)]
    del arrays
    gc.collect()
    assert pool.free_bytes <= size * 2
    pool.configure(0)
    assert pool.free_bytes == 0
    array = ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))
    del array
    gc.collect()
    assert pool.free_bytes == 0  # a pool bounded at 0 keeps nothing


def test_small_arrays_are_plain_numpy_memory() -> None:
    pool = ReceivePool(64 * 1024 * 1024)
    array = ReceiveMemory(pool).allocate("b", (10,), np.dtype(np.float64))
    assert array.flags.owndata
    assert pool.created == 0


def test_a_model_received_twice_lands_in_the_same_memory_with_the_new_values() -> None:
    pool = ReceivePool(256 * 1024 * 1024)
    limits = PayloadLimits()

    def receive(value: float) -> np.ndarray:
        model = FLModel(params={"w": np.full(BIG, value, dtype=np.float32)})
        encoded = encode_payload(model, where="test")
        assembler = PayloadAssembler(
            PayloadKind.MODEL, encoded.size, limits, memory=ReceiveMemory(pool)
        )
        for chunk in encoded.chunks(256 * 1024):
            assembler.feed(chunk)
        result = assembler.result()
        assert isinstance(result, FLModel)
        return result.params["w"]

    first = receive(1.0)
    address = _address(first)
    del first
    gc.collect()
    second = receive(2.0)
    assert _address(second) == address
    assert np.all(second == 2.0)


def test_memory_comes_back_from_whichever_thread_drops_it() -> None:
    pool = ReceivePool(64 * 1024 * 1024)
    holder = [ReceiveMemory(pool).allocate("w", (BIG,), np.dtype(np.float32))]
    thread = threading.Thread(target=holder.clear)
    thread.start()
    thread.join()
    gc.collect()
    assert pool.free_bytes > 0


def test_a_bad_pool_bound_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import fl_core.cell.receive_memory as module

    monkeypatch.setattr(module, "_pool", None)
    monkeypatch.setenv(POOL_ENV, "lots")
    with pytest.raises(CellError, match=f"{POOL_ENV}='lots'"):
        receive_pool()
    monkeypatch.setenv(POOL_ENV, "16")
    assert receive_pool().free_bytes == 0
