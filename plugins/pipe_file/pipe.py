"""`FilePipe`: each message a file renamed into the other end's inbox folder.

Layout under `<root>/<name>/`:

- `active/`, `passive/`: each end's inbox. A sender writes
  `.<seq>.<pid>-<token>.tmp` there and renames it to `<seq>.msg` (20 digits)
  once it is whole, so a reader never sees a partial message; names that are
  not `<seq>.msg` (temp files of a sender that died) are ignored.
- `active.alive`, `passive.alive`: touched every `heartbeat_interval`.
- `active.closed`, `passive.closed`: written by an end that closes, removed
  when it opens again. An ACTIVE end that closes once its peer is gone
  (closed, or silent past `heartbeat_timeout`) removes the whole folder.

A message file is `FLPIPE1\\n`, a 4-byte big-endian header length, a JSON
header (topic, headers, payload kind, size) and the payload's raw bytes
(`fl_core.cell.payload`, written straight from the arrays). The receiver
reads model bytes straight into the arrays it rebuilds, and deletes the file
once it has the whole message; a receiver that restarts finds what it had
not consumed. A corrupt or oversized message file is moved aside to
`<seq>.msg.corrupt` and reported by raising `PipeError` naming it; the
next `receive` goes on with the following message.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from fl_core.cell.payload import (
    PayloadAssembler,
    PayloadLimits,
    PayloadRefusedError,
    check_size,
    encode_payload,
    parse_kind,
)
from fl_core.errors import CellError
from fl_core.spec.pipe import (
    DEFAULT_MAX_PAYLOAD,
    MAX_JSON_PAYLOAD,
    PeerGoneError,
    Pipe,
    PipeContext,
    PipeError,
    PipeMessage,
    PipeSide,
    check_heartbeats,
)

__all__ = ["FilePipe"]

MAGIC = b"FLPIPE1\n"
_PREFIX = len(MAGIC) + 4
_MAX_HEADER = 1024 * 1024
"""A header is a topic and a few string headers; anything bigger is corrupt."""
CHUNK = 8 * 1024 * 1024
"""Bytes read at a time where a payload is not read straight into an array."""
_MESSAGE = re.compile(r"\d{20}\.msg")
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


class _Corrupt(Exception):
    """A message file that cannot be read as a message; carries the problem."""


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    while view.nbytes:
        view = view[os.write(fd, view) :]


def _read_exact(f: io.FileIO, size: int) -> bytes:
    data = f.read(size)
    if len(data) != size:
        raise _Corrupt(f"ends after {len(data)} of {size} bytes")
    return data


class FilePipe(Pipe):
    """A pipe in a folder both ends reach (`root`); see the module docstring.

    `send` publishes and returns True without waiting for the receiver, so
    messages queue up as files while the peer is away.
    """

    def __init__(
        self,
        root: str | None = None,
        heartbeat_interval: float = 1.0,
        heartbeat_timeout: float = 10.0,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
    ) -> None:
        check_heartbeats("file", heartbeat_interval, heartbeat_timeout)
        self.root = None if root is None else Path(root)
        self.heartbeat_interval = float(heartbeat_interval)
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.limits = PayloadLimits(
            max_size=max_payload, max_json_size=min(max_payload, MAX_JSON_PAYLOAD)
        )
        self._name = ""
        self._side = PipeSide.ACTIVE
        self._folder = Path()
        self._opened_at = 0.0  # wall clock, to compare with the peer's mtimes
        self._next_seq = 0
        self._open = False
        self._closed = False
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None
        self._beat_error: OSError | None = None

    # --- opening and closing -----------------------------------------------------

    def _where(self) -> str:
        return f"pipe {self._name!r} ({self._side} side)"

    def open(self, name: str, side: PipeSide) -> None:
        """Create the pipe's folders if needed, announce this end and start heartbeats."""
        if self._open or self._closed:
            raise PipeError(f"file pipe {name!r}: this end was opened before; make a new one")
        if not _NAME.fullmatch(name) or name in (".", ".."):
            raise PipeError(f"file pipe: bad name {name!r}; use letters, digits, '_', '-', '.'")
        if self.root is None:
            raise PipeError(
                f"file pipe {name!r}: no root folder (option root, or `prepare` by the client job)"
            )
        if not self.root.is_dir():
            raise PipeError(f"file pipe {name!r}: root {self.root} does not exist or is no folder")
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PipeError(f"file pipe {name!r}: root {self.root} is not writable")
        self._name, self._side = name, PipeSide(side)
        self._folder = self.root / name
        try:
            for inbox in PipeSide:
                (self._folder / inbox.value).mkdir(parents=True, exist_ok=True)
            self._marker("closed", self._side).unlink(missing_ok=True)
            self._marker("alive", self._side).touch()
        except OSError as exc:
            raise PipeError(f"{self._where()}: cannot set up {self._folder}: {exc}") from exc
        self._next_seq = self._last_seq(self._folder / self._side.peer.value) + 1
        self._opened_at = time.time()
        self._open = True
        self._beater = threading.Thread(
            target=self._beat, name=f"pipe-heartbeat-{name}-{side}", daemon=True
        )
        self._beater.start()

    def prepare(self, context: PipeContext) -> None:
        """Use the client job's folder for this pipe where the options gave no root."""
        if self.root is None:
            self.root = context.folder

    def peer_options(self) -> dict[str, Any]:
        """The trainer's options: the same root and limits."""
        if not self._open or self._side is not PipeSide.ACTIVE or self.root is None:
            raise PipeError(f"file pipe {self._name!r}: peer_options needs an open active end")
        return {
            "root": str(self.root.resolve()),  # the trainer may run in another folder
            "heartbeat_interval": self.heartbeat_interval,
            "heartbeat_timeout": self.heartbeat_timeout,
            "max_payload": self.limits.max_size,
        }

    def close(self) -> None:
        """Stop heartbeats and tell the peer this end is closed; idempotent."""
        if not self._open:
            self._closed = True
            return
        # The client job's end closing after its trainer is gone ends the pipe for
        # good: its folder goes, so a shared root does not fill up with old pipes.
        finished = self._side is PipeSide.ACTIVE and not self.peer_alive()
        self._open = False
        self._closed = True
        self._stop.set()
        if self._beater is not None:
            self._beater.join()
        if finished:
            shutil.rmtree(self._folder, ignore_errors=True)
            return
        try:
            self._marker("closed", self._side).touch()
        except OSError as exc:
            raise PipeError(f"{self._where()}: cannot mark this end closed: {exc}") from exc

    def _marker(self, what: str, side: PipeSide) -> Path:
        return self._folder / f"{side.value}.{what}"

    def _beat(self) -> None:
        alive = self._marker("alive", self._side)
        while not self._stop.wait(self.heartbeat_interval):
            try:
                alive.touch()
            except OSError as exc:
                # Kept for the next send/receive to raise: a thread has no caller to tell.
                self._beat_error = exc
                return

    def _check_open(self) -> None:
        if not self._open:
            state = "closed" if self._closed else "not open"
            raise PipeError(f"file pipe {self._name or '(unnamed)'}: this end is {state}")
        if self._beat_error is not None:
            raise PipeError(f"{self._where()}: heartbeats failed: {self._beat_error}")

    # --- liveness ----------------------------------------------------------------

    def _gone_reason(self) -> str | None:
        peer = self._side.peer
        if self._marker("closed", peer).exists():
            return "it closed its end"
        try:
            last = self._marker("alive", peer).stat().st_mtime
        except FileNotFoundError:
            last = 0.0
        # A peer that has not opened yet gets a full timeout from our own open.
        silent = time.time() - max(last, self._opened_at)
        if silent > self.heartbeat_timeout:
            limit = self.heartbeat_timeout
            return f"no heartbeat for {silent:.1f} s (heartbeat_timeout {limit:g} s)"
        return None

    def peer_alive(self) -> bool:
        """Whether the peer is open and its heartbeat is fresh."""
        if not self._open:
            return False
        peer = self._side.peer
        try:
            last = self._marker("alive", peer).stat().st_mtime
        except FileNotFoundError:
            return False
        fresh = time.time() - last <= self.heartbeat_timeout
        return fresh and not self._marker("closed", peer).exists()

    # --- sending -----------------------------------------------------------------

    @staticmethod
    def _last_seq(inbox: Path) -> int:
        seqs = [int(n[:20]) for n in os.listdir(inbox) if _MESSAGE.fullmatch(n)]
        return max(seqs, default=-1)

    def send(self, message: PipeMessage, timeout: float) -> bool:
        """Publish `message` into the peer's inbox; True once it is there (`timeout` unused)."""
        self._check_open()
        where = f"{self._where()} message {message.topic!r}"
        try:
            encoded = encode_payload(message.body, where=where)
            check_size(encoded.kind, encoded.size, self.limits)
        except PayloadRefusedError as exc:
            raise PipeError(str(exc)) from exc
        except CellError as exc:
            raise PipeError(f"{where} refused (max_payload): {exc}") from exc
        header = json.dumps(
            {
                "topic": message.topic,
                "headers": dict(message.headers),
                "kind": encoded.kind.value,
                "size": encoded.size,
            }
        ).encode()
        inbox = self._folder / self._side.peer.value
        seq = self._next_seq
        self._next_seq += 1
        temp = inbox / f".{seq:020d}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        final = inbox / f"{seq:020d}.msg"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _write_all(fd, MAGIC + len(header).to_bytes(4, "big") + header)
                for part in encoded.parts:
                    _write_all(fd, part)
            finally:
                os.close(fd)
            # No fsync: both ends share one machine's page cache; rename is what publishes.
            os.rename(temp, final)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            raise PipeError(f"{where}: cannot write {final}: {exc}") from exc
        return True

    # --- receiving ---------------------------------------------------------------

    def _next_file(self) -> Path | None:
        inbox = self._folder / self._side.value
        names = sorted(n for n in os.listdir(inbox) if _MESSAGE.fullmatch(n))
        return inbox / names[0] if names else None

    def receive(self, timeout: float) -> PipeMessage | None:
        """The oldest message in this end's inbox, waiting up to `timeout` for one."""
        self._check_open()
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            path = self._next_file()
            if path is not None:
                message = self._read(path)
                if message is not None:
                    return message
                continue
            reason = self._gone_reason()
            # The peer may have published its last message just before it closed.
            if reason is not None and self._next_file() is None:
                raise PeerGoneError(self._name, self._side, reason)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.02)

    def _read(self, path: Path) -> PipeMessage | None:
        """The message in `path` (then deleted); None if it vanished; PipeError if bad."""
        try:
            with open(path, "rb", buffering=0) as f:
                message = self._parse(f, os.fstat(f.fileno()).st_size)
        except FileNotFoundError:
            return None
        except _Corrupt as exc:
            aside = path.with_name(path.name + ".corrupt")
            os.replace(path, aside)
            raise PipeError(
                f"{self._where()}: message file {path.name} refused ({exc}); "
                f"moved aside to {aside}, later messages still come"
            ) from None
        path.unlink()
        return message

    def _parse(self, f: io.FileIO, file_size: int) -> PipeMessage:
        prefix = _read_exact(f, _PREFIX)
        if prefix[: len(MAGIC)] != MAGIC:
            raise _Corrupt("not a pipe message (bad magic)")
        header_size = int.from_bytes(prefix[len(MAGIC) :], "big")
        if header_size > _MAX_HEADER:
            raise _Corrupt(f"header of {header_size} bytes")
        try:
            header = json.loads(_read_exact(f, header_size))
            topic, headers, size = header["topic"], header["headers"], header["size"]
            kind = parse_kind(header["kind"])
        except (ValueError, KeyError, TypeError, CellError) as exc:
            raise _Corrupt(f"bad header: {exc}") from None
        if not (
            isinstance(topic, str)
            and isinstance(headers, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items())
            and isinstance(size, int)
        ):
            raise _Corrupt("bad header: wrong types")
        if file_size != _PREFIX + header_size + size:
            raise _Corrupt(f"{file_size} bytes, header says {_PREFIX + header_size + size}")
        try:
            assembler = PayloadAssembler(kind, size, self.limits)
            self._fill(f, assembler)
            body = assembler.result()
        except CellError as exc:
            raise _Corrupt(f"{exc} (max_payload {self.limits.max_size})") from None
        return PipeMessage(topic, dict(headers), body)

    @staticmethod
    def _fill(f: io.FileIO, assembler: PayloadAssembler) -> None:
        scratch: bytearray | None = None
        while not assembler.complete:
            want = min(assembler.size - assembler.received, CHUNK)
            # Never across an array's end: such a read would go through `scratch`.
            room = assembler.in_place_room()
            view = assembler.reserve(min(want, room)) if room else None
            if view is not None:
                got = f.readinto(view)  # straight into the array being rebuilt
                if not got:
                    raise _Corrupt("truncated payload")
                assembler.commit(got)
                continue
            if scratch is None:
                scratch = bytearray(CHUNK)
            got = f.readinto(memoryview(scratch)[:want])
            if not got:
                raise _Corrupt("truncated payload")
            assembler.feed(memoryview(scratch)[:got])
