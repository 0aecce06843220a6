"""Memory that received arrays are written into, reused from one payload to the next.

Writing into fresh memory takes one page fault per 4 KiB page (and, where
transparent huge pages are on "madvise", compaction stalls): on this kind of
machine a fresh 1 GiB array filled from a socket took 0.6 to 2.5 s, against
0.35 s for memory already mapped in. A federated job receives a model of the
same shapes every round, so the memory of a model that was dropped is the
right place for the next one.

- Arrays from `POPULATE_MIN` up get a private anonymous mapping of their own.
  A new mapping has its pages mapped in just ahead of each write
  (MADV_POPULATE_WRITE, one call per chunk: about 0.25 s per GiB), so memory
  is committed only as bytes arrive and a peer that announces a huge model
  and stalls costs nothing it has not sent.
- When every array (and every view, memoryview or tensor) over a mapping is
  gone, the mapping goes back to the process's `ReceivePool` instead of to
  the kernel, and the next array of the same size reuses it as it is: no page
  faults at all. Its old bytes are never seen: an array is handed out only
  once every one of its bytes has been received into it.
- The pool keeps at most `max_free_bytes` of mappings nobody uses (least
  recently freed go first), so an idle process holds a bounded amount.
  `FL_CORE_RECEIVE_POOL_MIB` sets the bound for a process (0 turns reuse
  off); `receive_pool().configure(...)` sets it from code.

Lifetimes are tracked without trusting anyone to give memory back: each
array is built over a ctypes view of its mapping (the "lease"), and numpy
keeps that object as the base of the array and of every view of it. A
weak-reference finalizer on the lease returns the mapping once the last
user has dropped it.
"""

from __future__ import annotations

import collections
import ctypes
import mmap
import os
import threading
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

from fl_core.errors import CellError

if TYPE_CHECKING:
    import numpy as np

MiB: Final = 1024**2

POPULATE_MIN: Final = 1 * MiB
"""Arrays from this size up get their own mapping, populated as bytes arrive."""
DEFAULT_POOL_MIB: Final = 2048
"""Default bound on mappings kept for reuse (`FL_CORE_RECEIVE_POOL_MIB` overrides it)."""
POOL_ENV: Final = "FL_CORE_RECEIVE_POOL_MIB"

_MADV_POPULATE_WRITE: Final = 23  # Linux 5.14+; not named by Python 3.11's mmap module
_PAGE: Final = mmap.PAGESIZE


def _pages(nbytes: int) -> int:
    return -(-nbytes // _PAGE) * _PAGE


class ReceivePool:
    """Mappings whose arrays were dropped, kept by size for the next array of that size.

    Thread-safe: a mapping comes back from whichever thread dropped the last
    reference to its array.
    """

    def __init__(self, max_free_bytes: int) -> None:
        self._lock = threading.Lock()
        # Mappings whose last user is gone, not yet filed. The finalizer that
        # brings one back may run inside a garbage collection on a thread that
        # holds the lock, so it only appends here (atomic, lock-free).
        self._returned: collections.deque[mmap.mmap] = collections.deque()
        self._free: OrderedDict[int, list[mmap.mmap]] = OrderedDict()  # size -> mappings
        self._free_bytes = 0
        self._max_free = max(0, max_free_bytes)
        self.reused = 0
        """Mappings handed out again (for tests and diagnostics)."""
        self.created = 0
        """Mappings made new."""

    @property
    def free_bytes(self) -> int:
        """Bytes of mappings kept for reuse right now."""
        with self._lock:
            dropped = self._file_returned()
            free = self._free_bytes
        del dropped
        return free

    def configure(self, max_free_bytes: int) -> None:
        """Bound the mappings kept for reuse; 0 gives every one back at once."""
        with self._lock:
            self._max_free = max(0, max_free_bytes)
            dropped = self._file_returned() + self._trim()
        del dropped  # unmapped here, outside the lock

    def take(self, nbytes: int) -> tuple[mmap.mmap, bool]:
        """A mapping of at least `nbytes` and whether it was reused (pages mapped in)."""
        size = _pages(nbytes)
        with self._lock:
            dropped = self._file_returned()
            spare = self._free.get(size)
            if spare:
                memory = spare.pop()
                if not spare:
                    del self._free[size]
                self._free_bytes -= size
                self.reused += 1
                reused: mmap.mmap | None = memory
            else:
                reused = None
        del dropped
        if reused is not None:
            return reused, True
        try:
            memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        except OSError as exc:
            raise CellError(f"cannot reserve {nbytes} bytes of receive memory: {exc}") from exc
        with self._lock:
            self.created += 1
        return memory, False

    def give_back(self, memory: mmap.mmap) -> None:
        """Keep `memory` (no longer used by anyone) for reuse, within the bound."""
        self._returned.append(memory)
        # Filed now unless the lock is held, perhaps by this very thread (a
        # finalizer run by a garbage collection inside take()): then the
        # pool's next use files it.
        if self._lock.acquire(blocking=False):
            try:
                dropped = self._file_returned()
            finally:
                self._lock.release()
            del dropped

    def _file_returned(self) -> list[mmap.mmap]:
        """File what came back since the last call; under the lock. Returns what to unmap."""
        dropped: list[mmap.mmap] = []
        while self._returned:
            memory = self._returned.popleft()
            size = len(memory)
            if size > self._max_free:
                dropped.append(memory)  # unmapped with its last reference, by the caller
                continue
            self._free.setdefault(size, []).append(memory)
            self._free.move_to_end(size)
            self._free_bytes += size
        return dropped + self._trim()

    def _trim(self) -> list[mmap.mmap]:
        """Drop least recently freed sizes until within the bound; under the lock."""
        dropped: list[mmap.mmap] = []
        while self._free_bytes > self._max_free and self._free:
            size, spare = next(iter(self._free.items()))
            dropped.append(spare.pop(0))
            self._free_bytes -= size
            if not spare:
                del self._free[size]
        return dropped


_pool: ReceivePool | None = None
_pool_lock = threading.Lock()


def receive_pool() -> ReceivePool:
    """The process's pool; its bound comes from `FL_CORE_RECEIVE_POOL_MIB` on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            raw = os.environ.get(POOL_ENV, "").strip()
            try:
                mib = int(raw) if raw else DEFAULT_POOL_MIB
            except ValueError:
                raise CellError(
                    f"{POOL_ENV}={raw!r}: expected a whole number of MiB (0 turns reuse off)"
                ) from None
            _pool = ReceivePool(mib * MiB)
        return _pool


class ReceiveMemory:
    """Allocates the arrays of one payload and maps their pages in as bytes arrive."""

    def __init__(self, pool: ReceivePool | None = None) -> None:
        self._pool = pool if pool is not None else receive_pool()
        # New mappings of this payload: (address, size, weak ref to the mapping).
        # Weak, because the arrays own their memory: a released array's
        # mapping belongs to the pool, not to this payload.
        self._fresh: list[tuple[int, int, weakref.ref[mmap.mmap]]] = []
        self._last = 0  # index in _fresh of the mapping written last: chunks come in order
        self._populate = True

    def allocate(self, name: str, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        """A writable C-contiguous array for `shape` and `dtype`."""
        import numpy as np

        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if nbytes < POPULATE_MIN:
            return np.empty(shape, dtype=dtype)
        try:
            memory, reused = self._pool.take(nbytes)
        except CellError as exc:
            raise CellError(f"cannot reserve {nbytes} bytes for array {name!r}: {exc}") from exc
        # A ctypes array, not a memoryview: numpy sees through a memoryview
        # to the buffer under it, and its views would not keep the lease alive.
        lease = (ctypes.c_char * len(memory)).from_buffer(memory)
        weakref.finalize(lease, self._pool.give_back, memory).atexit = False
        buffer: Any = lease  # exports the buffer protocol; numpy's stubs do not know ctypes
        array: np.ndarray = np.frombuffer(buffer, dtype=dtype, count=nbytes // dtype.itemsize)
        array = array.reshape(shape)
        if not reused:
            self._fresh.append((int(array.ctypes.data), nbytes, weakref.ref(memory)))
        return array

    def prepare(self, view: memoryview) -> None:
        """Map in the pages under `view` (a region of an array from `allocate`) if it is new."""
        if not self._populate or not self._fresh or not view.nbytes:
            return
        import numpy as np

        address = int(np.frombuffer(view, dtype=np.uint8).ctypes.data)
        count = len(self._fresh)
        for step in range(count):
            index = (self._last + step) % count
            base, size, ref = self._fresh[index]
            if not base <= address < base + size:
                continue
            self._last = index
            memory = ref()
            if memory is None:
                return
            start = (address - base) // _PAGE * _PAGE
            end = min(_pages(size), _pages(address - base + view.nbytes))
            try:
                memory.madvise(_MADV_POPULATE_WRITE, start, end - start)
            except (OSError, ValueError):
                self._populate = False  # an older kernel: plain page faults
            return
